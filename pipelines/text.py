"""`vlcorpus import text INPUT --out CORPUS`: plain-text files (.txt, .md) -> the `text` category."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from renderers import text
from vlcorpus.driver import Stage

COMMAND = ("import", "text")
HELP = "plain text / markdown files -> text samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=64, doc_timeout=60, doc_memory_gb=2)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(text.TextConfig, args)
    stage = Stage(source="text", render=text.render, config=cfg, cpus=1)
    run_job(stage, discover(args.input, (".txt", ".md")), args)
    return 0
