"""Bytes the outbox writes to the disk per telemetry record (target: <= 1 kB).

    .venv/bin/python bench/bench_outbox_disk.py [--dir DIR] [--records N]

Counts from /proc/self/io, for N telemetry records shaped like the agent's own
(`telemetry_body.json`, captured from the agent: ~1,450 bytes of compact JSON):

* `wchar`: bytes SQLite handed to write() -- what it asks the kernel to store.
* `write_bytes`, back to back: bytes the kernel sent to the block device when
  records come as fast as they can; rewrites of a page still dirty are merged.
  Optimistic: at 60 s per record the kernel has written back in between.
* `write_bytes`, written back per record: the data files are fsynced after every
  record, as the kernel's writeback (every ~30 s) would do between two records
  60 s apart. This is what the SD card sees, in 4 KiB pages. The ext4 journal
  (written by jbd2, not by us) comes on top.

Each for "online" (every record acknowledged, as if delivered) and "offline"
(nothing acknowledged). Then the file size after a week offline (one record per
60 s = 10,080 records). DIR must be on a real block device (not tmpfs), by
default a temporary directory in /var/tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_agent.link.outbox import Outbox

BOOT = "6f1c2d0e-3b7a-4c55-9d1e-2a8b7c9d0e1f"
CHANNELS = ("solar", "battery", "usb1", "usb2", "ap")
WEEK_RECORDS = 7 * 24 * 60  # one record per 60 s


SAMPLE_BODY = json.loads((Path(__file__).with_name("telemetry_body.json")).read_text())


def telemetry_body(rng: random.Random, n: int) -> dict[str, Any]:
    """A telemetry body as the agent records it: `telemetry_body.json` is one captured
    from the agent on the simulated bench (5 channels, charger, counters, health:
    ~1,450 bytes of compact JSON), with its readings varied a little per record."""
    body = json.loads(json.dumps(SAMPLE_BODY))
    for channel in body["channels"].values():
        for key in ("v", "a", "w"):
            if channel[key] is not None:
                channel[key] = [round(x * rng.uniform(0.98, 1.02), 4) for x in channel[key]]
    body["health"]["outbox_depth"] = n
    return body


def io_counters() -> dict[str, int]:
    text = Path("/proc/self/io").read_text()
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(directory: Path, records: int, *, online: bool, writeback: bool) -> dict[str, float]:
    """Record `records` telemetry records into a fresh outbox; bytes per record."""
    path = directory / f"outbox-{int(online)}{int(writeback)}.db"
    rng = random.Random(1)
    bodies = [telemetry_body(rng, n) for n in range(records)]
    files = [path, path.with_name(path.name + "-wal")]
    os.sync()
    before = io_counters()
    with Outbox(path, max_bytes=64 * 1024 * 1024, boot_id=BOOT) as box:
        for n, body in enumerate(bodies):
            seq = box.put(
                "telemetry",
                body,
                boot_id=BOOT,
                mono_s=60.0 * n,
                ts="2026-01-01T00:00:00.000Z",
                time_quality="synced",
            )
            if online:
                box.ack([seq])
            if writeback:
                for file in files:
                    fsync_path(file)
    for file in files:
        fsync_path(file)
    after = io_counters()
    size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
    return {
        "wchar": (after["wchar"] - before["wchar"]) / records,
        "write_bytes": (after["write_bytes"] - before["write_bytes"]) / records,
        "file_bytes": size,
    }


def week_offline(directory: Path) -> tuple[int, int]:
    """(file bytes, body bytes) after a week of records with no uplink."""
    path = directory / "week.db"
    rng = random.Random(2)
    body_bytes = 0
    with Outbox(path, max_bytes=64 * 1024 * 1024, boot_id=BOOT) as box:
        for n in range(WEEK_RECORDS):
            box.put(
                "telemetry",
                telemetry_body(rng, n),
                boot_id=BOOT,
                mono_s=60.0 * n,
                ts="2026-01-01T00:00:00.000Z",
                time_quality="synced",
            )
        body_bytes = box.stats().bytes
    size = sum(f.stat().st_size for f in directory.glob("week.db*") if "seqfloor" not in f.name)
    return size, body_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args(argv)
    parent = args.dir or Path("/var/tmp")
    directory = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=parent))
    try:
        sample = telemetry_body(random.Random(1), 0)
        size = len(json.dumps(sample, separators=(",", ":")))
        print(f"record body: {size} bytes of JSON")
        print(f"{args.records} records in {directory}")
        print(f"{'':44}{'wchar/rec':>11}{'disk/rec':>11}")
        worst = 0.0
        for online in (True, False):
            for writeback in (False, True):
                r = run(directory, args.records, online=online, writeback=writeback)
                label = ("online (put+ack)" if online else "offline (put)") + (
                    ", written back per record" if writeback else ", back to back"
                )
                print(f"{label:44}{r['wchar']:>9.0f} B{r['write_bytes']:>9.0f} B")
                if not writeback:
                    worst = max(worst, r["write_bytes"])
        if worst == 0:
            print("write_bytes stayed 0: is DIR on tmpfs? Use --dir on a real disk.")
        size, body = week_offline(directory)
        print(
            f"a week offline ({WEEK_RECORDS} records): file {size / 1e6:.2f} MB "
            f"for {body / 1e6:.2f} MB of bodies ({size / body:.2f}x)"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
