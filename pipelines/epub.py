"""`vlcorpus render epub INPUT --out CORPUS`: EPUB 2/3 books -> `doc_ocr` page images with their text.

Each Ray actor keeps one Chromium (renderers.browser.BrowserRunner); a book is read from its zip in memory.
"""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers import epub
from renderers.browser import BrowserRunner
from vlcorpus.driver import Stage

COMMAND = ("render", "epub")
HELP = "EPUB books -> doc_ocr page images with exactly the text on each page (Chromium, templates)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=1, doc_timeout=900, doc_memory_gb=3)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(epub.EpubConfig, args)
    stage = Stage(source="epub", render=epub.render, config=cfg, cpus=1, make_runner=BrowserRunner, actors=True)
    run_job(stage, discover(args.input, (".epub",)), args)
    return 0
