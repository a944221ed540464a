"""`vlcorpus import table_chart INPUT --out CORPUS`: chart/table question-answer sets as published (ChartQA and
PlotQA split folders, JSON(L)/Parquet QA records with image paths) -> table_chart samples, one per chart."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job, staging_folder
from pipelines.records import add_record_arguments, record_inputs
from renderers.records import table_chart
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("import", "table_chart")
HELP = "chart/table QA sets (ChartQA, PlotQA split folders; QA JSON(L)/Parquet with image paths) -> table_chart samples"
CATEGORIES = ("table_chart",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="table_chart", render=table_chart.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(table_chart.TableChartConfig, args)
    stage = replace(STAGE, config=cfg)
    inputs = record_inputs(local_input(args), staging_folder(args, "table_chart"), (".jsonl", ".json", ".parquet"), args.lines_per_doc,
                           int(args.max_record_mb * 1024**2))
    return run_job(stage, inputs, args, unit="question")
