"""An arXiv paper (LaTeX source + PDF) or a plain PDF -> one `doc_ocr` sample per page: page image <-> markdown.

With a source: bibliography (`bibliography`), LaTeXML -> Nougat markdown (`latexml`), Nougat's split against the
PDF's pages (`align`). A page is paired with its LaTeX markdown when the split's confidence reaches
`min_page_score` and its PDF page prints most of its words (`min_words_on_page`); any other page gets the PDF's own
text layer, with the LaTeX route's numbers for it in `meta.latex_page`. When the whole LaTeX route is lost (no
main file, an unsafe source, LaTeXML failing), every page comes from the text layer and `meta.latex_error` says
why. A source without its PDF is compiled (`compile`). The route and the reason are counted in the ledger.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from renderers.paper.align import Split, SplitError, split_pages, words_on_page
from renderers.paper.bibliography import BibSettings, make_bbl
from renderers.paper.compile import CompileSettings, compile_pdf
from renderers.paper.latexml import (
    LatexmlError,
    LatexmlSettings,
    html_to_markdown,
    latexml_to_html,
)
from renderers.paper.pdf_pages import (
    PdfLimits,
    open_pdf,
    page_texts,
    page_too_large,
    rasterise,
    text_layer_markdown,
)
from renderers.paper.sandbox import ArchiveLimits, ToolTimeout, UnsafeTree
from renderers.paper.sources import (
    MainTexError,
    UnsafeSource,
    check_sources,
    pick_main_tex,
    pick_pdf,
    prepare_source,
)
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample


@dataclass
class PaperConfig:
    long_side: int = 1024  # raster size of the long side: the high-resolution encoder's input
    image_format: str = "jpg"  # jpg | png
    jpeg_quality: int = 90
    min_page_score: float = 0.75  # Nougat's split confidence a page needs to be kept (its own default)
    min_words_on_page: float = 0.8  # share of a LaTeX page's prose words its PDF page must print
    min_page_chars: int = 50  # pages with less text are not useful OCR pairs
    scanned_chars_per_page: float = 20.0  # below this average of text-layer characters, the PDF is a scan
    max_pdf_mb: float = 256.0
    max_pages: int = 600
    max_page_pt: float = 5000.0  # either side; A0 is 2384 pt
    latexml_timeout_s: float = 600.0
    bibtex_timeout_s: float = 60.0
    max_bib_mb: float = 32.0  # .bib files of one paper, together
    compile_timeout_s: float = 300.0  # latexmk, for a source without its PDF
    max_tree_mb: float = 1024.0  # the paper's private copy while a tool runs on it (a TeX \write loop stops here)
    sandbox: bool = True  # run LaTeXML in bubblewrap (no network, no files outside the paper)
    max_archive_members: int = 5000
    max_archive_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.image_format not in ("jpg", "png"):
            raise ValueError("image_format must be jpg or png")
        if not 64 <= self.long_side <= 8192:
            raise ValueError("long_side must be between 64 and 8192 pixels")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be between 1 and 100")
        if min(self.max_pdf_mb, self.max_pages, self.max_page_pt, self.latexml_timeout_s, self.max_archive_members,
               self.max_archive_mb, self.bibtex_timeout_s, self.max_bib_mb, self.compile_timeout_s, self.max_tree_mb) <= 0:
            raise ValueError("size, page, time and archive caps must be positive")
        if not 0 <= self.min_page_score <= 1 or not 0 <= self.min_words_on_page <= 1:
            raise ValueError("min_page_score and min_words_on_page are shares between 0 and 1")

    @property
    def pdf_limits(self) -> PdfLimits:
        return PdfLimits(max_mb=self.max_pdf_mb, max_pages=self.max_pages, max_page_pt=self.max_page_pt)

    @property
    def latexml(self) -> LatexmlSettings:
        return LatexmlSettings(
            timeout_s=self.latexml_timeout_s,
            sandbox=self.sandbox,
            archive=ArchiveLimits(max_members=self.max_archive_members, max_bytes=int(self.max_archive_mb * 1024**2)),
            max_tree_bytes=self.max_tree_bytes,
        )

    @property
    def max_tree_bytes(self) -> int:
        return int(self.max_tree_mb * 1024**2)

    @property
    def bib(self) -> BibSettings:
        return BibSettings(timeout_s=self.bibtex_timeout_s, max_bib_mb=self.max_bib_mb, sandbox=self.sandbox,
                           max_tree_bytes=self.max_tree_bytes)

    @property
    def compile(self) -> CompileSettings:
        return CompileSettings(timeout_s=self.compile_timeout_s, sandbox=self.sandbox, max_tree_bytes=self.max_tree_bytes)


def _latex_split(tree: Path, pdf_path: Path, texts: list[str], cfg: PaperConfig, stats: Counter,
                 info: dict) -> Split | None:
    """The LaTeX route's pages, or None (the reason counted, one of `reports.paper_routes.ROUTE_LOST`; its message in `info`)."""
    try:
        main = pick_main_tex(tree, pdf_path.stem, texts[0])
        if main is None:
            raise LookupError("no .tex file has both \\documentclass and \\begin{document}")
        info["main_tex"] = str(main.relative_to(tree))
        outside = check_sources(tree, main.parent)
        if outside:
            stats["pictures_outside_folder"] += len(outside)
        start = time.monotonic()
        bib = make_bbl(main, tree, cfg.bib, stats)
        info["bibliography"], info["bibtex_s"] = bib.source, round(time.monotonic() - start, 2)
        if bib.error:
            info["bibliography_error"] = bib.error[:300]
        check_sources(tree, main.parent)  # the .bbl bibtex made is TeX input too
        start = time.monotonic()
        html = latexml_to_html(main, tree, cfg.latexml, ("biblatex.sty",) if bib.biblatex else ())
        info["latexml_s"] = round(time.monotonic() - start, 1)
        markdown, figures = html_to_markdown(html, stats, bib.keys)
        return split_pages(markdown, figures, pdf_path, texts, cfg.min_page_score)
    except LookupError as e:
        reason, message = "no_main_tex", str(e)
    except MainTexError as e:
        reason, message = "main_tex_ambiguous", str(e)
    except UnsafeTree:  # a tool planted a link: the paper is refused, not only its LaTeX route
        raise
    except UnsafeSource as e:
        reason, message = "unsafe_source", str(e)
    except ToolTimeout as e:
        reason, message = "latexml_timeout", str(e)
    except LatexmlError as e:
        reason, message = "latexml_failed", str(e)
    except (SplitError, ValueError, IndexError, ZeroDivisionError) as e:  # Nougat's split on what it cannot align
        reason, message = "split_failed", f"{type(e).__name__}: {e}"
    stats[reason] += 1
    info["latex_error"] = message[:500]
    return None


