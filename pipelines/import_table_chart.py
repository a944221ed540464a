"""`vlcorpus import table_chart INPUT --out CORPUS`: chart/table question-answer sets as published (ChartQA and
PlotQA split folders, JSON(L)/Parquet QA records with image paths) -> table_chart samples, one per chart."""

from __future__ import annotations

from pipelines.job import Importer
from renderers.records import table_chart
from vlcorpus.document import Bounds
from vlcorpus.stage import Stage

COMMAND = ("import", "table_chart")
HELP = "chart/table QA sets (ChartQA, PlotQA split folders; QA JSON(L)/Parquet with image paths) -> table_chart samples"
CATEGORIES = ("table_chart",)  # what it can write: `vlcorpus run` checks mixtures against it
IMPORTER = Importer(
    Stage(source="table_chart", render=table_chart.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3)),
    config=table_chart.TableChartConfig, suffixes=(".jsonl", ".json", ".parquet"), unit="question")
add_arguments, main = IMPORTER.add_arguments, IMPORTER.main
