"""`vlcorpus render arxiv INPUT --out CORPUS`: arXiv papers (LaTeX source + PDF) -> `doc_ocr` page samples.

Discovery: a folder holding a `.tex` with `\\documentclass` is one paper (its PDF is picked among the PDFs inside
it or named like it beside it); elsewhere, source archives (`ID.tar.gz`, `ID.tgz`, `ID.tar`, `ID.gz`) pair with
`ID.pdf` by stem (or by the arXiv id without its version), and a PDF without a source is rendered from its
text layer.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import replace
from pathlib import Path

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job
from renderers.paper import arxiv
from renderers.paper.sources import ARCHIVE_SUFFIXES
from vlcorpus import storage
from vlcorpus.document import Bounds, DocInput
from vlcorpus.stage import Stage

COMMAND = ("render", "arxiv")
HELP = "arXiv papers (LaTeX source + PDF) -> doc_ocr page image/markdown samples"
CATEGORIES = ("doc_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it

STAGE = Stage(source="arxiv", render=arxiv.render_arxiv, batch_size=2, bounds=Bounds(timeout_s=1200, memory_gb=4))

_DOCUMENTCLASS = re.compile(rb"^[^%\n]*\\documentclass", re.M)
_VERSION = re.compile(r"v\d+$")
log = logging.getLogger("vlcorpus.pipelines")


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


def discover_store_papers(root: str) -> list[DocInput]:
    """Papers under a store prefix: source archives and PDFs, paired by stem within a folder as on disk; a worker
    stages each one (`driver.staged`). Extracted source folders are not staged (a paper is one archive there)."""
    urls = storage.find(root)
    pdfs = {u[: -len(storage.name(u))] + _stem(Path(storage.name(u))): u for u in urls if u.lower().endswith(".pdf")}
    docs, skipped = [], 0
    for u in urls:
        name = storage.name(u)
        if not name.lower().endswith(ARCHIVE_SUFFIXES):
            skipped += not name.lower().endswith(".pdf")
            continue
        folder, stem = u[: -len(name)], _stem(Path(name))
        related = {"source": u}
        for key in (stem, _VERSION.sub("", stem)):
            if (pdf := pdfs.pop(folder + key, None)) is not None:
                related["pdf"] = pdf
                break
        docs.append(DocInput(doc=(folder + stem)[len(root) + 1:], origin=u[len(root) + 1:], path=u, related=related))
    for key, pdf in pdfs.items():
        docs.append(DocInput(doc=key[len(root) + 1:], origin=pdf[len(root) + 1:], path=pdf, related={"pdf": pdf}))
    if skipped:
        log.warning("%s: %d object(s) neither a source archive nor a PDF were not read (on a store a paper's source "
                    "is one archive, e.g. .tar.gz)", root, skipped)
    return sorted(docs, key=lambda d: d.doc)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(arxiv.PaperConfig, args)
    if storage.is_remote(args.input):
        docs = discover_store_papers(args.input)
    else:
        docs = discover_papers(local_input(args))
    run_job(replace(STAGE, config=cfg), docs, args)
    return 0
