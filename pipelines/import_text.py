"""`vlcorpus import text INPUT --out CORPUS`: text files (.txt, .md) and record files (JSONL `text` field,
Parquet `text` column, split into row-group pieces) -> the `text` category."""

from __future__ import annotations

from pipelines.job import Importer
from renderers.records import text
from vlcorpus.document import Bounds
from vlcorpus.stage import Stage

COMMAND = ("import", "text")
HELP = "plain text / markdown files, JSONL and Parquet text records -> text samples"
CATEGORIES = ("text",)  # what it can write: `vlcorpus run` checks mixtures against it
IMPORTER = Importer(
    Stage(source="text", render=text.render, batch_size=64, bounds=Bounds(timeout_s=60, memory_gb=2)),
    config=text.TextConfig, suffixes=(".jsonl", ".parquet"), unit="record", files=(".txt", ".md"),
    reads=".txt, .md, .jsonl, .parquet; .jsonl gzipped or zipped")
add_arguments, main = IMPORTER.add_arguments, IMPORTER.main
