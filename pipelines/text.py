"""`vlcorpus import text INPUT --out CORPUS`: text files (.txt, .md) and record files (JSONL `text` field,
Parquet `text` column, split into row-group pieces) -> the `text` category."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, discover, local_input, renderer_config, run_job, staging_folder
from pipelines.records import add_record_arguments, record_inputs
from renderers.records import text
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("import", "text")
HELP = "plain text / markdown files, JSONL and Parquet text records -> text samples"
CATEGORIES = ("text",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="text", render=text.render, batch_size=64, bounds=Bounds(timeout_s=60, memory_gb=2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(text.TextConfig, args)
    stage = replace(STAGE, config=cfg)
    files = discover(args.input, (".txt", ".md")) if local_input(args).is_dir() else []
    records = record_inputs(local_input(args), staging_folder(args, "text"), (".jsonl", ".parquet"), args.lines_per_doc,
                            int(args.max_record_mb * 1024**2))
    return run_job(stage, files + records, args, unit="record")
