"""Paginate a page loaded in Chromium into page images, each with exactly the text laid out on it.

`js/layout.js` reads the DOM layout: every visible line fragment of text (every visible image, as markdown `![alt]()`,
and every formula, as LaTeX) with its box, in DOM order. Python groups fragments into visual lines, gives each whole
line to one page and screenshots the pages, so no line is split between two pages or counted twice, and a text line
that does not lie wholly inside its page is left out of the text and counted (`lines_outside_page`). Two layouts:

- `template` (e-books, plain HTML): a template stylesheet plus `templates/paged.css` turn the root element into a
  multi-column box one page high; page i is the horizontal strip [i*W, (i+1)*W) and Chromium's fragmentation
  never splits a line box across columns. What would overflow a column (a formula or table wider than it, a
  monolithic box taller than a page) is first scaled down to fit (`js/fit.js`, counted `scaled_to_fit`).
- `native` (HTML pages with their own CSS): the page keeps its design at viewport width W and is cut into slices at
  most H high, each cut moved up to the top of any text line it would cross.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TEMPLATE_DIR = HERE / "templates"
TEMPLATES = ("serif-light", "sans-sepia", "serif-two-column", "sans-large-print", "serif-sepia-two-column")
IMAGE_FORMATS = ("png", "jpeg")
INF = 1e12


@dataclass
class PageConfig:
    """Page geometry and look. `templates` are stylesheets in renderers/browser/templates/ (one picked per document)."""

    width: int = 1024
    height: int = 1024
    scale: float = 1.0  # device scale factor: images are width*scale x height*scale pixels
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    image_format: str = "png"
    jpeg_quality: int = 90
    max_pages: int = 500  # per document; the rest is dropped and counted
    min_image_px: int = 24  # smaller images (icons, bullets) get no ![alt]() line
    javascript: bool = False

    def __post_init__(self) -> None:
        if not (64 <= self.width <= 4096 and 64 <= self.height <= 4096):
            raise ValueError("page width and height must be within 64..4096 CSS pixels")
        if not 0.5 <= self.scale <= 4:
            raise ValueError("scale must be within 0.5..4")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
        if not self.templates:
            raise ValueError("templates: give at least one")
        for name in self.templates:
            if not (TEMPLATE_DIR / f"{name}.css").is_file() or name == "paged":
                raise ValueError(f"unknown template {name!r}; available: {', '.join(available_templates())}")
        if self.max_pages <= 0:
            raise ValueError("max_pages must be positive")


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.css") if p.stem != "paged")


@cache
def asset(rel: str) -> str:
    """A file shipped with the renderers (a script in js/, a stylesheet in templates/)."""
    return (HERE / rel).read_text("utf-8")


@cache
def layout_script() -> str:
    """`js/layout.js` given the MathML converter: the bundle (UMD) runs with an `exports` of its own, so it sets no
    global a page's script could see or replace."""
    return ("(opts) => { const exports = {}, module = { exports };\n" + asset("js/mathml-to-latex.min.js")
            + "\nreturn (" + asset("js/layout.js").strip().rstrip(";") + ")(opts, exports.MathMLToLaTeX.convert); }")


@cache
def typeset_script() -> str:
    """`js/typeset.js` with the MathJax bundle inlined: no `eval`, which a page's Content-Security-Policy may forbid."""
    return asset("js/typeset.js").replace("/* MATHJAX */", asset("js/mathjax-tex-svg-full.js"))


def prepare_maths(page: Any, stats: Counter) -> str:
    """Show each formula once, as its reader sees it: KaTeX or MathJax output whose stylesheet did not load keeps
    only its MathML (`js/unstyled_maths.js`), and the TeX a MathJax or KaTeX page keeps in its DOM is typeset
    (`js/tex_in_dom.js`, `js/typeset.js`) while the text keeps its TeX. Returns the attribute that holds each typeset formula's TeX, named
    afresh for this page. MathJax failing as a whole leaves the TeX as it stands, counted."""
    if unstyled := page.evaluate(asset("js/unstyled_maths.js")):
        stats["math_unstyled"] += unstyled
    attr = "data-vlcorpus-tex-" + secrets.token_hex(8)
    found = page.evaluate(asset("js/tex_in_dom.js"))
    if found is not None:
        counts = page.evaluate(typeset_script(), {"attr": attr, **found})
        if "error" in counts:
            stats["math_typeset_failed"] += 1
        else:
            stats.update({k: v for k, v in counts.items() if v})
    return attr


def pick_template(doc: str, templates: list[str]) -> str:
    """The same document always gets the same template; a corpus gets all of them in about equal shares."""
    return templates[int(hashlib.sha1(doc.encode("utf-8")).hexdigest()[:8], 16) % len(templates)]


def template_css(name: str, cfg: PageConfig) -> str:
    size = f":root {{ --page-w: {cfg.width}px; --page-h: {cfg.height}px; }}\n"
    return size + asset(f"templates/{name}.css") + "\n" + asset("templates/paged.css")


