"""`vlcorpus import caption INPUT --out CORPUS`: image+caption sets (folder + JSONL/CSV, Parquet with image bytes, WebDataset tars) -> caption samples."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, renderer_config, run_job
from pipelines.records import RECORD_SUFFIXES, add_record_arguments, record_inputs
from renderers import caption
from vlcorpus.driver import Stage

COMMAND = ("import", "caption")
HELP = "image+caption sets (folder + JSONL/CSV, Parquet with image bytes, WebDataset tars) -> caption samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=600, doc_memory_gb=4)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(caption.CaptionConfig, args)
    stage = Stage(source="caption", render=caption.render, config=cfg, cpus=1)
    run_job(stage, record_inputs(args.input, args.out / "_staging" / "caption", RECORD_SUFFIXES + (".tar",), args.lines_per_doc), args)
    return 0
