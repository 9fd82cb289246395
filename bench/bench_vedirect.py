"""VE.Direct: parser throughput on the real captures, and the reader's CPU on a live port.

    .venv/bin/python bench/bench_vedirect.py [--seconds 20] [--captures DIR]

1. Throughput: the framer (and framer + merge + mapping, what the reader does per
   block) over each capture in memory, in blocks per second. A device sends 1 block/s.
2. Reader CPU: the real VEDirectReader on a pty fed by the simulated SmartSolar in a
   CHILD process (so only the reader's work is counted), one block per second for
   ``--seconds``; CPU % of one core from this process's CPU time, and the reader
   thread's wake-ups per second (voluntary context switches from /proc).
3. The same with a capture replayed continuously at 19200 baud (~12 blocks/s, a
   stream with no idle gaps): the upper bound of what the wire can carry.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_agent.hardware.vedirect.fields import BlockMerger, map_block
from bench_agent.hardware.vedirect.framing import VEDirectFramer
from bench_agent.hardware.vedirect.reader import VEDirectReader

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "vedirect"

_CHILD = """
import sys, time
from bench_agent.hardware.sim.vedirect_sim import ChargerSnapshot, SimulatedCharger
link, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
snap = ChargerSnapshot(13.21, 2.5, 18.4, 37, 0.35, True, "bulk", "mppt_active", "no_error",
                       0.12, 0.48, 123.45, 41, 80, 12)
with SimulatedCharger(link, (lambda: snap) if mode == "live" else None, interval_s=1.0) as sim:
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    if mode == "replay":
        sim.replay(arg, speed=1.0)
    sys.stdin.readline()  # EOF or "stop"
"""


def throughput(path: Path, min_seconds: float = 1.0) -> tuple[int, float, float]:
    """(blocks per pass, framer blocks/s, framer+merge+map blocks/s)."""
    data = path.read_bytes()
    blocks = len(VEDirectFramer().feed(data))
    rates = []
    for full in (False, True):
        passes, started = 0, time.perf_counter()
        while time.perf_counter() - started < min_seconds:
            framed = VEDirectFramer().feed(data)
            if full:
                merger = BlockMerger()
                for block in framed:
                    map_block(merger.add(block))
            passes += 1
        rates.append(passes * blocks / (time.perf_counter() - started))
    return blocks, rates[0], rates[1]


def thread_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def reader_cpu(mode: str, arg: str, seconds: float) -> dict[str, float]:
    """Run the simulator in a child, the reader here; measure this process for ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "ttyVE")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, link, mode, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdout.readline()  # "ready": the pty and its symlink exist
            samples: queue.Queue[object] = queue.Queue()
            with VEDirectReader(link, samples) as reader:  # type: ignore[arg-type]
                while not reader.stats.connected:
                    time.sleep(0.01)
                thread = next(t for t in threading.enumerate() if t.name.startswith("vedirect"))
                assert thread.native_id is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                time.sleep(1.5)  # let the first block arrive, then measure a steady state
                blocks0, switches0 = reader.stats.blocks_ok, thread_switches(thread.native_id)
                cpu0, wall0 = time.process_time(), time.monotonic()
                time.sleep(seconds)
                cpu1, wall1 = time.process_time(), time.monotonic()
                blocks1, switches1 = reader.stats.blocks_ok, thread_switches(thread.native_id)
                stats = reader.stats
        finally:
            child.stdin.close()
            child.wait(10)
    wall = wall1 - wall0
    return {
        "seconds": wall,
        "blocks": blocks1 - blocks0,
        "cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
        "cpu_ms_per_block": 1000.0 * (cpu1 - cpu0) / max(1, blocks1 - blocks0),
        "wakeups_per_s": (switches1 - switches0) / wall,
        "checksum_errors": stats.checksum_errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="live measurement, s")
    parser.add_argument("--captures", type=Path, default=CAPTURES)
    args = parser.parse_args(argv)

    print("VE.Direct parser throughput (in memory, one core)")
    for path in sorted(args.captures.glob("*.dump")):
        blocks, framer_rate, full_rate = throughput(path)
        print(
            f"  {path.name:24} {blocks:4d} blocks  framer {framer_rate:8.0f} blocks/s"
            f"  framer+merge+map {full_rate:8.0f} blocks/s"
        )

    live = reader_cpu("live", "-", args.seconds)
    print(f"\nReader on a pty, simulated SmartSolar at 1 block/s, {live['seconds']:.1f} s:")
    print(
        f"  {live['blocks']:.0f} blocks, CPU {live['cpu_pct']:.3f} % of a core"
        f" ({live['cpu_ms_per_block']:.2f} ms/block),"
        f" reader wake-ups {live['wakeups_per_s']:.1f}/s,"
        f" checksum errors {live['checksum_errors']:.0f}"
    )

    capture = args.captures / "smartsolar_1.39.dump"
    if capture.exists():
        stream = reader_cpu("replay", str(capture), min(args.seconds, 10.0))
        print(
            f"\nReader on a pty, capture replayed at 19200 baud (continuous),"
            f" {stream['seconds']:.1f} s:"
        )
        print(
            f"  {stream['blocks']:.0f} blocks ({stream['blocks'] / stream['seconds']:.1f}/s),"
            f" CPU {stream['cpu_pct']:.3f} % of a core"
            f" ({stream['cpu_ms_per_block']:.2f} ms/block), reader wake-ups"
            f" {stream['wakeups_per_s']:.1f}/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
