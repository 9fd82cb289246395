"""`Json` is a type: mypy (strict, as `make test` runs it) rejects what JSON cannot carry
in a payload the agent builds, and takes what it can without casts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PAYLOADS = """
from collections.abc import Mapping
from datetime import datetime

from bench_agent.json_value import Json, JsonObject


def fine(summary: dict[str, float | None], names: tuple[str, ...]) -> JsonObject:
    nested: Mapping[str, Json] = {"n": 3, "ok": True}
    return {"v": 1, "channels": {"battery": summary}, "names": names, "nested": nested}


def wrong() -> JsonObject:
    return {"ts": datetime.now()}
"""


def test_mypy_rejects_a_datetime_in_a_payload_and_takes_plain_json(tmp_path: Path) -> None:
    (tmp_path / "payloads.py").write_text(PAYLOADS)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "payloads.py"],
        check=False,  # mypy exits 1 for the error this test expects
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        env={"PATH": "/usr/bin:/bin", "MYPYPATH": str(REPO)},
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    wrong_line = PAYLOADS.splitlines().index('    return {"ts": datetime.now()}') + 1
    assert errors[0].startswith(f"payloads.py:{wrong_line}:") and '"datetime"' in errors[0]
