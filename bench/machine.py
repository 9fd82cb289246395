"""What a benchmark ran on, for its JSON: architecture, cores, CPU model, Python, paho
and mosquitto versions. Used by bench/bench_bridge.py and bench/bench_bulk_send.py."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from paho.mqtt import __version__ as PAHO_VERSION


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    return {
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "paho_mqtt": PAHO_VERSION,
        "mosquitto": (mosquitto.stdout.splitlines() or ["?"])[0].removeprefix("mosquitto version "),
    }
