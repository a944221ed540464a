"""`vlcorpus render html INPUT --out CORPUS`: HTML pages -> `doc_ocr` page images + `web_code` screenshot/code pairs.

Each Ray actor keeps one Chromium (renderers.browser.runner.BrowserRunner); the CSS, images and fonts a page loads are
served from the input folder, nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job
from renderers.browser import html
from renderers.browser.runner import BrowserRunner
from vlcorpus.document import Bounds
from vlcorpus.inputs import discover, input_root
from vlcorpus.stage import Stage

COMMAND = ("render", "html")
HELP = "HTML pages -> doc_ocr page images with their text, and web_code screenshot/code pairs (Chromium)"
CATEGORIES = ("doc_ocr", "web_code")  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="html", render=html.render, batch_size=4, bounds=Bounds(timeout_s=120, memory_gb=3),
              make_runner=BrowserRunner, merge_shards=True)  # a batch gives one small shard: merged by bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(html.HtmlConfig, args)
    root = str(input_root(local_input(args)))
    docs = [replace(d, related={"root": root}) for d in discover(args.input, (".html", ".htm", ".xhtml"))]
    run_job(replace(STAGE, config=cfg), docs, args)
    return 0
