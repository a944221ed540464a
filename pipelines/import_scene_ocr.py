"""`vlcorpus import scene_ocr INPUT --out CORPUS`: scene-text images with word boxes -> scene_ocr samples.

TextOCR's JSON files hold every image of a split in one object; discovery streams them once into JSONL pieces of
`--lines-per-doc` images (and a lookup of their words) under `<out>/_staging/scene_ocr/`, so each Ray task reads only
its images. The images are found in `train_images/`, where TextOCR's zip unpacks them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.job import add_job_arguments, local_input, renderer_config, run_job, staging_folder
from pipelines.records import add_record_arguments, record_inputs
from renderers.records import scene_ocr
from vlcorpus.document import Bounds
from vlcorpus.driver import Stage

COMMAND = ("import", "scene_ocr")
HELP = "scene-text images with word/line boxes (TextOCR-style JSON, or JSONL per image) -> scene_ocr samples"
CATEGORIES = ("scene_ocr",)  # what it can write: `vlcorpus run` checks mixtures against it
STAGE = Stage(source="scene_ocr", render=scene_ocr.render, batch_size=4, bounds=Bounds(timeout_s=600, memory_gb=3))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(scene_ocr.SceneOcrConfig, args)
    stage = replace(STAGE, config=cfg)
    inputs = record_inputs(local_input(args), staging_folder(args, "scene_ocr"), (".jsonl", ".json"), args.lines_per_doc,
                           int(args.max_record_mb * 1024**2))
    return run_job(stage, inputs, args, unit="image")
