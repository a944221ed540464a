"""PDF pages with PyMuPDF: open with checks, rasterise at a bounded size, read the text layer.

Untrusted PDFs are checked before any page is drawn: a corrupt or encrypted file, too many pages or too many
bytes stop the document; a page larger than the cap is skipped. The raster's long side is fixed, so memory per
page is bounded whatever the page's size in points.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from renderers.paper.sandbox import open_in_tree
from vlcorpus.document import Filtered


class PdfError(ValueError):
    """A PDF that cannot be read (corrupt, truncated, not a PDF)."""


@dataclass(frozen=True)
class PdfLimits:
    max_mb: float
    max_pages: int
    max_page_pt: float  # either side, in PDF points (1/72 in); A0 is 2384 pt


def open_pdf(path: Path, limits: PdfLimits, in_tree: bool = False) -> pymupdf.Document:
    """Open and check a PDF. Raises PdfError (unreadable) or Filtered (encrypted, too large, too many pages).

    A PDF of a paper's private copy (`in_tree`: shipped or compiled) is opened through a descriptor that followed
    no link (`sandbox.open_in_tree`)."""
    fd = open_in_tree(path) if in_tree else None
    try:
        size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
        if size > limits.max_mb * 1024**2:
            raise Filtered(f"PDF is {size / 1024**2:.0f} MB, more than max_pdf_mb={limits.max_mb:g}")
        pdf = pymupdf.open(f"/proc/self/fd/{fd}" if fd is not None else path, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as e:
        raise PdfError(f"corrupt or unreadable PDF: {e}") from None
    finally:
        if fd is not None:
            os.close(fd)
    if not pdf.is_pdf:  # PyMuPDF also opens HTML, SVG, XPS, EPUB and images, whatever the name says
        pdf.close()
        raise PdfError("not a PDF (no PDF header): a file of another kind named .pdf")
    if pdf.needs_pass:
        pdf.close()
        raise Filtered("encrypted PDF: a password is needed to open it")
    if pdf.page_count == 0:
        pdf.close()
        raise PdfError("corrupt PDF: no pages could be read")
    if pdf.page_count > limits.max_pages:
        n = pdf.page_count
        pdf.close()
        raise Filtered(f"PDF has {n} pages, more than max_pages={limits.max_pages}")
    return pdf


def page_too_large(page: pymupdf.Page, limits: PdfLimits) -> bool:
    return max(page.rect.width, page.rect.height) > limits.max_page_pt


def rasterise(page: pymupdf.Page, long_side: int, fmt: str, jpeg_quality: int) -> tuple[bytes, tuple[int, int]]:
    """The page as JPEG or PNG bytes with its long side `long_side` pixels; and (width, height) in pixels."""
    zoom = long_side / max(page.rect.width, page.rect.height)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
    data = pix.tobytes("jpeg", jpg_quality=jpeg_quality) if fmt == "jpg" else pix.tobytes("png")
    return data, (pix.width, pix.height)


def page_texts(pdf: pymupdf.Document) -> list[str]:
    """The plain text layer of every page (what 'is on the page' for checks and scanned-PDF detection)."""
    return [page.get_text("text") for page in pdf]


def text_layer_markdown(pdf: pymupdf.Document, pages: list[int]) -> dict[int, str]:
    """Markdown of the given pages from the PDF's own text layer (pymupdf4llm), by page index."""
    import pymupdf4llm

    chunks = pymupdf4llm.to_markdown(pdf, pages=pages, page_chunks=True, show_progress=False, use_ocr=False)
    return {c["metadata"]["page_number"] - 1: _PICTURE_TEXT.sub("", c["text"]) for c in chunks}


# pymupdf4llm copies text found inside figures (axis labels, legends) between these markers; the LaTeX route has
# none of it (a figure is image, plus its caption), and its reading order is arbitrary: leave it out.
_PICTURE_TEXT = re.compile(r"<!-- Start of picture text -->\n.*?<!-- End of picture text -->\n", re.S)
