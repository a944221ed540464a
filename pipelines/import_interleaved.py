"""`vlcorpus import interleaved INPUT --out CORPUS`: MMC4 shards (JSONL, .jsonl.zip, with the images where its
download_images.py puts them) and OBELICS Parquet (with an img2dataset download of its image URLs inside INPUT)
-> interleaved samples, one per document."""

from __future__ import annotations

from pipelines.job import Importer
from renderers.records import interleaved
from vlcorpus.document import Bounds
from vlcorpus.stage import Stage

COMMAND = ("import", "interleaved")
HELP = "MMC4 shards (JSONL, .jsonl.zip) and OBELICS Parquet (+ img2dataset download of its images) -> interleaved samples"
CATEGORIES = ("interleaved",)  # what it can write: `vlcorpus run` checks mixtures against it
IMPORTER = Importer(
    Stage(source="interleaved", render=interleaved.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3)),
    config=interleaved.InterleavedConfig, suffixes=(".jsonl", ".json", ".parquet"), unit="document", downloads_index=True)
add_arguments, main = IMPORTER.add_arguments, IMPORTER.main
