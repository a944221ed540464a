"""`vlcorpus render pdf INPUT --out CORPUS`: plain PDFs (reports, e-book PDFs) -> `doc_ocr` page samples whose
text is the PDF's own text layer; scanned PDFs without one are `filtered`."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers import arxiv
from vlcorpus.driver import DocInput, Stage

COMMAND = ("render", "pdf")
HELP = "PDF files -> doc_ocr page image/markdown samples from their text layer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=600, doc_memory_gb=4)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(arxiv.PaperConfig, args)
    stage = Stage(source="pdf", render=arxiv.render_pdf, config=cfg, cpus=1)
    docs = [DocInput(doc=d.doc, origin=d.origin, path=d.path, related={"pdf": d.path}) for d in discover(args.input, (".pdf",))]
    run_job(stage, docs, args)
    return 0
