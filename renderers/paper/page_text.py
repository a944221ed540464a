"""The text of each PDF page that the markdown is aligned to: the page's running prose, nothing else.

Nougat's split compares the first and last ~22 words of every PDF page with the markdown. Its own PDF text
(pdfminer) starts and ends pages with what the markdown holds elsewhere or not at all: running heads and feet
("This manuscript is for review purposes only."), line numbers, footnotes and venue lines, text inside figures
(plot labels) and table cells, captions, display maths as glyphs; and a word hyphenated across the page break.
One such anchor drops two pages. Here, from PyMuPDF's layout (spans with sizes and boxes, the page's drawings):

- lines that are only digits and punctuation (line and page numbers) go;
- lines in the top or bottom 8% of the page whose text (digits ignored) repeats on 30% of the pages go;
- lines set smaller than 0.9 of the body size (footnotes, small print, plot labels, affiliations) go, except from
  the reference list on (many classes set it small);
- lines inside a figure or table (a cluster of drawings or images, a stack of horizontal rules) go;
- blocks that start like a caption (`Figure 3:`, `Fig. 2.`, `Table 1`, `(a) `) go, with the blocks that continue
  them (the next line, closer than a line's height: some PDFs make every line a block);
- lines at a page's top or bottom that are not prose (display maths, matrices) go, up to the first prose line;
- words hyphenated at a line end are joined, within and across pages.

A page left with no words (a full-page figure) gets one blank line, so that Nougat's page classifier still sees
the page (its boundary is then found from the previous page's last words, see `renderers.paper.nougat_tools`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pymupdf

_CAPTION = re.compile(r"^\s*((Figure|Fig\.|FIG\.|FIGURE|Table|TABLE|Algorithm)\s*[A-Z]?\d+\s*[.:|]|\([a-h]\)(\s|$))")
_NUMBERS = re.compile(r"^[\s\d.,:;()\[\]\-–—]*$")
_PROSE_WORD = re.compile(r"""^[(\["'“‘]?[A-Za-z][a-z]+[)\],.;:'"”’?!]*$""")
# A section heading: an optional number, then a capitalised word and a few more ("5.2. Structure-Preserving Theorem").
_HEADING = re.compile(r"^(\d+(\.\d+)*\.?\s+)?[A-Z][A-Za-z\-]+(\s+[A-Za-z\-:,.()]+){0,7}$")
# Where the reference list starts: its heading, or its first numbered entry (revtex prints no heading).
_REFERENCES = re.compile(r"^([A-Z]?\d+\.?\s*)?(References|REFERENCES|Bibliography|BIBLIOGRAPHY|Literature Cited)\s*$|^\[1\]\s")
_EDGE = 0.08  # share of the page height where running heads and feet sit
_REPEATED = 0.3  # share of pages a head or foot repeats on
_SMALL = 0.9  # lines set smaller than this share of the body size are small print
BLANK_PAGE = "   "


@dataclass
class _Line:
    text: str
    box: pymupdf.Rect
    size: float


def _float_regions(page: pymupdf.Page) -> list[pymupdf.Rect]:
    """Where figures and tables are: clusters of drawn paths and images, and stacks of horizontal rules (a
    booktabs table), big enough not to be a lone rule under a heading or a footnote separator."""
    rects = [pymupdf.Rect(d["rect"]) for d in page.get_drawings() if d.get("rect") is not None]
    rects += [pymupdf.Rect(i["bbox"]) for i in page.get_image_info()]
    rects = [r for r in rects if r.width > 0 or r.height > 0]
    merged: list[pymupdf.Rect] = []
    for r in rects:
        r = pymupdf.Rect(r.x0 - 3, r.y0 - 3, r.x1 + 3, r.y1 + 3)
        grown = True
        while grown:
            grown = False
            for m in merged:
                if m.intersects(r):
                    r |= m
                    merged.remove(m)
                    grown = True
                    break
        merged.append(r)
    rules = sorted((r for r in rects if r.height < 2 and r.width > 40), key=lambda r: r.y0)
    stacks: list[list[pymupdf.Rect]] = []
    for r in rules:
        for s in stacks:
            if abs(s[-1].x0 - r.x0) < 5 and abs(s[-1].x1 - r.x1) < 5 and r.y0 - s[-1].y1 < 250:
                s.append(r)
                break
        else:
            stacks.append([r])
    merged += [pymupdf.Rect(s[0].x0, s[0].y0 - 1, s[-1].x1, s[-1].y1 + 1) for s in stacks if len(s) >= 2]
    w, h = page.rect.width, page.rect.height
    return [m for m in merged if m.width * m.height > 0.01 * w * h or (m.width > 0.2 * w and m.height > 20)]


def _blocks(page: pymupdf.Page, sizes: Counter) -> list[list[_Line]]:
    out = []
    flags = pymupdf.TEXT_DEHYPHENATE | pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
    for b in page.get_text("dict", flags=flags)["blocks"]:
        if b.get("type") != 0:
            continue
        lines = []
        for line in b["lines"]:
            spans = [s for s in line["spans"] if s["text"].strip()]
            if not spans:
                continue
            for s in spans:
                sizes[round(s["size"], 1)] += len(s["text"])
            text = " ".join("".join(s["text"] for s in line["spans"]).split())
            lines.append(_Line(text, pymupdf.Rect(line["bbox"]), max(s["size"] for s in spans)))
        if lines:
            out.append(lines)
    return out


def _continues(above: _Line, line: _Line) -> bool:
    """Whether `line` is the next line of the text block ending with `above`."""
    gap = line.box.y0 - above.box.y1
    return -1 <= gap < 0.9 * above.size and line.box.x0 < above.box.x1 and above.box.x0 < line.box.x1


def _is_prose(text: str) -> bool:
    """A line of running text: three or more tokens, most of them words (display maths is letters and symbols)."""
    tokens = text.split()
    prose = sum(bool(_PROSE_WORD.match(t)) for t in tokens)
    return len(tokens) >= 3 and prose >= 0.6 * len(tokens) and "(cid:" not in text


def _words_only(text: str) -> bool:
    return all(_PROSE_WORD.match(t) for t in text.split())


def _trim_edges(lines: list[str]) -> list[str]:
    """Drop what is not prose at the top and the bottom of a page (display maths, matrices, stray symbols), up to
    the first line of text. A heading or a short line of words counts as text next to a prose line (a heading
    above it at the top; a paragraph's last line below it at the bottom)."""
    start = 0
    while start < len(lines) and not (
        _is_prose(lines[start])
        or ((_HEADING.match(lines[start]) or _words_only(lines[start]))
            and start + 1 < len(lines) and _is_prose(lines[start + 1]))
    ):
        start += 1
    end = len(lines)
    while end > start and not (
        _is_prose(lines[end - 1])
        or (_words_only(lines[end - 1]) and re.search(r"[.?!:]$", lines[end - 1]) and end - 2 >= start
            and _is_prose(lines[end - 2]))
    ):
        end -= 1
    return lines[start:end]


def _at_edge(box: pymupdf.Rect, height: float) -> bool:
    return box.y1 < _EDGE * height or box.y0 > (1 - _EDGE) * height


def _key(text: str) -> str:
    return re.sub(r"\d+", "#", text.strip().lower())


def page_lines(pdf: pymupdf.Document) -> list[list[str]]:
    """Per page, the lines of running prose (see the module doc)."""
    sizes: Counter = Counter()
    pages = [(page.rect.height, _float_regions(page), _blocks(page, sizes)) for page in pdf]
    body = sizes.most_common(1)[0][0] if sizes else 10.0
    repeats: Counter = Counter()
    for height, _, blocks in pages:
        repeats.update({_key(line.text) for b in blocks for line in b if _at_edge(line.box, height)})
    heads = {k for k, c in repeats.items() if c >= max(2, _REPEATED * len(pages))}
    result = []
    references = False
    for height, regions, blocks in pages:
        lines = []
        caption: _Line | None = None  # the last line of the caption being skipped
        for b in blocks:
            if _CAPTION.match(b[0].text) or (caption and _continues(caption, b[0])):
                caption = b[-1]
                continue
            caption = None
            for line in b:
                centre = pymupdf.Point((line.box.x0 + line.box.x1) / 2, (line.box.y0 + line.box.y1) / 2)
                references = references or bool(_REFERENCES.match(line.text))
                if (_NUMBERS.match(line.text) or (line.size < _SMALL * body and not references)
                        or (_at_edge(line.box, height) and _key(line.text) in heads)
                        or any(r.contains(centre) for r in regions)):
                    continue
                lines.append(line.text)
        result.append(_join_hyphens(_trim_edges(lines)))
    for i in range(len(result) - 1):  # a word hyphenated across the page break belongs to the earlier page
        if result[i] and result[i + 1] and re.search(r"[A-Za-z]-$", result[i][-1]) and re.match(r"[a-z]", result[i + 1][0]):
            first, _, rest = result[i + 1][0].partition(" ")
            result[i][-1] = result[i][-1][:-1] + first
            result[i + 1][0] = rest
    return result


def _join_hyphens(lines: list[str]) -> list[str]:
    out: list[str] = []
    for t in lines:
        if out and re.search(r"[A-Za-z]-$", out[-1]) and re.match(r"[a-z]", t):
            first, _, rest = t.partition(" ")
            out[-1] = out[-1][:-1] + first
            if rest:
                out.append(rest)
        else:
            out.append(t)
    return out


def get_doc_text(pdf_file: str, splitn: bool = True, split_block: bool = True, minlen: int | None = 10) -> list[list[str]]:
    """Drop-in for Nougat's `split_md_to_pages.get_doc_text` (which `renderers.paper.nougat_tools` replaces)."""
    with pymupdf.open(pdf_file, filetype="pdf") as pdf:
        pages = [[t for t in lines if len(t) >= (minlen or 1)] for lines in page_lines(pdf)]
    return [lines if sum(len(t.split()) for t in lines) >= 2 else [BLANK_PAGE] for lines in pages]
