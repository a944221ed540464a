"""`vlcorpus import caption INPUT --out CORPUS`: caption sets as published (COCO, img2dataset output, HF Parquet,
image folders with JSONL/CSV/JSON captions, WebDataset tars) -> caption samples, one per caption."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job, staging_folder
from pipelines.records import RECORD_SUFFIXES, add_record_arguments, record_inputs
from renderers.records import caption
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("import", "caption")
HELP = "caption sets (COCO, img2dataset output, HF Parquet, image folder + JSONL/CSV/JSON, WebDataset tars) -> caption samples"
CATEGORIES = ("caption",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="caption", render=caption.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=4))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(caption.CaptionConfig, args)
    stage = replace(STAGE, config=cfg)
    inputs = record_inputs(local_input(args), staging_folder(args, "caption"), RECORD_SUFFIXES + (".tar",), args.lines_per_doc,
                           int(args.max_record_mb * 1024**2))
    return run_job(stage, inputs, args, unit="caption")
