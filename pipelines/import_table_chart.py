"""`vlcorpus import table_chart INPUT --out CORPUS`: chart/table question-answer JSON(L) with image paths -> table_chart samples."""

from __future__ import annotations

import argparse

from pipelines.job import add_job_arguments, renderer_config, run_job
from pipelines.records import add_record_arguments, record_inputs
from renderers import table_chart
from vlcorpus.driver import Stage

COMMAND = ("import", "table_chart")
HELP = "chart/table question-answer JSON(L) with image paths -> table_chart samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=600, doc_memory_gb=3)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(table_chart.TableChartConfig, args)
    stage = Stage(source="table_chart", render=table_chart.render, config=cfg, cpus=1)
    run_job(stage, record_inputs(args.input, args.out / "_staging" / "table_chart", (".jsonl", ".json", ".parquet"), args.lines_per_doc), args)
    return 0
