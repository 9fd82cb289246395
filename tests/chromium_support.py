"""What a person sees of a local HTML page: headless Chromium (Debian's `chromium`, put
there by scripts/setup.sh) opens it once and gives back a screenshot and a look inside.

Chromium's own command-line modes do it, so no driver library is needed: one start with
`--screenshot` and `--dump-dom` together (both run after the page's load event) takes
about half a second. To learn what was drawn, the page is copied into the work directory
with a small probe script at its end; on load the probe writes, into a hidden element that
`--dump-dom` prints, what the browser itself reports:
- every `<img>`: whether it decoded (`naturalWidth > 0`; a broken image is 0);
- every `figure.chart`: its box on the page and how many SVG shapes it draws;
- every reference to something outside the page: a `src`/`href` (and kin) attribute
  or a CSS `url()` that is neither an in-page `#anchor` nor a `data:` URI, and any
  resource the browser fetched (a self-contained page has none);
- the page's height.
The copy sits in a directory of its own, so a page that leaned on a file beside it would
show that file as missing. `painted()` then reads the screenshot's pixels inside each
chart's box: a chart that is laid out but blank (or not drawn) paints almost nothing.

Chromium runs as root here, hence --no-sandbox; the network flags keep it from trying to
reach anything; HOME, TMPDIR and the profile are under the caller's directory (tmp_path),
so nothing is written elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",  # one screenshot pixel per CSS pixel
)
PROBE_ID = "__what-was-seen"
PROBE = rf"""
<script>
window.addEventListener("load", () => {{
  const box = (el) => {{
    const r = el.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height];
  }};
  const seen = {{
    images: [...document.images].map((i) => ({{
      src: i.src.startsWith("data:") ? i.src.slice(0, 40) : i.src,
      complete: i.complete, natural_width: i.naturalWidth }})),
    charts: [...document.querySelectorAll("figure.chart")].map((f) => {{
      const svg = f.querySelector("svg");
      return {{ box: box(f), svg_box: svg ? box(svg) : null,
        shapes: svg ? svg.querySelectorAll("path, use, rect, line, polyline, polygon").length
                    : 0 }};
    }}),
    outside: [
      ...[...document.querySelectorAll("*")].flatMap((el) =>
        ["src", "href", "xlink:href", "poster", "data", "srcset"].map((a) => el.getAttribute(a))),
      ...[...document.styleSheets].flatMap((s) =>
        [...s.cssRules].flatMap((r) => [...r.cssText.matchAll(/url\(["']?([^"')]*)/g)])
          .map((m) => m[1])),
      ...performance.getEntriesByType("resource").map((e) => e.name),
    ].filter((u) => u && !u.startsWith("#") && !u.startsWith("data:")),
    height: document.documentElement.scrollHeight,
    title: document.title,
  }};
  const out = document.createElement("script");
  out.type = "application/json";
  out.id = "{PROBE_ID}";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
}});
</script>
"""


@dataclass(frozen=True)
class Chart:
    box: tuple[float, float, float, float]  # x, y, width, height in CSS px on the page
    svg_box: tuple[float, float, float, float] | None
    shapes: int  # SVG shapes inside: 0 when nothing was drawn


@dataclass(frozen=True)
class Seen:
    screenshot: Path  # PNG, the window's size
    window: tuple[int, int]
    page_height: int
    title: str
    charts: tuple[Chart, ...]
    broken_images: tuple[str, ...]  # src of each image that failed (a data: URI's start)
    image_count: int
    outside: tuple[str, ...]  # references to files or URLs outside the page
    dom: str


class NotSeen(AssertionError):
    """Chromium did not show the page (it failed, timed out, or the probe never ran)."""


def look_at(page: Path, workdir: Path, *, width: int = 1280, height: int = 4000) -> Seen:
    """Open `page` in headless Chromium at a `width` x `height` window; one start."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / "page.html"
    html = page.read_text(encoding="utf-8")
    cut = html.lower().rfind("</body>")
    copy.write_text(html[:cut] + PROBE + html[cut:] if cut >= 0 else html + PROBE, "utf-8")
    screenshot = workdir / "screenshot.png"
    (workdir / "tmp").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        # Relative to cwd: Chromium binds a Unix socket under TMPDIR, and a socket's path
        # must fit in 108 bytes, which a deep tmp_path does not.
        "TMPDIR": "tmp",
        "XDG_CONFIG_HOME": str(workdir / ".config"),
        "XDG_CACHE_HOME": str(workdir / ".cache"),
        "LANG": "C.UTF-8",
    }
    argv = [
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={workdir / 'profile'}",
        f"--window-size={width},{height}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        copy.as_uri(),
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workdir,
        start_new_session=True,  # its helpers share our child's group: one kill ends all
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise NotSeen(f"chromium did not finish in 60 s on {page}") from None
    finally:
        _end_group(proc.pid)
    dom = out.decode("utf-8", "replace")
    found = re.search(rf'<script type="application/json" id="{PROBE_ID}">(.*?)</script>', dom, re.S)
    if proc.returncode != 0 or found is None or not screenshot.exists():
        tail = err.decode("utf-8", "replace")[-2000:]
        raise NotSeen(f"chromium exit {proc.returncode}, probe found: {found is not None}\n{tail}")
    probe: dict[str, Any] = json.loads(found.group(1))
    return Seen(
        screenshot=screenshot,
        window=(width, height),
        page_height=int(probe["height"]),
        title=str(probe["title"]),
        charts=tuple(
            Chart(
                box=tuple(c["box"]),  # type: ignore[arg-type]
                svg_box=tuple(c["svg_box"]) if c["svg_box"] else None,  # type: ignore[arg-type]
                shapes=int(c["shapes"]),
            )
            for c in probe["charts"]
        ),
        broken_images=tuple(
            i["src"] for i in probe["images"] if not (i["complete"] and i["natural_width"] > 0)
        ),
        image_count=len(probe["images"]),
        outside=tuple(probe["outside"]),
        dom=dom,
    )


def _end_group(pgid: int) -> None:
    """Chromium's helper processes normally leave with it; any straggler of the group we
    started is ended here."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def painted(seen: Seen, chart: Chart) -> float:
    """The share (0..1) of the chart's pixels in the screenshot that are not background
    white. Raises NotSeen when the chart lies outside the screenshot's window."""
    from PIL import Image  # Pillow comes with matplotlib (the `ops` extra)

    x, y, w, h = (round(v) for v in chart.box)
    if w <= 0 or h <= 0 or x + w > seen.window[0] or y + h > seen.window[1]:
        raise NotSeen(f"chart at {chart.box} is outside the {seen.window} window")
    with Image.open(seen.screenshot) as image:
        crop = image.convert("L").crop((x, y, x + w, y + h))
        histogram = crop.histogram()
    inked = sum(histogram[:245])  # darker than near-white
    return inked / (w * h)
