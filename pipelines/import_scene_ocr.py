"""`vlcorpus import scene_ocr INPUT --out CORPUS`: scene-text images with word boxes -> scene_ocr samples.

TextOCR-style JSON files hold every image of a split in one object; they are converted once, here, into JSONL
pieces of `--lines-per-doc` images under `<out>/_staging/scene_ocr/`, so each Ray task reads only its images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from pipelines.job import add_job_arguments, renderer_config, run_job
from pipelines.records import add_record_arguments, record_inputs
from renderers import scene_ocr
from vlcorpus.driver import DocInput, Stage
from vlcorpus.shards import atomic_write_bytes

COMMAND = ("import", "scene_ocr")
HELP = "scene-text images with word/line boxes (TextOCR-style JSON, or JSONL per image) -> scene_ocr samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, batch_size=4, doc_timeout=600, doc_memory_gb=3)
    add_record_arguments(p)


def split_textocr(path: Path, rel: str, staging: Path, per_piece: int) -> list[DocInput]:
    """Write the images of one TextOCR JSON as JSONL pieces; one DocInput per piece, ids `<rel>#img<first>`."""
    records = list(scene_ocr.textocr_records(json.loads(path.read_bytes())))
    folder = staging / hashlib.sha1(rel.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for first in range(0, len(records), per_piece):
        piece = folder / f"{first:08d}.jsonl"
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[first : first + per_piece]).encode()
        atomic_write_bytes(piece, data)
        inputs.append(DocInput(doc=f"{rel}#img{first}", origin=rel, path=str(piece), related={
            "format": "jsonl", "start": "0", "end": str(len(data)), "first_line": str(first), "image_root": str(path.parent)}))
    return inputs


def discover(input_path: Path, out: Path, per_piece: int) -> list[DocInput]:
    inputs = []
    for d in record_inputs(input_path, (".jsonl", ".json"), per_piece):
        if d.related["format"] == "json":
            inputs.extend(split_textocr(Path(d.path), d.origin, out / "_staging" / "scene_ocr", per_piece))
        else:
            inputs.append(d)
    return inputs


def main(args: argparse.Namespace) -> int:
    cfg = renderer_config(scene_ocr.SceneOcrConfig, args)
    stage = Stage(source="scene_ocr", render=scene_ocr.render, config=cfg, cpus=1)
    run_job(stage, discover(args.input, args.out, args.lines_per_doc), args)
    return 0
