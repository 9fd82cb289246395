"""bench/bench_drain.py keeps working: its quick mode drains a real backlog through a
real mosquitto, both ways, and its subscriber's count would notice a lost record."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_drain.py"


@pytest.fixture(scope="module")
def bench_drain() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_drain", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_drain"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def message(*records: tuple[int, bool]) -> bytes:
    """A telemetry message carrying (seq, historical) records."""
    body = [{"seq": seq, **({"historical": True} if hist else {})} for seq, hist in records]
    return json.dumps({"v": 1, "bench": "b", "records": body}).encode()


def test_tally_reports_gaps_duplicates_and_strays(bench_drain: ModuleType) -> None:
    tally = bench_drain.Tally(last_seq=5)
    tally.add(1.0, message((1, True), (2, True)))
    tally.add(2.0, message((2, True), (4, True), (9, True)))
    tally.add(3.0, message((5, False)))

    summary, complete = tally.summary(), tally.complete
    assert not complete
    assert summary["complete_mono"] is None
    assert summary["missing"] == 1
    assert summary["missing_first"] == [3]
    assert summary["duplicates"] == 1
    assert summary["unexpected"] == 1
    assert summary["messages"] == 3
    assert summary["live_received"] == {"5": 3.0}  # only the record not flagged historical

    tally.add(4.0, message((3, True)))
    assert tally.complete
    assert tally.complete_mono == 4.0
    assert tally.summary()["missing"] == 0


@pytest.mark.integration
def test_quick_run_delivers_every_seq_both_ways(bench_drain: ModuleType, tmp_path: Path) -> None:
    result_path = tmp_path / "drain.json"

    status = bench_drain.main(["--quick", "--dir", str(tmp_path), "--json", str(result_path)])

    assert status == 0
    result = json.loads(result_path.read_text())
    assert result["records"] == 3000
    for name in ("outbox", "paho"):
        run = result[name]
        assert run["missing"] == 0, run["missing_first"]
        assert run["distinct_received"] == run["expected_records"] == 3000 + run["live"]["recorded"]
        assert run["unexpected"] == 0
        assert run["live"]["received"] == run["live"]["recorded"]
        assert run["records_per_s"] > 0
    ours, naive = result["outbox"], result["paho"]
    assert ours["left_in_outbox"] == 0  # every record acked and deleted
    assert ours["live"]["recorded"] >= 1
    assert ours["live"]["max_s"] is not None
    # Batching: the backlog went in far fewer messages than one per record.
    assert ours["messages"] < 100
    assert naive["messages"] >= 3000
    # The temporary outbox directory is removed.
    assert [p.name for p in tmp_path.iterdir()] == ["drain.json"]
