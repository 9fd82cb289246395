"""bench_agent/ops/html_page.py: the page's parts escape what they are given, the page
needs nothing from outside, and a chart is the figure as inline SVG, then closed. What a
browser makes of it is in test_chromium_support.py."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt

from bench_agent.ops import html_page as h


def a_chart(alt: str = "energy per day") -> h.Markup:
    fig = h.figure(6, 2)
    ax = fig.subplots()
    ax.bar(["mon", "tue", "wed"], [120.0, 80.5, 131.2], color="#1f5f99")
    ax.set_ylabel("Wh")
    return h.chart(fig, alt=alt, caption="Harvested per day")


def test_text_is_escaped_and_markup_is_not() -> None:
    cell = '<script>alert("x")</script> & co'
    html = h.table(["bench", "note"], [["b<1>", cell], [h.span("ok", "good"), None]])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; co" in html
    assert "b&lt;1&gt;" in html
    assert '<span class="good">ok</span>' in html  # Markup passes through
    assert "<td></td>" in html  # None is an empty cell
    assert h.esc(h.esc("<b>")) == "&lt;b&gt;"  # escaping twice does not double it
    assert h.paragraph("a < b") == "<p>a &lt; b</p>"
    section = h.section('S "1"', "x")
    assert '<section id="s--1">' in section and "<h2>S &quot;1&quot;</h2>" in section


def test_numeric_columns_are_right_aligned_and_captioned() -> None:
    html = h.table(["day", "Wh"], [["2026-12-01", 12.5]], caption="per day", numeric=[1])
    assert '<th class="num">Wh</th>' in html and '<td class="num">12.5</td>' in html
    assert "<th>day</th>" in html and "<caption>per day</caption>" in html


def test_a_page_is_whole_and_self_contained() -> None:
    html = h.page(
        "Fleet report <Dec>",
        h.toc([("Fleet", "fleet")]),
        h.section("Fleet", h.key_figures([("energy", "1.2 kWh")]), a_chart(), anchor="fleet"),
        h.section("b1", h.paragraph("no data"), new_page=True),
        subtitle="1-7 Dec",
        footer="made by bench-ops",
    )
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<title>Fleet report &lt;Dec&gt;</title>" in html
    assert '<meta charset="utf-8">' in html
    assert "@media print" in html and "@page" in html and "break-before: page" in html
    assert '<section id="b1" class="page">' in html
    # Nothing from outside: no script, no stylesheet link, no URL but in-page anchors
    # and the SVG namespace (an identifier, never fetched).
    assert "<script" not in html and "<link" not in html and "@import" not in html
    urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html))
    assert "#fleet" in urls and all(url.startswith("#") for url in urls)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }


def test_a_chart_is_inline_svg_with_its_alt_and_the_figure_is_closed() -> None:
    html = a_chart(alt='energy "per" day')
    assert html.startswith('<figure class="chart">') and html.endswith("</figure>")
    assert "<?xml" not in html and "<!DOCTYPE" not in html
    assert '<svg role="img" aria-label="energy &quot;per&quot; day"' in html
    assert "<figcaption>Harvested per day</figcaption>" in html
    assert html.count("<path") > 10  # bars, axes, glyphs drawn as paths
    assert "<text" not in html  # glyphs are paths: no font needed to show it
    assert 2_000 < len(html) < 80_000  # a small chart stays small (the SVG choice)
    # A pyplot figure is closed too (pyplot would keep it, and its memory, otherwise).
    fig = plt.figure()
    fig.subplots().plot([1, 2], [3, 4])
    assert plt.fignum_exists(fig.number)
    h.chart(fig, alt="line")
    assert not plt.fignum_exists(fig.number)


def test_two_charts_on_one_page_share_no_svg_id() -> None:
    charts = [a_chart(), a_chart()]
    ids = [set(re.findall(r'\bid="([^"]+)"', c)) for c in charts]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    for chart, own in zip(charts, ids, strict=True):  # every reference stays inside its chart
        refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', chart))
        assert refs and refs <= own


def test_a_chart_with_an_ident_is_the_same_bytes_every_time() -> None:
    """matplotlib salts clip-path ids with a random UUID unless told; chart() tells it."""

    def drawn() -> h.Markup:
        fig = h.figure(4, 2)
        fig.subplots().bar(["a", "b"], [1, 2])
        return h.chart(fig, alt="bars", ident="same")

    first, again = drawn(), drawn()
    assert first == again
    assert 'id="same-' in first and "clip-path" in first
