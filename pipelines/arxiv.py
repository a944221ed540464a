"""`vlcorpus render arxiv INPUT --out CORPUS`: arXiv papers (LaTeX source + PDF) -> `doc_ocr` page samples.

Discovery: a folder holding a `.tex` with `\\documentclass` is one paper (its PDF is picked among the PDFs inside
it or named like it beside it); elsewhere, source archives (`ID.tar.gz`, `ID.tgz`, `ID.tar`, `ID.gz`) pair with
`ID.pdf` by stem (or by the arXiv id without its version), and a PDF without a source is rendered from its
text layer.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job
from renderers.paper import arxiv
from renderers.paper.sources import ARCHIVE_SUFFIXES
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import Stage

COMMAND = ("render", "arxiv")
HELP = "arXiv papers (LaTeX source + PDF) -> doc_ocr page image/markdown samples"
CATEGORIES = ("doc_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it

STAGE = Stage(source="arxiv", render=arxiv.render_arxiv, batch_size=2, bounds=Bounds(timeout_s=1200, memory_gb=4))

_DOCUMENTCLASS = re.compile(rb"^[^%\n]*\\documentclass", re.M)
_VERSION = re.compile(r"v\d+$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def is_paper_folder(folder: Path) -> bool:
    """A folder with a `.tex` file (directly in it) that starts a LaTeX document."""
    for tex in folder.glob("*.tex"):
        if tex.is_file() and not tex.is_symlink():
            with open(tex, "rb") as f:
                if _DOCUMENTCLASS.search(f.read(256 * 1024)):
                    return True
    return False


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*ARCHIVE_SUFFIXES, ".pdf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_papers(root: Path) -> list[DocInput]:
    root = root.resolve()
    if is_paper_folder(root):
        return [DocInput(doc=root.name, origin=root.name, path=str(root), related={"source": str(root)})]
    docs: list[DocInput] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        entries = sorted(p for p in folder.iterdir() if not p.is_symlink())
        pdfs = {_stem(p): p for p in entries if p.is_file() and p.suffix.lower() == ".pdf"}
        for p in entries:
            rel = p.relative_to(root)
            if p.is_dir():
                if not is_paper_folder(p):
                    folders.append(p)
                    continue
                related = {"source": str(p)}
                if p.name in pdfs:
                    related["pdf"] = str(pdfs.pop(p.name))
                docs.append(DocInput(doc=str(rel), origin=str(rel), path=str(p), related=related))
            elif p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES):
                stem = _stem(p)
                related = {"source": str(p)}
                for key in (stem, _VERSION.sub("", stem)):  # 2401.00001v2.tar.gz also pairs with 2401.00001.pdf
                    if key in pdfs:
                        related["pdf"] = str(pdfs.pop(key))
                        break
                docs.append(DocInput(doc=str(rel.parent / stem), origin=str(rel), path=str(p), related=related))
        for stem, pdf in pdfs.items():
            rel = pdf.relative_to(root)
            docs.append(DocInput(doc=str(rel.parent / stem), origin=str(rel), path=str(pdf), related={"pdf": str(pdf)}))
    return sorted(docs, key=lambda d: d.doc)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(arxiv.PaperConfig, args)
    run_job(replace(STAGE, config=cfg), discover_papers(local_input(args)), args)
    return 0
