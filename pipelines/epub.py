"""`vlcorpus render epub INPUT --out CORPUS`: EPUB 2/3 books -> `doc_ocr` page images with their text.

Each Ray actor keeps one Chromium (pipelines.browser_runner.BrowserRunner); a book is read from its zip in memory.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.browser_runner import BrowserRunner
from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers.browser import epub
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("render", "epub")
HELP = "EPUB books -> doc_ocr page images with exactly the text on each page (Chromium, templates)"
STAGE = Stage(source="epub", render=epub.render, batch_size=1, bounds=Bounds(timeout_s=900, memory_gb=3),
              make_runner=BrowserRunner)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(epub.EpubConfig, args)
    run_job(replace(STAGE, config=cfg), discover(args.input, (".epub",)), args)
    return 0
