"""PDFs -> one unit of blocks: each page's text blocks and figures in reading order, columns respected.

PyMuPDF gives the text blocks (about one paragraph each), the raster images placed on the page (with their xref:
the image is extracted at its own resolution, only when it is judged) and the vector drawings, which
`Page.cluster_drawings` groups; a cluster of enough paths that is not only horizontal rules (a table's) is a vector
figure, rasterised at `FIGURE_DPI`. Text inside a figure's box (axis labels) belongs to the figure.

Reading order: items sorted top to bottom; an item that crosses the page's middle (a title, a one-column paragraph,
a wide figure) closes a band, and within a band the left column is read before the right one. One-line blocks in the
top and bottom margins that repeat on `REPEATS` pages once numbers are taken out (running heads), or are only
numbers (page numbers), are left out and counted as `page_furniture`. Lines are joined
with spaces, a word hyphenated at a line end is joined again. A block that starts `Figure N` / `Fig. N` / `Table N`
is a caption. An image placed on many pages (a logo in the header) is `image_repeated`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pymupdf

from renderers.interleaved.blocks import Block, Picture, Text, Unit
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.rules import repeated_refs
from vlcorpus.document import DocInput, Filtered

FIGURE_DPI = 150
FIGURE_MIN_PATHS = 12  # vector paths in a cluster for it to be a figure
FIGURE_MIN_PT = 36  # both sides of a vector figure, in points
LABEL_GAP = 8  # points between a vector figure and a label block that belongs to it
LABEL_WORDS = 3  # words per line, at most, of a label block
MARGIN = 0.1  # share of the page height at the top and bottom where running heads and page numbers stand
REPEATS = 3  # pages a margin line must repeat on (numbers aside) to be a running head
CAPTION = re.compile(r"^\s*(fig(ure)?\.?|table|tab\.|abbildung|图|表)\s*[\dIVX]", re.I)


@dataclass(slots=True)
class Placed:
    rect: pymupdf.Rect
    block: Block
    margin_line: str | None = None  # a one-line block in the top or bottom margin: `furniture_key` of its text


def block_text(block: dict) -> str:
    lines = [" ".join("".join(s["text"] for s in line["spans"]).split()) for line in block["lines"]]
    text = ""
    for line in filter(None, lines):
        if text.endswith("-") and line[:1].islower() and len(text) > 1 and text[-2].isalpha():
            text = text[:-1] + line
        else:
            text = f"{text} {line}" if text else line
    return text


def reading_order(items: list[Placed], width: float) -> list[Placed]:
    mid = width / 2
    ordered: list[Placed] = []
    band: list[Placed] = []

    def close() -> None:
        left = [p for p in band if (p.rect.x0 + p.rect.x1) / 2 < mid]
        right = [p for p in band if (p.rect.x0 + p.rect.x1) / 2 >= mid]
        ordered.extend(sorted(left, key=lambda p: p.rect.y0) + sorted(right, key=lambda p: p.rect.y0))
        band.clear()

    for item in sorted(items, key=lambda p: (p.rect.y0, p.rect.x0)):
        if item.rect.x0 < mid - 0.02 * width and item.rect.x1 > mid + 0.02 * width:
            close()
            ordered.append(item)
        else:
            band.append(item)
    close()
    return ordered


def grown(box: pymupdf.Rect, labels: list[pymupdf.Rect]) -> pymupdf.Rect:
    """`box` grown over the label blocks (short lines: tick labels, axis titles, legends) touching it."""
    box = pymupdf.Rect(box)
    for _ in range(3):
        near = box + (-LABEL_GAP, -LABEL_GAP, LABEL_GAP, LABEL_GAP)
        touching = [r for r in labels if near.intersects(r) and not box.contains(r)]
        if not touching:
            break
        for r in touching:
            box |= r
    return box


def figures(page: pymupdf.Page) -> list[pymupdf.Rect]:
    """Boxes of the page's vector figures: clusters of drawings with enough paths, not only horizontal rules."""
    drawings = page.get_drawings()
    if len(drawings) < FIGURE_MIN_PATHS:
        return []
    boxes = []
    for rect in page.cluster_drawings(drawings=drawings):
        if rect.width < FIGURE_MIN_PT or rect.height < FIGURE_MIN_PT:
            continue
        inside = [d["rect"] for d in drawings if rect.contains(d["rect"])]
        if len(inside) >= FIGURE_MIN_PATHS and not all(r.height < 2 or r.width < 2 for r in inside):
            boxes.append(rect)
    return boxes


