"""tests/chromium_support.py sees what a person would: charts drawn, broken images, blank
charts and references to files outside the page are told apart (each check has a page
that fails it)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from bench_agent.ops import html_page as h
from tests.chromium_support import NotSeen, look_at, painted


def line_chart() -> h.Markup:
    fig = h.figure(7, 2.5)
    ax = fig.subplots()
    ax.plot(range(24), [40 + 2 * i for i in range(24)], color="#1f5f99", linewidth=2)
    ax.fill_between(range(24), 0, [40 + 2 * i for i in range(24)], alpha=0.3)
    ax.set_ylabel("state of charge, %")
    return h.chart(fig, alt="state of charge over a day")


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write(tmp_path: Path, *parts: h.Markup) -> Path:
    path = tmp_path / "in" / "report.html"
    path.parent.mkdir()
    path.write_text(h.page("Seen", *parts), encoding="utf-8")
    return path


def test_a_page_with_two_charts_and_an_image_is_seen_whole(tmp_path: Path) -> None:
    page = write(
        tmp_path,
        h.section("Fleet", line_chart(), h.table(["a"], [["1"]]), line_chart()),
        h.Markup(f'<img alt="ok" src="{png_data_uri()}">'),
    )
    seen = look_at(page, tmp_path / "look", height=1400)
    assert seen.title == "Seen"
    assert seen.image_count == 1 and seen.broken_images == ()
    assert seen.outside == ()
    assert len(seen.charts) == 2
    for chart in seen.charts:
        assert chart.shapes > 20 and chart.svg_box is not None and chart.svg_box[2] > 300
        assert painted(seen, chart) > 0.05  # lines, fill, axes and labels on white
    with Image.open(seen.screenshot) as image:
        assert image.size == (1280, 1400)


def test_a_broken_image_and_a_blank_chart_are_caught(tmp_path: Path) -> None:
    empty = h.figure(7, 2.5)  # a figure with no axes: an SVG of a white rectangle
    page = write(
        tmp_path,
        h.chart(empty, alt="nothing"),
        h.Markup('<img alt="broken" src="data:image/png;base64,AAAA">'),
    )
    seen = look_at(page, tmp_path / "look", height=800)
    assert seen.broken_images == ("data:image/png;base64,AAAA",) and seen.image_count == 1
    (chart,) = seen.charts
    assert painted(seen, chart) < 0.001


def test_a_page_that_leans_on_files_beside_it_is_caught(tmp_path: Path) -> None:
    page = write(
        tmp_path,
        h.Markup('<img alt="beside" src="chart.png">'),
        h.Markup('<style>h1 { background: url("paper.png"); }</style>'),
    )
    Image.new("RGB", (10, 10)).save(page.parent / "chart.png")  # there, but not in the copy
    seen = look_at(page, tmp_path / "look", height=600)
    assert len(seen.broken_images) == 1 and seen.broken_images[0].endswith("/look/chart.png")
    assert sorted(seen.outside) == ["chart.png", "paper.png"]


def test_a_chart_below_the_window_is_not_claimed_seen(tmp_path: Path) -> None:
    page = write(tmp_path, h.Markup('<div style="height:2000px"></div>'), line_chart())
    seen = look_at(page, tmp_path / "look", height=600)
    assert seen.page_height > 2000
    with pytest.raises(NotSeen, match="outside"):
        painted(seen, seen.charts[0])
