"""Caption datasets -> `caption` samples (image, then its caption).

Inputs as captioning sets are published: an image folder with a captions JSONL/CSV/JSON (image path + caption),
Parquet with the image bytes in a column (HF `{"bytes", "path"}` structs or plain binary), and WebDataset tars
(`jpg|png|webp` + `txt` or `json`). Every image is checked to decode; what is skipped is counted by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from renderers.images import ImageLimits, image_or_count
from renderers.records.reader import first_field, read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample
from vlcorpus.shards import iter_members

_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class CaptionConfig:
    image_root: str = ""  # where image paths point; default: the folder of the captions file
    image_fields: list[str] = field(default_factory=lambda: ["image", "jpg", "png", "image_path", "file_name", "filename", "path"])
    text_fields: list[str] = field(default_factory=lambda: ["caption", "text", "txt", "alt", "description", "sentence"])
    min_chars: int = 3
    limits: ImageLimits = field(default_factory=ImageLimits)


def image_root(doc: DocInput, configured: str) -> Path:
    return Path(configured) if configured else Path(doc.related.get("image_root", Path(doc.path).parent))


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


def _tar_records(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[tuple[int, object, str]]:
    for i, members in enumerate(iter_members(doc.path)):
        image = next((members[e] for e in _TAR_IMAGE_EXTS if e in members), None)
        text = caption_text(members.get("txt"))
        if not text and "json" in members:
            try:
                text = caption_text(first_field(json.loads(members["json"]), tuple(cfg.text_fields)))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                stats["bad_json_member"] += 1
        if image is None:
            stats["image_missing"] += 1
            continue
        yield i, image, text


def _file_records(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[tuple[int, object, str]]:
    for pos, rec in read_records(doc, stats, columns=cfg.image_fields + cfg.text_fields):
        yield pos, first_field(rec, tuple(cfg.image_fields)), caption_text(first_field(rec, tuple(cfg.text_fields)))


def render(doc: DocInput, cfg: CaptionConfig, stats: Counter) -> Iterator[Sample]:
    root = image_root(doc, cfg.image_root)
    records = _tar_records if doc.related.get("format") == "tar" else _file_records
    for pos, ref, text in records(doc, cfg, stats):
        if len(text) < cfg.min_chars:
            stats["no_caption"] += 1
            continue
        image = image_or_count(ref, root, cfg.limits, stats)
        if image is None:
            continue
        yield pair_sample("caption", doc, pos, image, text, {"record": pos})
