"""`vlcorpus extract interleaved INPUT --out CORPUS`: the user's own documents -> `interleaved` samples.

HTML pages (with the images saved beside them), WARC files, EPUB books, PDFs and Jupyter notebooks under INPUT, each
a stateless Ray task's document in its worker's bounded child process (`renderers.interleaved`). Before the job, the
HTML pages' `<img>` references are counted across the whole folder (a site), so that an image shown on
`max_repeats` or more pages (a logo) is dropped as `image_repeated` on every one of them. The pages a browser saved
next to a page in `<page>_files/` are part of that page, not documents of their own.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines.job import add_job_arguments, renderer_config, run_job
from renderers.interleaved import html
from renderers.interleaved.config import ExtractConfig
from renderers.interleaved.render import SOURCE, SUFFIXES, input_kind, render
from vlcorpus.document import Bounds, DocInput
from vlcorpus.inputs import REFUSED, discover
from vlcorpus.stage import Stage

COMMAND = ("extract", "interleaved")
HELP = "HTML pages, WARC files, EPUB books, PDFs and notebooks -> interleaved image-text documents"
CATEGORIES = ("interleaved",)  # what it can write: `vlcorpus run` checks mixtures against it
KIND = "interleaved_docs"  # its source kind in `vlcorpus run` (`interleaved` is the MMC4/OBELICS import)
STAGE = Stage(source=SOURCE, render=render, batch_size=8, bounds=Bounds(timeout_s=300, memory_gb=3))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)


def saved_with_page(path: Path) -> bool:
    """A file inside the `<name>_files/` folder a browser saves next to `<name>.html`."""
    return any(d.name.endswith("_files") and any(d.with_name(d.name[:-6] + ext).exists() for ext in (".html", ".htm"))
               for d in path.parents)


def documents(root: Path, cfg: ExtractConfig) -> list[DocInput]:
    """Every input under `root` this extractor reads; pages and notebooks know the root (their images' bound), and
    each page knows which of its images the site repeats."""
    root = root.resolve()
    docs = [d for d in discover(root, tuple(SUFFIXES))
            if d.related.get(REFUSED) or (not saved_with_page(Path(d.path)) and ".ipynb_checkpoints" not in Path(d.origin).parts)]
    pages = [d.path for d in docs if input_kind(d.path) == "html" and not d.related.get(REFUSED)]
    repeats = html.site_repeats(pages, str(root), cfg.rules.max_repeats, int(cfg.max_text_mb * 1024**2))
    out = []
    for d in docs:
        if d.related.get(REFUSED):
            out.append(d)
            continue
        related = {"root": str(root)}
        if d.path in repeats:
            related["repeated"] = "\n".join(sorted(repeats[d.path]))
        out.append(replace(d, related=related))
    return out


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(ExtractConfig, args)
    return run_job(replace(STAGE, config=cfg), documents(args.input, cfg), args)
