"""`vlcorpus import caption INPUT --out CORPUS`: caption sets as published (COCO, img2dataset output, HF Parquet,
image folders with JSONL/CSV/JSON captions, WebDataset tars) -> caption samples, one per caption."""

from __future__ import annotations

from pipelines.job import Importer
from renderers.records import caption
from renderers.records.discovery import RECORD_SUFFIXES
from vlcorpus.document import Bounds
from vlcorpus.stage import Stage

COMMAND = ("import", "caption")
HELP = "caption sets (COCO, img2dataset output, HF Parquet, image folder + JSONL/CSV/JSON, WebDataset tars) -> caption samples"
CATEGORIES = ("caption",)  # what it can write: `vlcorpus run` checks mixtures against it
IMPORTER = Importer(
    Stage(source="caption", render=caption.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=4)),
    config=caption.CaptionConfig, suffixes=RECORD_SUFFIXES + (".tar",), unit="caption")
add_arguments, main = IMPORTER.add_arguments, IMPORTER.main