def _find_pdf(doc: DocInput, tree: Path | None, cfg: PaperConfig, stats: Counter) -> Path:
    if doc.related.get("pdf"):
        return Path(doc.related["pdf"])
    if tree is None:
        raise Filtered("no PDF given")
    return pick_pdf(tree, Path(doc.doc).name) or compile_pdf(tree, cfg.compile, stats)


def render(doc: DocInput, cfg: PaperConfig, stats: Counter, source: str) -> Iterator[Sample]:
    with tempfile.TemporaryDirectory(prefix="vlcorpus-paper-") as tmp:
        src = doc.related.get("source")
        tree = prepare_source(Path(src), Path(tmp), cfg.latexml.archive) if src else None
        pdf_path = _find_pdf(doc, tree, cfg, stats)
        pdf = open_pdf(pdf_path, cfg.pdf_limits, in_tree=tree is not None and pdf_path.is_relative_to(tree))
        try:
            yield from _render_pdf(doc, pdf, pdf_path, tree, cfg, stats, source)
        finally:
            pdf.close()


def _page_verdict(i: int, split: Split, texts: list[str], cfg: PaperConfig) -> dict | None:
    """None when LaTeX page `i` is kept; else why not, with its numbers (counted under `reason`)."""
    score = split.scores.get(i)
    if score is None:
        return {"reason": "page_beyond_split"}
    if score < cfg.min_page_score:
        return {"reason": "page_low_confidence", "score": round(score, 3)}
    share = words_on_page(split.pages[i], texts[i])
    if share < cfg.min_words_on_page:
        return {"reason": "page_unverified", "score": round(score, 3), "words_on_page": round(share, 3)}
    return None


def _render_pdf(doc: DocInput, pdf: pymupdf.Document, pdf_path: Path, tree: Path | None, cfg: PaperConfig,
                stats: Counter, source: str) -> Iterator[Sample]:
    texts = page_texts(pdf)
    chars = sum(len("".join(t.split())) for t in texts)
    if chars < cfg.scanned_chars_per_page * pdf.page_count:
        raise Filtered(f"no text layer ({chars} characters on {pdf.page_count} pages): a scanned PDF?")
    usable = [i for i in range(pdf.page_count) if not page_too_large(pdf[i], cfg.pdf_limits)]
    if not usable:
        raise Filtered(f"every page is larger than max_page_pt={cfg.max_page_pt:g} on a side")
    if len(usable) < pdf.page_count:
        stats["page_too_large"] += pdf.page_count - len(usable)
    info: dict = {}
    if stats["pdf_compiled"]:
        info["pdf_compiled"] = True
    split = _latex_split(tree, pdf_path, texts, cfg, stats, info) if tree is not None else None
    stats[f"text_from_{'latex' if split else 'pdf'}"] += 1
    verdicts = {i: _page_verdict(i, split, texts, cfg) for i in usable} if split else {i: {} for i in usable}
    for v in verdicts.values():
        if v:
            stats[v["reason"]] += 1
    from_layer = [i for i, v in verdicts.items() if v is not None]
    by_page = text_layer_markdown(pdf, from_layer) if from_layer else {}
    for i in usable:
        latex = verdicts[i] is None
        text = (split.pages[i] if latex else by_page.get(i, "")).strip()
        if len("".join(text.split())) < cfg.min_page_chars:
            stats["page_too_little_text"] += 1
            continue
        page = pdf[i]
        image, (w, h) = rasterise(page, cfg.long_side, cfg.image_format, cfg.jpeg_quality)
        name = f"0.{cfg.image_format}"
        meta = {"text_from": "latex" if latex else "pdf", "page_count": pdf.page_count, "pdf": pdf_path.name,
                "page_size_pt": [round(page.rect.width, 1), round(page.rect.height, 1)], "image_size": [w, h], **info}
        if latex:
            meta["page_score"] = round(split.scores[i], 3)
        elif split:
            meta["latex_page"] = verdicts[i]
            stats["pages_from_text_layer"] += 1
        stats["pages"] += 1
        yield Sample(category="doc_ocr", source=source, doc=doc.doc, part=i, origin=doc.origin,
                     segments=[{"image": name}, {"text": text}], images={name: image}, meta=meta)


def render_arxiv(doc: DocInput, cfg: PaperConfig, stats: Counter) -> Iterator[Sample]:
    return render(doc, cfg, stats, "arxiv")


def render_pdf(doc: DocInput, cfg: PaperConfig, stats: Counter) -> Iterator[Sample]:
    return render(doc, cfg, stats, "pdf")
