"""Papers for the paper tests: the LaTeX source this repository ships (tests/data/paper/), compiled here, and
PDFs made with PyMuPDF."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pymupdf

DATA = Path(__file__).parent / "data" / "paper"


def compile_paper(folder: Path, tex: str = "paper.tex") -> Path:
    for _ in range(2):  # twice, for the references
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex], cwd=folder, check=True,
                       capture_output=True, timeout=120)
    return folder / tex.replace(".tex", ".pdf")


def make_pdf(path: Path, pages: int = 1, size: tuple[float, float] = (612, 792), text: str | None = "Hello") -> Path:
    doc = pymupdf.open()
    for _ in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        if text:
            page.insert_text((72, 72), text)
    doc.save(path)
    return path
