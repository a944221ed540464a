"""`vlcorpus render pdf INPUT --out CORPUS`: plain PDFs (reports, e-book PDFs) -> `doc_ocr` page samples whose
text is the PDF's own text layer; scanned PDFs without one are `filtered`."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, renderer_config, run_job
from renderers.paper import arxiv
from vlcorpus.document import Bounds, DocInput
from vlcorpus.inputs import discover
from vlcorpus.stage import Stage

COMMAND = ("render", "pdf")
HELP = "PDF files -> doc_ocr page image/markdown samples from their text layer"
CATEGORIES = ("doc_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="pdf", render=arxiv.render_pdf, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=4))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(arxiv.PaperConfig, args)
    docs = [DocInput(doc=d.doc, origin=d.origin, path=d.path, related={"pdf": d.path}) for d in discover(args.input, (".pdf",))]
    run_job(replace(STAGE, config=cfg), docs, args, reads=".pdf")
    return 0
