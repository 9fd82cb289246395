"""Bytes the agent writes to the SD card in a day, and what that means for a 16 GB card.

    .venv/bin/python bench/bench_sd_day.py [REAL_SECONDS]

The agent on the simulated bench (reference cadence: a telemetry record every 60 s),
sped up 1,440x, run under `strace` against a private mosquitto, once on contract 1
and once on contract 2. Every write() and pwrite64() to a file is counted, per file:
the outbox (its WAL and main file), the state files (controller, counters, time floor,
uplink, replaced whole each time), the event history, the outbox's seq floor, and what
the agent logs (stderr: the journal on a bench). Then two figures per day:

* what the agent asks the kernel to write (the sum of the calls);
* the 4 KiB blocks the kernel then writes to the card, modelled: within one
  write-back window every block dirtied once counts once (the kernel merges rewrites
  of a dirty page), and each window that dirtied anything adds an ext4 journal
  commit (descriptor, the inode's block, commit: 3 blocks) and a block for each file
  replaced by rename (its directory). The window is the kernel's default 30 s
  (vm.dirty_expire_centisecs), and 300 s for comparison; and with the root file
  system mounted `lazytime` (mtime kept in memory: a write into a file's existing
  blocks commits nothing to the journal). journald's own overhead on the log
  lines is left out (the agent logs a few lines a day at INFO).

The model is stated, not measured at the block device: the agent runs sped up, so
the kernel's real write-back cannot be watched at a bench's pace.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Broker, sim_config  # noqa: E402

SPEED = 1440
BLOCK = 4096
JOURNAL_BLOCKS_PER_COMMIT = 3
CARD_BYTES = 16e9
PE_CYCLES = 1000  # a TLC card, conservatively
WRITE_AMPLIFICATION = 10  # small random writes on an SD card's FTL, a guess stated as one
CALL = re.compile(
    r"^\d+\s+(\d+):(\d+):(\d+\.\d+) (write|pwrite64)"
    r"\((\d+)<([^>]+)>, .*?, (\d+)(?:, (\d+))?\) = (\d+)"
)
RENAME = re.compile(r"^\d+\s+(\d+):(\d+):(\d+\.\d+) rename")


KINDS = (
    ("outbox.sqlite3-wal", "outbox WAL"),
    ("outbox.sqlite3.seqfloor", "seq floor"),
    ("outbox.sqlite3", "outbox file"),
    ("events.jsonl", "event history"),
    ("agent.log", "log (journal)"),
)


def kind_of(path: str) -> str | None:
    name = Path(path).name
    for prefix, kind in KINDS:
        if name.startswith(prefix):
            return kind
    return "state files" if name.endswith(".json.tmp") else None


def run(work: Path, contract: int, real_s: float) -> tuple[Path, float]:
    broker = Broker(work).start()
    try:
        config = sim_config(
            work,
            broker.port,
            {
                "sampling": {"publish_interval_s": 60, "sample_interval_s": 10},
                "sim": {"speed": SPEED},
                "mqtt": {"contract": contract},
                "commands": {"trusted_keys": str(work / "keys")},
            },
        )
        trace = work / "trace.txt"
        command = [
            "strace", "-f", "-tt", "-y", "-e", "trace=write,pwrite64,rename,renameat,renameat2",
            "-o", str(trace), sys.executable, "-m", "bench_agent", "-c", str(config), "run",
        ]  # fmt: skip
        with (work / "agent.log").open("wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(real_s)
            subprocess.run(["pkill", "-TERM", "-f", f"{config} run"], check=False)
            proc.wait(60)
    finally:
        broker.stop()
    return trace, real_s * SPEED / 86400


@dataclass(frozen=True)
class Write:
    sim_s: float  # simulated seconds since the trace began
    kind: str
    path: str
    offset: int
    size: int


def parse(trace: Path) -> tuple[list[Write], list[float]]:
    """The writes to the files `kind_of` knows, and the renames' times."""
    writes: list[Write] = []
    renames: list[float] = []
    position: dict[str, int] = {}
    start: float | None = None
    for line in trace.read_text(errors="replace").splitlines():
        match = RENAME.match(line) or CALL.match(line)
        if match is None:
            continue
        t = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
        start = t if start is None else start
        sim_s = (t - start) * SPEED
        if match.re is RENAME:
            renames.append(sim_s)
            continue
        path, done = match[6], int(match[9])
        kind = "log (journal)" if path.startswith("/dev/pts") else kind_of(path)
        if kind is None or done == 0:
            continue
        if match[4] == "pwrite64":
            offset = int(match[8])
        else:  # appends: a .tmp file is new each time it is opened, a log grows
            at = position.get(path, 0)
            offset = 0 if path.endswith(".tmp") and at >= done else at
            position[path] = offset + done
        writes.append(Write(sim_s, kind, path, offset, done))
    return writes, renames


def card_bytes(
    writes: list[Write], renames: list[float], window_s: int, *, lazytime: bool
) -> Counter[str]:
    """The model of the module's docstring: bytes per kind over the whole trace."""
    dirtied: dict[int, set[tuple[str, str, int]]] = defaultdict(set)
    for w in writes:
        for block in range(w.offset // BLOCK, (w.offset + w.size - 1) // BLOCK + 1):
            dirtied[int(w.sim_s // window_s)].add((w.kind, w.path, block))
    created = Counter(int(t // window_s) for t in renames)
    out: Counter[str] = Counter()
    for slot, touched in dirtied.items():
        for kind, _, _ in touched:
            out[kind] += BLOCK
        # Without lazytime every window's writes change an inode's mtime: a journal
        # commit. With it only windows that create files (a state file replaced by
        # rename: new blocks, a directory entry) commit one.
        if not lazytime or created[slot]:
            out["ext4 journal"] += (JOURNAL_BLOCKS_PER_COMMIT + created[slot]) * BLOCK
    return out


def analyse(trace: Path, days: float) -> dict[str, dict[str, float]]:
    writes, renames = parse(trace)
    asked: Counter[str] = Counter()
    for w in writes:
        asked[w.kind] += w.size
    result = {"asked": {k: v / days for k, v in asked.items()}}
    for window_s in (30, 300):
        for lazytime in (False, True):
            label = f"card, {window_s} s write-back" + (", lazytime" if lazytime else "")
            per_kind = card_bytes(writes, renames, window_s, lazytime=lazytime)
            result[label] = {k: v / days for k, v in per_kind.items()}
    return result


def main() -> int:
    real_s = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    if shutil.which("strace") is None:
        print("strace is needed (apt-get install strace)")
        return 1
    print(f"{sys.platform}, the simulated bench at {SPEED}x under strace, {real_s:g} s each")
    for contract in (1, 2):
        with tempfile.TemporaryDirectory(prefix="sd-day-") as tmp:
            trace, days = run(Path(tmp), contract, real_s)
            figures = analyse(trace, days)
        print(f"\ncontract {contract} ({days * 24:.1f} simulated hours), MB a day:")
        for label, per_kind in figures.items():
            total = sum(per_kind.values())
            parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sorted(per_kind.items()))
            years = CARD_BYTES * PE_CYCLES / (total * WRITE_AMPLIFICATION * 365)
            print(f"  {label:24s} {total / 1e6:5.2f}  ({parts})")
            if label.startswith("card"):
                print(
                    f"  {'':24s} a 16 GB card: {years:,.0f} years at {PE_CYCLES} P/E cycles "
                    f"and {WRITE_AMPLIFICATION}x write amplification"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
