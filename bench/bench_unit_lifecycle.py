"""The shipped unit's lifecycle under a real systemd: how long each step takes.

In a systemd sandbox (tests/systemd_sandbox.py: private namespaces, an overlay
of `/` on a tmpfs, nothing reaches the host), installed by `deploy/install.sh`
for real and switched to the simulated bench, as in tests/test_deploy_*.py:

- install: a fresh `install.sh --no-start` (venv from the local wheelhouse),
  then a re-run that changes nothing;
- start: `systemctl start` until it returns (READY=1), and until the retained
  `status` online reaches a subscriber;
- stop: `systemctl stop` until it returns (offline published, exit 0);
- kill -9 of the main process until `status` online again (RestartSec=10s);
- SIGSTOP of the main process until `status` online again (WatchdogSec=30s,
  then RestartSec=10s).

Usage (root; ~2 minutes): .venv/bin/python bench/bench_unit_lifecycle.py [ROUNDS]
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.deploy_support import UNIT, InstalledBench, run_installer  # noqa: E402
from tests.systemd_sandbox import SystemdSandbox, unavailable_reason  # noqa: E402


def timed(step: Callable[[], object]) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def until_online(bench: InstalledBench, mark: int, timeout_s: float) -> None:
    bench.recorder.wait_for("status", lambda p: p["online"] is True, timeout_s, after=mark)


def main(rounds: int) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    figures: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds)
        print(f"  {name}: {seconds:.2f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        box = SystemdSandbox(Path(tmp))
        try:
            record("sandbox boot (systemd answers)", timed(box.boot))
            bench = InstalledBench(box, Path(tmp))
            bench.start_broker()
            record("install (fresh, --no-start)", timed(lambda: run_installer(box, "--no-start")))
            bench.write_password()
            bench.write_config()
            record("install (re-run, starts the unit)", timed(lambda: run_installer(box)))
            record("install (re-run, nothing to do)", timed(lambda: run_installer(box)))
            bench.wait_for_state("active", "running", 30)
            for _ in range(rounds):
                record("stop (systemctl stop returns)", timed(lambda: box.systemctl("stop", UNIT)))
                mark = bench.recorder.mark()
                started = time.monotonic()
                box.systemctl("start", UNIT)
                record("start -> READY=1 (systemctl start returns)", time.monotonic() - started)
                until_online(bench, mark, 30)
                record("start -> status online at the broker", time.monotonic() - started)
            for _ in range(rounds):
                mark = bench.recorder.mark()
                started = time.monotonic()
                box.run(["kill", "-9", str(bench.main_pid())])
                until_online(bench, mark, 60)
                record("kill -9 -> online again", time.monotonic() - started)
            mark = bench.recorder.mark()
            started = time.monotonic()
            box.run(["kill", "-STOP", str(bench.main_pid())])
            until_online(bench, mark, 120)
            record("SIGSTOP (hung loop) -> online again", time.monotonic() - started)
            bench.close()
        finally:
            box.destroy()
    print(f"\n{platform.machine()}, {platform.node()}, Python {platform.python_version()}")
    print(f"{'step':48} {'median s':>9} {'runs':>5}")
    for name, values in figures.items():
        print(f"{name:48} {statistics.median(values):9.2f} {len(values):5}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