def apply_template(page: Any, name: str, cfg: PageConfig) -> None:
    """Append the template as the last stylesheet (Playwright's add_style_tag waits for an onload handler, which
    never runs while the page's JavaScript is off)."""
    page.evaluate(
        """css => { const s = document.createElementNS('http://www.w3.org/1999/xhtml', 'style');
            s.textContent = css; (document.head || document.documentElement).appendChild(s); }""",
        template_css(name, cfg),
    )


@dataclass
class Line:
    """One visual line: the fragments (text nodes, or an image) that sit side by side at the same height."""

    items: list[dict[str, Any]]
    top: float
    bottom: float
    left: float
    right: float

    @classmethod
    def of(cls, item: dict[str, Any]) -> Line:
        return cls([item], item["y"], item["y"] + item["h"], item["x"], item["x"] + item["w"])

    def joins(self, item: dict[str, Any], page_w: float | None) -> bool:
        """Does `item` continue this line? Same height band, same page strip, and not a separate block far away."""
        last = self.items[-1]
        if last.get("image") or item.get("image"):
            return False
        overlap = min(self.bottom, item["y"] + item["h"]) - max(self.top, item["y"])
        if overlap < 0.5 * min(self.bottom - self.top, item["h"]):
            return False
        if page_w is not None and int(self.left // page_w) != int(item["x"] // page_w):
            return False
        gap = item["x"] - self.right
        return item["blk"] == last["blk"] or item["cell"] or -2 <= gap <= 2 * item["h"]

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.top, self.bottom = min(self.top, item["y"]), max(self.bottom, item["y"] + item["h"])
        self.left, self.right = min(self.left, item["x"]), max(self.right, item["x"] + item["w"])

    @property
    def pre(self) -> bool:
        return all(i["pre"] for i in self.items)

    @property
    def text(self) -> str:
        """The line as a reader sees it: whitespace collapsed (kept in preformatted text), cells joined by ` | `."""
        parts: list[str] = []
        cells = {i["cell"] for i in self.items if i["cell"]}
        for n, item in enumerate(self.items):
            t = item["pfx"] + item["t"]
            if n:
                prev = self.items[n - 1]
                if item["cell"] != prev["cell"] and item["cell"] and prev["cell"]:
                    parts.append(" | ")
                elif item["blk"] != prev["blk"]:
                    parts.append(" ")
            parts.append(t)
        text = "".join(parts).replace("\u00ad", "").replace("\u200b", "")
        if self.pre:
            text = text.strip("\r\n").rstrip()
        else:
            text = " ".join(text.split())
        return f"| {text} |" if len(cells) > 1 else text


def group_lines(items: list[dict[str, Any]], page_w: float | None) -> list[Line]:
    lines: list[Line] = []
    for item in items:
        if lines and lines[-1].joins(item, page_w):
            lines[-1].add(item)
        else:
            lines.append(Line.of(item))
    return [ln for ln in lines if ln.text]


def page_text(lines: list[Line]) -> str:
    """Lines in reading order; a blank line between lines of different blocks (paragraph breaks)."""
    out: list[str] = []
    for n, ln in enumerate(lines):
        if n and ln.items[0]["blk"] != lines[n - 1].items[-1]["blk"] and not (ln.pre and lines[n - 1].pre):
            out.append("")
        out.append(ln.text)
    return "\n".join(out)


def slice_breaks(lines: list[Line], height: float, page_h: float) -> list[tuple[float, float]]:
    """Cut [0, height) into slices at most page_h high; a cut that would cross a text line moves up to its top."""
    text = [ln for ln in lines if not ln.items[0].get("image")]
    slices = []
    top = 0.0
    while top < height:
        end = min(top + page_h, height)
        while True:
            crossing = [ln.top for ln in text if ln.top < end < ln.bottom and ln.top > top]
            if not crossing:
                break
            end = min(crossing)
        slices.append((top, end))
        top = end
    return slices


def inside_page(ln: Line, region: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = region
    return ln.left >= x0 - 0.5 and ln.right <= x1 + 0.5 and ln.top >= y0 - 0.5 and ln.bottom <= y1 + 0.5


@dataclass
class RenderedPage:
    index: int
    text: str
    image: bytes
    lines: int
    boxes: list[tuple[float, float, float, float]]  # each text line's box (left, top, right, bottom) on the page


def paginate(page: Any, cfg: PageConfig, layout: str, stats: Counter, max_pages: int | None = None) -> list[RenderedPage]:
    """Measure the loaded page, split it into pages and screenshot each one. `layout` is "template" (a template
    stylesheet is already applied) or "native". Pages with nothing visible are skipped and counted."""
    w, h = cfg.width, cfg.height
    page.evaluate("() => document.fonts.ready.then(() => true)")
    tex_attr = prepare_maths(page, stats)
    if layout == "native":
        # Fixed and sticky boxes would show on every slice but belong to one: pin them where they are at scroll 0.
        page.evaluate("""() => { for (const el of document.querySelectorAll('*')) {
            const p = getComputedStyle(el).position;
            if (p === 'fixed') el.style.setProperty('position', 'absolute', 'important');
            else if (p === 'sticky') el.style.setProperty('position', 'relative', 'important'); } }""")
    area = {"l": 0, "t": 0, "r": INF, "b": h} if layout == "template" else {"l": 0, "t": 0, "r": w, "b": INF}
    if layout == "template":
        stats["scaled_to_fit"] += page.evaluate(asset("js/fit.js"))
    measured = page.evaluate(layout_script(), {"area": area, "minImage": cfg.min_image_px, "texAttr": tex_attr,
                                               "strip": w if layout == "template" else 0})
    stats.update({k: v for k, v in measured["counts"].items() if v})
    if layout == "template":
        lines = group_lines(measured["items"], w)
        count = max((int((ln.left + 1) // w) for ln in lines), default=-1) + 1
        regions = [(i * w, 0.0, i * w + w, float(h)) for i in range(count)]
        owner = [max(0, int((ln.left + 1) // w)) for ln in lines]
        # Two forced column breaks after the content let the viewport scroll to the last page strip.
        page.evaluate("""() => { for (let i = 0; i < 2; i++) { const d = document.createElement('div');
            d.setAttribute('style', 'break-before: column !important; height: 1px');
            (document.body || document.documentElement).appendChild(d); } }""")
    else:
        lines = group_lines(measured["items"], None)
        slices = slice_breaks(lines, float(measured["height"]), float(h))
        regions = [(0.0, top, float(w), end) for top, end in slices]
        tops = [top for top, _ in slices]
        owner = [max(0, _bisect(tops, ln.top)) for ln in lines]
        # A spacer one page high below everything lets the viewport scroll so that any slice starts at its top.
        page.evaluate(f"""() => {{ const d = document.createElement('div');
            d.setAttribute('style', 'position: absolute !important; left: 0; width: 1px; top: {measured["height"]}px; height: {h}px');
            document.documentElement.appendChild(d); }}""")
    by_page: dict[int, list[Line]] = {}
    for ln, i in zip(lines, owner):
        if ln.items[0].get("image") or inside_page(ln, regions[i]):  # a picture taller than a slice is still a picture
            by_page.setdefault(i, []).append(ln)
        else:
            stats["lines_outside_page"] += 1
    limit = min(cfg.max_pages, max_pages if max_pages is not None else cfg.max_pages)
    out: list[RenderedPage] = []
    for i, (x0, y0, _, y1) in enumerate(regions):
        if i not in by_page:
            stats["blank_pages"] += 1
            continue
        if len(out) >= limit:
            stats["pages_over_limit"] += 1
            continue
        boxes = [(ln.left - x0, ln.top - y0, ln.right - x0, ln.bottom - y0) for ln in by_page[i]]
        out.append(RenderedPage(len(out), page_text(by_page[i]), _shoot(page, cfg, x0, y0, y1 - y0, measured["background"]),
                                len(by_page[i]), boxes))
    return out


def _bisect(tops: list[float], y: float) -> int:
    lo, hi = 0, len(tops)
    while lo < hi:
        mid = (lo + hi) // 2
        if tops[mid] <= y + 0.5:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _shoot(page: Any, cfg: PageConfig, x: float, y: float, height: float, background: str) -> bytes:
    """Scroll the region to the viewport's top-left corner and screenshot the viewport; below a slice shorter than
    a page, a cover in the page's background colour hides what belongs to the next page."""
    at = page.evaluate(
        """([x, y, cut, bg]) => {
            window.scrollTo(x, y);
            let c = document.getElementById('vlcorpus-cover');
            if (cut > 0) {
              if (!c) { c = document.createElement('div'); c.id = 'vlcorpus-cover';
                        (document.body || document.documentElement).appendChild(c); }
              c.setAttribute('style', `position: fixed !important; left: 0; right: 0; top: ${cut}px; bottom: 0;
                display: block !important; z-index: 2147483647 !important; background: ${bg} !important;`);
            } else if (c) { c.setAttribute('style', 'display: none !important'); }
            return [window.scrollX, window.scrollY];
        }""",
        [x, y, height if height < cfg.height - 0.5 else 0, background],
    )
    if abs(at[0] - x) > 1 or abs(at[1] - y) > 1:
        raise RuntimeError(f"could not scroll the page to ({x:.0f}, {y:.0f}); it stopped at {at}")
    kwargs: dict[str, Any] = {"type": cfg.image_format, "animations": "disabled", "caret": "hide"}
    if cfg.image_format == "jpeg":
        kwargs["quality"] = cfg.jpeg_quality
    return page.screenshot(**kwargs)


def image_name(cfg: PageConfig) -> str:
    return "0.png" if cfg.image_format == "png" else "0.jpg"
