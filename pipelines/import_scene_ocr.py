"""`vlcorpus import scene_ocr INPUT --out CORPUS`: scene-text images with word boxes -> scene_ocr samples.

TextOCR's JSON files hold every image of a split in one object; discovery streams them once into JSONL pieces of
`--lines-per-doc` images (and a lookup of their words) under `<out>/_staging/scene_ocr/`, so each Ray task reads only
its images. The images are found in `train_images/`, where TextOCR's zip unpacks them.
"""

from __future__ import annotations

from pipelines.job import Importer
from renderers.records import scene_ocr
from vlcorpus.document import Bounds
from vlcorpus.stage import Stage

COMMAND = ("import", "scene_ocr")
HELP = "scene-text images with word/line boxes (TextOCR-style JSON, or JSONL per image) -> scene_ocr samples"
CATEGORIES = ("scene_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it
IMPORTER = Importer(
    Stage(source="scene_ocr", render=scene_ocr.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3)),
    config=scene_ocr.SceneOcrConfig, suffixes=(".jsonl", ".json"), unit="image")
add_arguments, main = IMPORTER.add_arguments, IMPORTER.main
