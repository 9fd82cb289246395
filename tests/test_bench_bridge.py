"""bench/bench_bridge.py keeps working: its quick mode runs the real bridge against a
real mosquitto, and a record missing at its subscriber fails it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_bridge.py"

pytestmark = pytest.mark.integration


def test_the_quick_benchmark_runs_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_bridge", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_bridge"] = module
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "records/s" in out and "missing 0, duplicates 0" in out
