"""The paper's markdown cut at the PDF's page breaks, each page scored and then checked against its PDF page.

Nougat's `split_markdown` (with our page text and normalisation, see `renderers.paper.nougat_tools`) gives each
page a confidence. A confident split can still be wrong, so each page is also verified: most of its prose words
must be printed on that PDF page (`words_on_page`). A page is kept only when both hold; every other page is
recorded with its numbers.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from renderers.paper import floats

_MATH = re.compile(r"\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_WORD = re.compile(r"[a-z]{4,}")


class SplitError(ValueError):
    """Nougat's split gave no usable page boundaries for this PDF."""


@dataclass
class Split:
    pages: list[str]  # markdown per PDF page ("" where Nougat found no confident split)
    scores: dict[int, float]  # Nougat's confidence per page; pages beyond its split have none


def prose_words(text: str) -> list[str]:
    """Lower-case words of 4+ letters outside maths (maths is typeset, not copied, in a PDF's text)."""
    return _WORD.findall(unicodedata.normalize("NFKC", _MATH.sub(" ", text)).lower())


def words_on_page(page_md: str, page_text: str) -> float:
    """The share of the page markdown's prose words that the PDF page prints (1.0 when it has none)."""
    md = prose_words(page_md)
    if not md:
        return 1.0
    printed = set(_WORD.findall(unicodedata.normalize("NFKC", page_text).lower()))
    return sum(w in printed for w in md) / len(md)


def split_pages(markdown: str, figures: dict[str, str], pdf: Path, page_texts: list[str], min_score: float) -> Split:
    """Nougat's `split_markdown`: the markdown cut at the PDF's page breaks, with a confidence per page; then the
    tables and figures put back where their captions are printed (see `renderers.paper.floats`)."""
    from renderers.paper.nougat_tools import remove_pretty_linebreaks, split_markdown

    located = floats.locate(figures, page_texts)
    footnotes = {k: v for k, v in figures.items() if floats.caption_of(k, v) is None}
    # with the float records Nougat cuts the captions out of the PDF text it aligns to; it re-inserts footnotes
    result = split_markdown(markdown, str(pdf), figure_info=located or None, doc_fig=footnotes, min_score=min_score,
                            staircase=False)
    if result is None:
        raise SplitError("Nougat's split found no pages in the PDF")
    pages, meta = result
    if len(meta["page_splits"]) > len(page_texts) + 1:  # one boundary per page break: more shifts the pages
        raise SplitError(f"Nougat's split gave {len(meta['page_splits'])} boundaries for {len(page_texts)} pages")
    pages += [""] * (len(page_texts) - len(pages))
    scores = {int(k): float(v) for k, v in meta["page_scores"].items()}
    for f in located:
        if scores.get(f["page"], 0.0) >= min_score:  # Nougat's rule: floats only on pages the split kept
            float_md = remove_pretty_linebreaks(figures[f["key"]].strip())
            pages[f["page"]] = floats.place(pages[f["page"]], float_md, f["caption"], page_texts[f["page"]])
    return Split(pages, scores)
