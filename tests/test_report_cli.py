"""`bench-ops report` as installed (.venv/bin/bench-ops): the real console script writes
the report from v1 messages, and headless Chromium shows what a person sees of it."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

from PIL import Image

from tests.chromium_support import look_at, painted
from tests.support import REPO

BENCH_OPS = REPO / ".venv" / "bin" / "bench-ops"
DAY_A = REPO / "bench" / "data" / "records-day-a.jsonl.gz"
DAY_B = REPO / "bench" / "data" / "records-day-b.jsonl.gz"


def v1_messages(capture: Path, bench: str, out: Path) -> Path:
    """A capture as the v1 messages a subscriber would have written: telemetry in
    messages of 5 records, each event its own message, every one named `bench`."""
    with gzip.open(capture, "rt") as text:
        lines = [json.loads(line) for line in text]
    messages, batch = [], []
    for line in lines:
        kind = line.pop("kind")
        if kind == "event":
            messages.append({**line, "bench": bench})
        else:
            batch.append(line)
            if len(batch) == 5:
                messages.append({"v": 1, "bench": bench, "records": batch})
                batch = []
    if batch:
        messages.append({"v": 1, "bench": bench, "records": batch})
    out.write_text("".join(json.dumps(m) + "\n" for m in messages))
    return out


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BENCH_OPS), "report", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_the_report_as_a_person_sees_it(tmp_path: Path) -> None:
    other = v1_messages(DAY_B, "alun-alun-02", tmp_path / "alun.jsonl")
    out = tmp_path / "report.html"
    done = report(
        "--messages", str(DAY_A), str(other),
        "--since", "2026-11-27", "--until", "2026-11-27",
        "--bench", "sim-*", "alun-alun-02", "ghost-9",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: 3 benches, 1 days")
    html = out.read_text()
    assert "No record and no event from this bench in the period." in html  # ghost-9
    seen = look_at(out, tmp_path / "look", width=1280, height=9000)
    assert seen.title == "Bench report, 2026-11-27"
    assert seen.page_height <= 9000, "the window must hold the whole page"
    assert seen.broken_images == () and seen.outside == ()
    # Fleet: energy and completeness; each bench with data: energy, SoC, outputs.
    assert len(seen.charts) == 2 + 2 * 3
    for chart in seen.charts:
        assert chart.shapes > 20 and chart.svg_box is not None and chart.svg_box[2] > 400
        assert painted(seen, chart) > 0.02, chart
    with Image.open(seen.screenshot) as image:
        assert image.size == (1280, 9000)


def test_a_bad_flag_a_missing_file_and_an_unwritable_out(tmp_path: Path) -> None:
    out = str(tmp_path / "r.html")
    cases = {
        ("--messages", str(DAY_A), "--since", "2026-11-28", "--until", "2026-11-27"): 64,
        ("--messages", str(DAY_A), "--since", "yesterday"): 64,
        ("--messages", str(DAY_A), "--tz", "Mars/Olympus"): 64,
        ("--messages", str(tmp_path / "none.jsonl")): 66,
        ("--messages", str(DAY_A), "--db", "x.sqlite"): 64,
    }
    for args, code in cases.items():
        done = report(*args, "--out", out)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.startswith("bench-ops: ") and len(done.stderr.splitlines()) == 1
    done = report("--messages", str(DAY_A), "--out", str(tmp_path / "no" / "r.html"))
    assert done.returncode == 73 and "No such file" in done.stderr
    assert not Path(out).exists() and list(tmp_path.iterdir()) == []


def test_the_report_from_the_archive_equals_the_one_from_the_messages(tmp_path: Path) -> None:
    """The archive (SQLite, written through archive_store as `bench-ops archive` does)
    gives the same report as the messages it was filled from; a missing archive is 66."""
    from bench_agent.ops.archive_db import open_store
    from bench_agent.ops.archive_store import Row

    with gzip.open(DAY_A, "rt") as text:
        lines = [json.loads(line) for line in text]
    rows = [Row.of("sim-bench-01", line.pop("kind"), line) for line in lines]
    db = tmp_path / "archive.sqlite"
    with open_store(db) as store:
        store.insert([r for r in rows if r is not None], "2026-12-05T00:00:00.000Z")
    period = ("--since", "2026-11-27", "--until", "2026-11-28")
    from_db, from_messages = tmp_path / "db.html", tmp_path / "messages.html"
    assert report("--db", str(db), *period, "--out", str(from_db)).returncode == 0
    assert report("--messages", str(DAY_A), *period, "--out", str(from_messages)).returncode == 0

    def tables(path: Path) -> list[str]:  # the figures, not the charts' random ids or "made"
        return re.findall(r"<table>.*?</table>", path.read_text(), re.S)

    assert tables(from_db) == tables(from_messages) and len(tables(from_db)) == 4
    done = report("--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "x.html"))
    assert done.returncode == 66 and "no archive there" in done.stderr
