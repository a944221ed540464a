"""`vlcorpus render epub INPUT --out CORPUS`: EPUB 2/3 books -> `doc_ocr` page images with their text.

Each Ray actor keeps one Chromium (renderers.browser.runner.BrowserRunner); a book is read from its zip in memory.
A long book becomes several inputs, one per part (`renderers.browser.epub.book_parts`), with ids `<book>#C<first
chapter's spine index>`: each renders, is bounded and is ledgered on its own, so nothing past a page bound is lost.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job
from renderers.browser import epub
from renderers.browser.runner import BrowserRunner
from vlcorpus.document import Bounds, DocInput, part_id
from vlcorpus.inputs import discover
from vlcorpus.stage import Stage

COMMAND = ("render", "epub")
HELP = "EPUB books -> doc_ocr page images with exactly the text on each page (Chromium, templates)"
CATEGORIES = ("doc_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="epub", render=epub.render, batch_size=1, bounds=Bounds(timeout_s=900, memory_gb=3),
              make_runner=BrowserRunner, merge_shards=True)  # a batch gives one small shard: merged by bytes
PROGRESS_EVERY = 10_000

log = logging.getLogger("vlcorpus.pipelines")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def split_books(books: Iterable[DocInput], cfg: epub.EpubConfig) -> list[DocInput]:
    """One input per part of each book; a book of one part keeps its id, and a book that cannot be read stays one
    input, whose rendering fails with the reason in the ledger."""
    inputs: list[DocInput] = []
    for n, book in enumerate(books, 1):
        try:
            parts = epub.book_parts(book.path, cfg)
        except Exception:  # noqa: BLE001 - any unreadable book: its render says why, in its ledger line
            parts = [(0, 0)]
        if len(parts) == 1:
            inputs.append(book)
        else:
            inputs += [replace(book, doc=part_id(book.doc, start), related={
                "book": book.doc, "chapters": f"{start}:{end}", "book_part": str(k), "book_parts": str(len(parts))})
                for k, (start, end) in enumerate(parts)]
        if n % PROGRESS_EVERY == 0:
            log.info("epub: %d books read, %d parts", n, len(inputs))
    return inputs


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(epub.EpubConfig, args)
    run_job(replace(STAGE, config=cfg), split_books(discover(local_input(args), (".epub",)), cfg), args, reads=".epub")
    return 0
