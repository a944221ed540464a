"""`vlcorpus import interleaved INPUT --out CORPUS`: MMC4 shards (JSONL, .jsonl.zip, with the images where its
download_images.py puts them) and OBELICS Parquet (with an img2dataset download of its image URLs inside INPUT)
-> interleaved samples, one per document."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job, staging_folder
from pipelines.records import add_record_arguments, record_inputs
from renderers.records import interleaved
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("import", "interleaved")
HELP = "MMC4 shards (JSONL, .jsonl.zip) and OBELICS Parquet (+ img2dataset download of its images) -> interleaved samples"
CATEGORIES = ("interleaved",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="interleaved", render=interleaved.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(interleaved.InterleavedConfig, args)
    stage = replace(STAGE, config=cfg)
    inputs = record_inputs(local_input(args), staging_folder(args, "interleaved"), (".jsonl", ".json", ".parquet"), args.lines_per_doc,
                           int(args.max_record_mb * 1024**2), downloads_index=True)
    return run_job(stage, inputs, args, unit="document")
