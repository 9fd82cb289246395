"""Make a contract-v2 dictionary (shapes + preset deflate dictionary) from captured
records (bench/capture_records.py), for bench_agent/link/dictionaries/.

    .venv/bin/python bench/make_dictionary.py ID RECORDS.jsonl [SIZE]

Shapes: every object's key list (in order) seen at least twice, most frequent
first. The preset dictionary: compact batches of the captured records taken
evenly across the capture (quiet and busy hours, day and night), cut to SIZE
bytes (default 32 KiB, deflate's whole window). Made from one simulated day
(records-day-b) and measured on another (records-day-a), so the figures are not
those of a dictionary that has seen its test. A shipped dictionary is never
changed: make a new id (see contract_v2's docstring).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_agent.link import contract_v2  # noqa: E402

BATCH = 5  # records per batch at the reference config (300 s batches of 60 s records)


def load(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        record = json.loads(line)
        out.append((record.pop("kind"), record))
    return out


def shapes_of(records: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    counts: Counter[tuple[str, ...]] = Counter()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            counts[tuple(value)] += 1
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)

    for kind, record in records:
        visit({"kind": kind, **record})
    return [list(keys) for keys, n in counts.most_common() if n >= 2 and keys]


def preset(
    records: list[tuple[str, dict[str, Any]]], shapes: contract_v2.Dictionary, size: int
) -> bytes:
    """Compact batches taken evenly across the capture (day and night, quiet and busy
    hours), as many as fit in `size` bytes."""
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    chunks = []
    for batch in batches:
        doc = {
            "v": 2,
            "bench": "",
            "records": [contract_v2.compact({"kind": k, **r}, shapes) for k, r in batch],
        }
        chunks.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    average = sum(map(len, chunks)) / len(chunks)
    step = max(1, round(len(chunks) / max(1, int(size / average))))
    text = b"".join(chunks[::step])
    return text[-size:]


def main() -> int:
    dictionary_id, source = int(sys.argv[1]), Path(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 32768
    records = load(source)
    shapes = shapes_of(records)
    without_preset = contract_v2.Dictionary(dictionary_id, tuple(map(tuple, shapes)), b"")
    zdict = preset(records, without_preset, size)
    folder = REPO / "bench_agent" / "link" / "dictionaries"
    (folder / f"{dictionary_id}.json").write_text(
        json.dumps({"id": dictionary_id, "source": source.name, "shapes": shapes}, indent=1) + "\n"
    )
    (folder / f"{dictionary_id}.zdict").write_bytes(zdict)
    made = contract_v2.Dictionary(dictionary_id, tuple(map(tuple, shapes)), zdict)
    print(f"dictionary {dictionary_id}: {len(shapes)} shapes, {len(zdict)} bytes, {made.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
