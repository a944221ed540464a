"""`vlcorpus import interleaved INPUT --out CORPUS`: MMC4-style documents (text_list + image_info) -> interleaved samples."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, renderer_config, run_job
from pipelines.records import add_record_arguments, record_inputs
from renderers import interleaved
from vlcorpus.driver import Stage

COMMAND = ("import", "interleaved")
HELP = "MMC4-style documents (text_list + image_info) -> interleaved samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=600, doc_memory_gb=3)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(interleaved.InterleavedConfig, args)
    stage = Stage(source="interleaved", render=interleaved.render, config=cfg, cpus=1)
    run_job(stage, record_inputs(args.input, args.out / "_staging" / "interleaved", (".jsonl", ".json", ".parquet"), args.lines_per_doc), args)
    return 0
