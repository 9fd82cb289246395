"""A self-contained HTML page for ops' reports: sections, tables, key figures and charts.

One file that opens offline and prints well: the CSS is inline (with a print style:
A4, each bench section on a new page, no table or chart cut in two), there is no
script, no font, no stylesheet and no image fetched from anywhere.

Charts are matplotlib figures embedded by `chart(fig)` as **inline SVG**, not as PNG data
URIs, because:
- print: SVG is vector, so a chart prints as sharp as the text at any printer resolution,
  where a PNG is sharp only at the DPI it was drawn at (a 300-dpi PNG to print well is
  4-6x the bytes of the same chart at screen resolution);
- size: a daily bar or line chart is 20-60 kB of SVG, no base64 (a data URI adds a
  third to a PNG's bytes); long series are aggregated (hourly, daily) before they are
  drawn, which keeps an SVG small whatever the period;
- no broken image: inline markup has nothing to decode or fetch, and glyphs are drawn as
  paths (matplotlib's default `svg.fonttype = "path"`), so the page needs no font either.
Each chart's SVG ids (glyphs, clip paths) get a prefix of their own, so several charts
on one page never share an id: a running number, or the `ident` the caller gives. The
SVG is drawn with a fixed `svg.hashsalt` (matplotlib otherwise salts its clip-path ids
with a random UUID), so a chart given an `ident` is the same bytes every time: a page
made of such charts is reproducible (`bench-ops plan`: same seed, same report).

Everything that takes text escapes it; what this module makes is `Markup`, which passes
through unescaped. Figures are best made with `figure()` (a bare `Figure`, no pyplot,
no GUI backend, nothing global to leak); `chart()` closes pyplot figures too.
"""

from __future__ import annotations

import io
import itertools
import re
import sys
from collections.abc import Iterable, Sequence
from html import escape

import matplotlib

matplotlib.use("Agg")  # a server at the city has no display; never pick a GUI backend

from matplotlib.axes import Axes  # after the backend is chosen
from matplotlib.figure import Figure

_chart_numbers = itertools.count(1)
# An id, and each reference to one, in matplotlib's SVG.
_SVG_IDS = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')
_SVG_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)


class Markup(str):
    """HTML made by this module: safe to put in a page as it is."""


Cell = str | int | float | Markup | None

CSS = """
:root { --ink: #1b1f24; --muted: #5b6470; --line: #d5d9de; --band: #f3f5f7;
  --accent: #1f5f99; --bad: #b3261e; --warn: #8a5a00; --good: #1e6b35; }
* { box-sizing: border-box; }
html { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: #fff; font-size: 15px; line-height: 1.45; }
body { margin: 0 auto; padding: 24px 28px 48px; max-width: 1120px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.3rem; margin: 32px 0 8px; padding-bottom: 4px;
  border-bottom: 2px solid var(--accent); }
h3 { font-size: 1.05rem; margin: 20px 0 6px; }
p { margin: 6px 0 10px; }
.subtitle, .note, figcaption, caption { color: var(--muted); }
.note { font-size: 0.9rem; }
nav.toc { margin: 12px 0 4px; font-size: 0.92rem; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px;
  white-space: nowrap; }
.figures { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 14px; }
.figure-box { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px;
  min-width: 150px; background: var(--band); }
.figure-box .value { font-size: 1.35rem; font-weight: 600; }
.figure-box .label { font-size: 0.85rem; color: var(--muted); }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9rem;
  font-variant-numeric: tabular-nums; }
caption { text-align: left; font-size: 0.85rem; padding-bottom: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; }
td:first-child { white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); }
.good { color: var(--good); }
figure.chart { margin: 10px 0 18px; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
figure.chart figcaption { font-size: 0.85rem; margin-top: 2px; }
footer { margin-top: 40px; font-size: 0.8rem; color: var(--muted); }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  html { font-size: 10.5pt; }
  body { max-width: none; padding: 0; }
  nav.toc { display: none; }
  section.page { break-before: page; }
  h2, h3 { break-after: avoid; }
  figure.chart, table, .figures { break-inside: avoid; }
  thead { display: table-header-group; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def esc(text: Cell) -> Markup:
    """`text` as HTML: `Markup` as it is, anything else escaped; None is an empty cell."""
    if isinstance(text, Markup):
        return text
    if text is None:
        return Markup("")
    return Markup(escape(str(text)))


def join(parts: Iterable[Cell]) -> Markup:
    return Markup("\n".join(esc(part) for part in parts))


def anchor_id(text: str) -> str:
    """An id for an in-page link: letters, digits and '-' only."""
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "s"


def page(title: str, *parts: Cell, subtitle: str = "", footer: str = "") -> str:
    """The whole document: `<!doctype html>` with the inline CSS, the title, `parts`."""
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{esc(title)}</h1>",
            f'<p class="subtitle">{esc(subtitle)}</p>' if subtitle else "",
            join(parts),
            f"<footer>{esc(footer)}</footer>" if footer else "",
            "</body>",
            "</html>",
            "",
        ]
    )


def section(title: str, *parts: Cell, anchor: str = "", new_page: bool = False) -> Markup:
    """`<section>` with an `<h2>`; `new_page` starts it on a new sheet when printed."""
    ident = anchor or anchor_id(title)
    cls = ' class="page"' if new_page else ""
    return Markup(
        f'<section id="{esc(ident)}"{cls}>\n<h2>{esc(title)}</h2>\n{join(parts)}\n</section>'
    )


def heading(text: str) -> Markup:
    return Markup(f"<h3>{esc(text)}</h3>")


def paragraph(text: Cell, *, note: bool = False) -> Markup:
    cls = ' class="note"' if note else ""
    return Markup(f"<p{cls}>{esc(text)}</p>")


def span(text: Cell, cls: str) -> Markup:
    """Inline text with one of the page's classes: bad, warn, good."""
    return Markup(f'<span class="{esc(cls)}">{esc(text)}</span>')


