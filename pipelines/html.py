"""`vlcorpus render html INPUT --out CORPUS`: HTML pages -> `doc_ocr` page images + `web_code` screenshot/code pairs.

Each Ray actor keeps one Chromium (renderers.browser.BrowserRunner); the CSS, images and fonts a page loads are
served from the input folder, nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers import html
from renderers.browser import BrowserRunner
from vlcorpus.driver import Stage

COMMAND = ("render", "html")
HELP = "HTML pages -> doc_ocr page images with their text, and web_code screenshot/code pairs (Chromium)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=120, doc_memory_gb=3)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(html.HtmlConfig, args)
    root = str(args.input.resolve())
    docs = [replace(d, related={"root": root}) for d in discover(args.input, (".html", ".htm", ".xhtml"))]
    stage = Stage(source="html", render=html.render, config=cfg, cpus=1, make_runner=BrowserRunner, actors=True)
    run_job(stage, docs, args)
    return 0
