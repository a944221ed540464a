"""Caption datasets -> `caption` samples (image, then its caption), one per caption.

Inputs as captioning sets are published: an image folder with a captions JSONL/CSV/JSON (image path + caption;
COCO's `annotations` arrive joined with their `images` table), Parquet with the image bytes or path in a column
(HF `{"bytes", "path"}` structs or plain binary), WebDataset tars (`jpg|png|webp` + `txt` or `json`) and
img2dataset's `files` folders. Every image is checked to decode; a caption that gives no sample is counted once,
by reason (`records` counts the captions read, `imported` those kept).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from renderers.images import (
    BadImage,
    ImageLimits,
    ImageRoots,
    image_or_count,
    read_regular,
)
from renderers.records.reader import first_field, read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample
from vlcorpus.shards import iter_members

_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class CaptionConfig:
    image_root: str = ""  # a folder to look for images first (and that paths may point into); default: the dataset's own layout
    image_fields: list[str] = field(default_factory=lambda: ["image", "jpg", "png", "image_path", "file_name", "filename", "path"])
    text_fields: list[str] = field(default_factory=lambda: ["caption", "text", "txt", "alt", "description", "sentence"])
    min_chars: int = 3
    limits: ImageLimits = field(default_factory=ImageLimits)


def image_root(doc: DocInput, configured: str) -> ImageRoots:
    """Where this piece's image paths are looked up (discovery's `image_roots`, after the folder the user set) and
    what they may not leave (the input root, and the folder the user set)."""
    search = json.loads(doc.related["image_roots"]) if "image_roots" in doc.related else [doc.related.get("image_root", str(Path(doc.path).parent))]
    allowed = [doc.related.get("input_root", search[0])]
    if configured:
        search.insert(0, str(Path(configured).resolve()))
        allowed.append(search[0])
    return ImageRoots(tuple(search), tuple(allowed))


def caption_text(value: object) -> str:
    """A caption from a string, a list of captions (the first), or a JSON object with a caption field."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return value.strip() if isinstance(value, str) else ""


def pair_sample(category: str, doc: DocInput, part: int, image: tuple[str, bytes], text: str, meta: dict) -> Sample:
    ext, data = image
    name = f"0.{ext}"
    return Sample(category=category, source=category, doc=doc.doc, part=part, origin=doc.origin,
                  segments=[{"image": name}, {"text": text}], images={name: data}, meta=meta)


def _folder_members(doc: DocInput, max_bytes: int) -> Iterator[dict]:
    """img2dataset's `files` output, grouped like a tar's members: `<key>.jpg`, `<key>.txt`, `<key>.json`. Only
    regular files inside the input root are read."""
    allowed = (doc.related.get("input_root", doc.path),)
    current: dict = {}
    for name in sorted(os.listdir(doc.path)):
        key, _, suffix = name.partition(".")
        if current and key != current["__key__"]:
            yield current
            current = {}
        current["__key__"] = key
        try:
            current[suffix] = read_regular(Path(doc.path) / name, allowed, max_bytes)
        except BadImage as e:
            current.setdefault("__unreadable__", e.reason)
    if current:
        yield current


def _member_records(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[tuple[int, object, str]]:
    members = _folder_members(doc, cfg.limits.max_bytes) if doc.related.get("format") == "files" else iter_members(doc.path)
    for i, group in enumerate(members):
        stats["records"] += 1
        image = next((group[e] for e in _TAR_IMAGE_EXTS if e in group), None)
        text = caption_text(group.get("txt"))
        if not text and "json" in group:
            try:
                text = caption_text(first_field(json.loads(group["json"]), tuple(cfg.text_fields)))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                stats["bad_json_member"] += 1
                continue
        if image is None:
            stats[group.get("__unreadable__", "image_missing")] += 1
            continue
        yield i, image, text


def _file_records(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[tuple[int, object, str]]:
    for pos, rec in read_records(doc, stats, columns=cfg.image_fields + cfg.text_fields):
        yield pos, first_field(rec, tuple(cfg.image_fields)), caption_text(first_field(rec, tuple(cfg.text_fields)))


def render(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[Sample]:
    stats.setdefault("imported", 0)  # counted in the unit even when nothing comes in
    root = image_root(doc, cfg.image_root)
    records = _member_records if doc.related.get("format") in ("tar", "files") else _file_records
    for pos, ref, text in records(doc, cfg, stats):
        if len(text) < cfg.min_chars:
            stats["no_caption"] += 1
            continue
        image = image_or_count(ref, root, cfg.limits, stats)
        if image is None:
            continue
        stats["imported"] += 1
        yield pair_sample("caption", doc, pos, image, text, {"record": pos})