def toc(entries: Sequence[tuple[str, str]]) -> Markup:
    """In-page links, (label, anchor) each; hidden when printed."""
    links = " ".join(f'<a href="#{esc(ident)}">{esc(label)}</a>' for label, ident in entries)
    return Markup(f'<nav class="toc">{links}</nav>')


def key_figures(items: Sequence[tuple[str, Cell]]) -> Markup:
    """A row of boxes, each a big value over its label: (label, value)."""
    boxes = "".join(
        f'<div class="figure-box"><div class="value">{esc(value)}</div>'
        f'<div class="label">{esc(label)}</div></div>'
        for label, value in items
    )
    return Markup(f'<div class="figures">{boxes}</div>')


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    caption: str = "",
    numeric: Iterable[int] = (),
) -> Markup:
    """A table; the columns in `numeric` (indices) are right-aligned, numbers as given."""
    right = set(numeric)

    def cls(i: int) -> str:
        return ' class="num"' if i in right else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # none: a list table
    return Markup(f"<table>{cap}{thead}\n<tbody>\n{body}\n</tbody></table>")


def figure(width_in: float = 9.0, height_in: float = 3.0) -> Figure:
    """A bare matplotlib figure (no pyplot), laid out so labels are never cut."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def plain_axes(ax: Axes, ylabel: str) -> None:
    """The reports' look for one chart's axes: its y label, light horizontal grid lines
    behind the data, no top or right frame."""
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def chart(fig: Figure, *, alt: str, caption: str = "", ident: str = "") -> Markup:
    """`fig` as inline SVG in a `<figure class="chart">`, then closed. `alt` says what the
    chart shows, for screen readers and for a reader of the HTML. `ident` (letters,
    digits, '-'; unique on the page) names the chart's SVG ids instead of a running
    number, which makes the markup the same bytes for the same figure."""
    buffer = io.StringIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": "bench-agent"}):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
    finally:
        _close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    svg = _SVG_METADATA.sub("", svg, count=1)  # RDF naming matplotlib: bytes, no use here
    # The width/height matplotlib writes (in pt) stay as the intrinsic size; CSS scales it
    # down on a narrow window or paper via max-width with the viewBox keeping its shape.
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{escape(alt)}" ', 1)
    # matplotlib names glyphs by font and glyph ("DejaVuSans-31"): the same in every chart.
    prefix = f"{anchor_id(ident)}-" if ident else f"c{next(_chart_numbers)}-"
    svg = _SVG_IDS.sub(lambda m: m.group(1) + prefix + m.group(2), svg)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Markup(f'<figure class="chart">\n{svg}{cap}</figure>')


def _close(fig: Figure) -> None:
    """Free the figure: pyplot keeps the ones it made until closed; a bare one is cleared."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
