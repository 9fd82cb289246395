"""Bytes on the wire from the kernel's TCP counters (`ss -tinp`), per process."""

from __future__ import annotations

import re
import shutil
import subprocess


def tcp_bytes(port: int, pid: int) -> tuple[int, int] | None:
    """(sent, received) by process `pid`'s connections to 127.0.0.1:`port`; None without
    `ss`. Only that process: a subscriber on the same broker must not be counted."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        ["ss", "-tinpH", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True, check=False
    ).stdout
    sent = received = 0
    mine = False
    for line in out.splitlines():
        if not line[:1].isspace():  # a socket's line; its counters are on the next one
            mine = f"pid={pid}," in line
        elif mine:
            sent += sum(int(m) for m in re.findall(r"bytes_sent:(\d+)", line))
            received += sum(int(m) for m in re.findall(r"bytes_received:(\d+)", line))
    return sent, received
