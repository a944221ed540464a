"""An arXiv paper (LaTeX source + PDF) or a plain PDF -> one `doc_ocr` sample per page: page image <-> markdown.

With a source: LaTeXML -> Nougat markdown -> Nougat's `split_markdown` against the PDF's text, and only the pages
whose split score reaches `min_page_score` are kept (the rest are counted, never paired with the wrong text).
Without a source, or when LaTeXML fails, the page text is the PDF's own text layer (`meta.text_from = "pdf"`).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from renderers.paper import floats
from renderers.paper.latexml import (
    LatexmlError,
    LatexmlSettings,
    check_sources,
    html_to_markdown,
    latexml_to_html,
    pick_main_tex,
    prepare_source,
)
from renderers.paper.pdf_pages import (
    PdfLimits,
    open_pdf,
    page_texts,
    page_too_large,
    rasterise,
    text_layer_markdown,
)
from renderers.paper.sandbox import ArchiveLimits, ToolTimeout
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample


@dataclass
class PaperConfig:
    long_side: int = 1024  # raster size of the long side: the high-resolution encoder's input
    image_format: str = "jpg"  # jpg | png
    jpeg_quality: int = 90
    min_page_score: float = 0.75  # Nougat's split confidence a page needs to be kept (its own default)
    min_page_chars: int = 50  # pages with less text are not useful OCR pairs
    scanned_chars_per_page: float = 20.0  # below this average of text-layer characters, the PDF is a scan
    max_pdf_mb: float = 256.0
    max_pages: int = 600
    max_page_pt: float = 5000.0  # either side; A0 is 2384 pt
    latexml_timeout_s: float = 600.0
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
               self.max_archive_mb) <= 0:
            raise ValueError("size, page, time and archive caps must be positive")

    @property
    def pdf_limits(self) -> PdfLimits:
        return PdfLimits(max_mb=self.max_pdf_mb, max_pages=self.max_pages, max_page_pt=self.max_page_pt)

    @property
    def latexml(self) -> LatexmlSettings:
        return LatexmlSettings(
            timeout_s=self.latexml_timeout_s,
            sandbox=self.sandbox,
            archive=ArchiveLimits(max_members=self.max_archive_members, max_bytes=int(self.max_archive_mb * 1024**2)),
        )


def _page_count(path: Path) -> int:
    try:
        with pymupdf.open(path, filetype="pdf") as d:
            return d.page_count
    except (pymupdf.FileDataError, RuntimeError, ValueError):
        return 0


def pick_pdf(tree: Path, name: str) -> Path:
    """The paper's PDF in a source folder that may also hold figure PDFs.

    Named like the folder (or `name`), else named like a `.tex` file, else the one with the most pages.
    """
    pdfs = sorted(p for p in tree.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not pdfs:
        raise Filtered("no PDF next to the source (compile it, or give it as <id>.pdf)")
    tex_stems = {p.stem for p in tree.rglob("*.tex")}
    for wanted in ({name}, tex_stems):
        named = [p for p in pdfs if p.stem in wanted]
        if len(named) == 1:
            return named[0]
    return max(pdfs, key=_page_count)


def split_pages(markdown: str, figures: dict[str, str], pdf: Path, page_texts: list[str]) -> tuple[list[str], dict[int, float]]:
    """Nougat's `split_markdown`: the markdown cut at the PDF's page breaks, with a confidence per page; then the
    tables and figures put back where their captions are printed (see `renderers.paper.floats`)."""
    from renderers.paper.nougat_tools import remove_pretty_linebreaks, split_markdown

    located = floats.locate(figures, page_texts)
    footnotes = {k: v for k, v in figures.items() if floats.caption_of(k, v) is None}
    # with the float records Nougat cuts the captions out of the PDF text it aligns to; it re-inserts footnotes
    result = split_markdown(markdown, str(pdf), figure_info=located or None, doc_fig=footnotes)
    if result is None:
        raise LatexmlError("Nougat's split found no pages in the PDF")
    pages, meta = result
    for f in located:
        if pages[f["page"]]:  # Nougat's rule: floats only on pages the split kept
            float_md = remove_pretty_linebreaks(figures[f["key"]].strip())
            pages[f["page"]] = floats.place(pages[f["page"]], float_md, f["caption"], page_texts[f["page"]])
    return pages, {int(k): float(v) for k, v in meta["page_scores"].items()}


def _latex_pages(tree: Path, pdf_path: Path, texts: list[str], cfg: PaperConfig, stats: Counter,
                 info: dict) -> tuple[list[str], dict[int, float]] | None:
    """Pages from the LaTeX route, or None (counted, reason in `info`) when LaTeXML or the split fails."""
    main = pick_main_tex(tree, pdf_path.stem, texts[0])
    if main is None:
        stats["no_main_tex"] += 1
        info["latex_error"] = "no .tex file has both \\documentclass and \\begin{document}"
        return None
    check_sources(tree, main.parent)
    info["main_tex"] = str(main.relative_to(tree))
    try:
        start = time.monotonic()
        html = latexml_to_html(main, tree, cfg.latexml)
        info["latexml_s"] = round(time.monotonic() - start, 1)
        markdown, figures = html_to_markdown(html)
        return split_pages(markdown, figures, pdf_path, texts)
    except ToolTimeout as e:
        stats["latexml_timeout"] += 1
        info["latex_error"] = str(e)
    except LatexmlError as e:
        stats["latexml_failed"] += 1
        info["latex_error"] = str(e)[:500]
    except (ValueError, IndexError, ZeroDivisionError) as e:  # Nougat's split on a document it cannot align
        stats["split_failed"] += 1
        info["latex_error"] = f"split_markdown: {type(e).__name__}: {e}"[:500]
    return None


def render(doc: DocInput, cfg: PaperConfig, stats: Counter, source: str) -> Iterator[Sample]:
    with tempfile.TemporaryDirectory(prefix="vlcorpus-paper-") as tmp:
        src = doc.related.get("source")
        tree = prepare_source(Path(src), Path(tmp), cfg.latexml.archive) if src else None
        if doc.related.get("pdf"):
            pdf_path = Path(doc.related["pdf"])
        elif tree is not None:
            pdf_path = pick_pdf(tree, Path(doc.doc).name)
        else:
            raise Filtered("no PDF given")
        pdf = open_pdf(pdf_path, cfg.pdf_limits)
        try:
            yield from _render_pdf(doc, pdf, pdf_path, tree, cfg, stats, source)
        finally:
            pdf.close()


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
    latex = _latex_pages(tree, pdf_path, texts, cfg, stats, info) if tree is not None else None
    if latex is not None:
        pages, scores = latex
        text_from = "latex"
    else:
        by_page = text_layer_markdown(pdf, usable)
        pages, scores, text_from = [by_page.get(i, "") for i in range(pdf.page_count)], {}, "pdf"
    stats[f"text_from_{text_from}"] += 1
    for i in usable:
        text = pages[i].strip() if i < len(pages) else ""
        if text_from == "latex" and scores.get(i, 0.0) < cfg.min_page_score:
            stats["page_low_confidence"] += 1
            continue
        if len("".join(text.split())) < cfg.min_page_chars:
            stats["page_too_little_text"] += 1
            continue
        page = pdf[i]
        image, (w, h) = rasterise(page, cfg.long_side, cfg.image_format, cfg.jpeg_quality)
        name = f"0.{cfg.image_format}"
        meta = {"text_from": text_from, "page_count": pdf.page_count, "pdf": pdf_path.name,
                "page_size_pt": [round(page.rect.width, 1), round(page.rect.height, 1)], "image_size": [w, h], **info}
        if text_from == "latex":
            meta["page_score"] = round(scores[i], 3)
        stats["pages"] += 1
        yield Sample(category="doc_ocr", source=source, doc=doc.doc, part=i, origin=doc.origin,
                     segments=[{"image": name}, {"text": text}], images={name: image}, meta=meta)


def render_arxiv(doc: DocInput, cfg: PaperConfig, stats: Counter) -> Iterator[Sample]:
    return render(doc, cfg, stats, "arxiv")


def render_pdf(doc: DocInput, cfg: PaperConfig, stats: Counter) -> Iterator[Sample]:
    return render(doc, cfg, stats, "pdf")
