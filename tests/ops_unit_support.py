"""What the tests of the city's units (deploy/bench-ops-bridge.service,
deploy/bench-ops-archive.service) share: the unit's ExecStart as systemd runs it with
its EnvironmentFile, and the file's hardening checked the same way for each."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.bridge_support import BENCH_OPS
from tests.test_deploy_unit import exposure

INSTALLED_EXEC = "/opt/bench-ops/venv/bin/bench-ops"  # where the README installs bench-ops


def environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, blank lines)."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def exec_start(unit: Path, env: Mapping[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it ($VAR unquoted: the words of its value),
    with this venv's console script for the installed one."""
    lines = [
        line.removeprefix("ExecStart=")
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert len(lines) == 1, lines
    argv: list[str] = []
    for word in shlex.split(lines[0]):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(word)
    assert argv[0] == INSTALLED_EXEC
    return [str(BENCH_OPS), *argv[1:]]


def check_exposure_and_verify(unit: Path, max_exposure: float, tmp_path: Path) -> None:
    """systemd-analyze security scores the unit at most `max_exposure` (and a copy
    without three of its key directives above it: the score is the file's), and
    systemd-analyze verify finds nothing wrong with it."""
    assert exposure(unit) <= max_exposure
    weak = tmp_path / unit.name
    text = unit.read_text()
    for key in ("ProtectSystem=strict", "SystemCallFilter=@system-service", "PrivateUsers=yes"):
        text = text.replace(f"\n{key}\n", "\n")
    weak.write_text(text)
    assert exposure(weak) > max_exposure
    copy = tmp_path / "copy" / unit.name
    copy.parent.mkdir()
    copy.write_text(
        unit.read_text().replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={BENCH_OPS}")
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert (r.returncode, r.stderr.strip()) == (0, "")
