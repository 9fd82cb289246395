"""`make demo`, exactly as the README runs it (with DURATION so it ends by itself):
the bench on contract 2, the bridge, what ops receive and what a technician sees."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import REPO

pytestmark = pytest.mark.integration


def test_make_demo_shows_what_ops_receive_through_the_bridge_and_the_technician_view() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "demo", "DURATION=10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "demo: stopped (agent exit status 0)" in out
    received = re.search(r"telemetry msgs: (\d+)\s+events: (\d+)\s+as v1 JSON: (\d+) bytes", out)
    wire = re.search(r"on the bench's link: (\d+) contract-2 batches, (\d+) bytes", out)
    assert received and wire, out[-3000:]
    telemetry, events, v1_bytes = map(int, received.groups())
    batches, v2_bytes = map(int, wire.groups())
    assert telemetry > 0 and events > 0 and batches > 0  # through the bridge, as v1 JSON
    assert v2_bytes * 4 < v1_bytes  # the link carried a fraction of what ops read
    assert "Bench sim-bench-01" in out and "contract 2, a batch at most every 5m" in out