def raster_loader(pdf: pymupdf.Document, xref: int):
    def load() -> bytes:
        info = pdf.extract_image(xref)
        if info and info.get("ext") in ("png", "jpeg", "jpg") and not info.get("smask"):
            return info["image"]
        pix = pymupdf.Pixmap(pdf, xref)
        if info and info.get("smask"):
            pix = pymupdf.Pixmap(pix, pymupdf.Pixmap(pdf, info["smask"]))
        if pix.colorspace and pix.colorspace.n > 3:
            pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
        return pix.tobytes("png")

    return load


def clip_loader(pdf: pymupdf.Document, number: int, rect: pymupdf.Rect):
    return lambda: pdf[number].get_pixmap(clip=rect, dpi=FIGURE_DPI).tobytes("png")


def page_items(pdf: pymupdf.Document, number: int) -> list[Placed]:
    page = pdf[number]
    area = page.rect
    items: list[Placed] = []
    boxes: list[pymupdf.Rect] = []
    for info in page.get_image_info(xrefs=True):
        rect = pymupdf.Rect(info["bbox"]) & area
        if rect.is_empty:
            continue
        xref = info.get("xref") or 0
        load = raster_loader(pdf, xref) if xref else clip_loader(pdf, number, rect)
        items.append(Placed(rect, Picture(ref=f"xref:{xref}" if xref else f"p{number}:{tuple(rect)}", load=load)))
        boxes.append(rect)
    flags = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
    blocks = [b for b in page.get_text("dict", flags=flags)["blocks"] if b.get("lines")]
    labels = [pymupdf.Rect(b["bbox"]) for b in blocks
              if all(len(block_text({"lines": [line]}).split()) <= LABEL_WORDS for line in b["lines"])]
    for k, rect in enumerate(figures(page)):
        if any(b.contains(rect) for b in boxes):
            continue
        rect = grown(rect, labels) & area
        items.append(Placed(rect, Picture(ref=f"p{number}:figure{k}", load=clip_loader(pdf, number, rect))))
        boxes.append(rect)
    for block in blocks:
        rect = pymupdf.Rect(block["bbox"])
        if any(b.contains(rect) or (b & rect).get_area() > 0.8 * rect.get_area() for b in boxes):
            continue  # text drawn in a figure is part of it
        text = block_text(block)
        if not text:
            continue
        margin = rect.y1 < area.y0 + MARGIN * area.height or rect.y0 > area.y1 - MARGIN * area.height
        line = furniture_key(text) if margin and len(block["lines"]) == 1 else None
        items.append(Placed(rect, Text(text, caption=bool(CAPTION.match(text))), line))
    return [p for p in reading_order(items, area.width)]


def furniture_key(text: str) -> str:
    """A margin line with its numbers taken out: a running head reads the same on every page."""
    return " ".join(re.sub(r"\d+", " ", text).split()).lower()


def read(doc: DocInput, cfg: ExtractConfig, stats: Counter) -> Iterator[Unit]:
    try:
        pdf = pymupdf.open(doc.path, filetype="pdf")
    except Exception as e:  # noqa: BLE001 - PyMuPDF raises several types for damaged files
        raise Filtered(f"not a readable PDF ({e})") from None
    try:
        if pdf.needs_pass:
            raise Filtered("the PDF is encrypted")
        placed = [page_items(pdf, n) for n in range(pdf.page_count)]
        heads = Counter(k for items in placed for k in {p.margin_line for p in items if p.margin_line is not None})
        pages = []
        for items in placed:
            furniture = [p for p in items if p.margin_line is not None and (not p.margin_line or heads[p.margin_line] >= REPEATS)]
            stats["page_furniture"] += len(furniture)
            pages.append([p.block for p in items if p not in furniture])
        refs = [[b.ref for b in blocks if isinstance(b, Picture)] for blocks in pages]
        if not any(isinstance(b, Text) for blocks in pages for b in blocks):
            raise Filtered("the PDF has no text layer (a scan, or a figure on its own)")
        yield Unit([b for blocks in pages for b in blocks],
                   {"title": (pdf.metadata or {}).get("title", "")[:300], "pages": pdf.page_count},
                   repeated_refs(refs, cfg.rules.max_repeats))
    finally:
        pdf.close()
