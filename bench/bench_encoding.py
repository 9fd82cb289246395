"""Bytes per record for each encoding candidate of contract v2, on the agent's own records.

    .venv/bin/python bench/bench_encoding.py

The records: a simulated day of the demo bench (bench/data/records-day-a.jsonl.gz,
captured by bench/capture_records.py at the reference config's 60 s publish
interval). Dictionaries are made from another day (records-day-b), as shipped
dictionary 1 was, so no candidate is measured on what it was trained on. Batches
of 1, 5 (the reference config: 300 s of 60 s records), 15 and 60 records; bytes
per record of the whole message payload (what MQTT carries, before its framing).

Candidates: v1 JSON as is; deflate (zlib, standard library) without and with a
preset dictionary (the other day's batches); the same over compact JSON (the
shapes of contract_v2: keys of known objects left out); zstd with a dictionary
trained by zstandard (a C extension: measured to see what it would buy).
"""

from __future__ import annotations

import gzip
import json
import platform
import statistics
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_agent.link import contract_v2  # noqa: E402

DATA = REPO / "bench" / "data"
BATCHES = (1, 5, 15, 60)
Record = tuple[str, dict[str, Any]]


def load(name: str) -> list[Record]:
    out = []
    for line in gzip.decompress((DATA / name).read_bytes()).decode().splitlines():
        record = json.loads(line)
        out.append((record.pop("kind"), record))
    return out


def v1_text(batch: Sequence[Record]) -> bytes:
    records = [r for _, r in batch]
    return json.dumps(
        {"v": 1, "bench": "sim-bench-01", "records": records}, separators=(",", ":")
    ).encode()


def compact_text(batch: Sequence[Record], shapes: contract_v2.Dictionary) -> bytes:
    doc = {
        "v": 2,
        "bench": "sim-bench-01",
        "records": [contract_v2.compact({"kind": k, **r}, shapes) for k, r in batch],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def deflate(data: bytes, zdict: bytes | None) -> bytes:
    extra = {"zdict": zdict} if zdict else {}
    d = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **extra)
    return d.compress(data) + d.flush()


def preset(texts: list[bytes], size: int = 32768) -> bytes:
    step = max(1, round(len(texts) / max(1, size // max(1, int(statistics.mean(map(len, texts)))))))
    return b"".join(texts[::step])[-size:]


def per_record(records: list[Record], n: int, encode: Callable[[Sequence[Record]], bytes]) -> float:
    batches = [records[i : i + n] for i in range(0, len(records) - n + 1, n)]
    return statistics.mean(len(encode(b)) / n for b in batches)


def main() -> int:
    test, train = load("records-day-a.jsonl.gz"), load("records-day-b.jsonl.gz")
    shipped = contract_v2.dictionary(contract_v2.CURRENT_DICTIONARY)
    train5 = [train[i : i + 5] for i in range(0, len(train), 5)]
    v1_preset = preset([v1_text(b) for b in train5])
    candidates: dict[str, Callable[[Sequence[Record]], bytes]] = {
        "v1 JSON": v1_text,
        "v1 JSON + deflate": lambda b: deflate(v1_text(b), None),
        "v1 JSON + deflate, preset dictionary": lambda b: deflate(v1_text(b), v1_preset),
        "compact + deflate": lambda b: deflate(compact_text(b, shipped), None),
        "compact + deflate, dictionary 1 (contract v2)": lambda b: contract_v2.encode(
            "sim-bench-01", b
        ),
    }
    try:
        import zstandard  # measured only; never a dependency of the bench
    except ImportError:
        print("(zstandard not installed: its rows are left out)")
    else:
        for name, text in (("v1 JSON", v1_text), ("compact", lambda b: compact_text(b, shipped))):
            trained = zstandard.train_dictionary(32768, [text([r]) for r in train])
            compressor = zstandard.ZstdCompressor(level=19, dict_data=trained)
            candidates[f"{name} + zstd, trained dictionary"] = lambda b, c=compressor, t=text: (
                c.compress(t(b))
            )
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; "
        f"{len(test)} records ({sum(k == 'event' for k, _ in test)} events)"
    )
    print(f"{'bytes per record, batches of':48s}" + "".join(f"{n:>8d}" for n in BATCHES))
    for name, encode in candidates.items():
        print(f"{name:48s}" + "".join(f"{per_record(test, n, encode):8.0f}" for n in BATCHES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
