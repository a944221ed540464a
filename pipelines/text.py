"""`vlcorpus import text INPUT --out CORPUS`: text files (.txt, .md) and record files (JSONL `text` field,
Parquet `text` column, split into row-group pieces) -> the `text` category."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, discover, renderer_config, run_job
from pipelines.records import add_record_arguments, record_inputs
from renderers import text
from vlcorpus.driver import Stage

COMMAND = ("import", "text")
HELP = "plain text / markdown files, JSONL and Parquet text records -> text samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=64, doc_timeout=60, doc_memory_gb=2)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(text.TextConfig, args)
    stage = Stage(source="text", render=text.render, config=cfg, cpus=1)
    files = discover(args.input, (".txt", ".md")) if args.input.is_dir() else []
    run_job(stage, files + record_inputs(args.input, args.out / "_staging" / "text", (".jsonl", ".parquet"), args.lines_per_doc), args)
    return 0
