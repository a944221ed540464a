"""Interleaved image-text documents -> `interleaved` samples: text and images in document order, one per document.

Two published shapes:
- MMC4: `{"text_list": [...], "image_info": [{"image_name" | "base64" | "image", "matched_text_index", "raw_url"}],
  "url"}`; each image goes right before the sentence it was matched to (images on one sentence keep their
  `image_info` order).
- OBELICS: `{"texts": [...], "images": [...], "general_metadata"}`, one non-null entry per position; the images are
  URLs, read from an img2dataset download of them inside the input (`renderers.records.downloads`), never fetched.
  MMC4's `raw_url` is looked up there too when `image_name` names no file.

Counted per document (the user's unit): `records` read, `imported`, and one reason for each document dropped: the
most common reason its images failed (`image_missing`, `image_remote`, `image_unplaced` for a `matched_text_index`
outside the text...), `no_images` when it has none, `bad_record` when it is neither shape. Images left out of a
document that is kept are counted as `images_skipped`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from renderers.images import BadImage, ImageLimits, ImageRoots, check_image, load_ref
from renderers.records.caption import image_root
from renderers.records.downloads import Downloads
from renderers.records.reader import read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample

Node = tuple[str, object]  # ("text", str) or ("image", [refs to try in order]) or ("unplaced", None)


@dataclass
class InterleavedConfig:
    image_root: str = ""
    max_images: int = 32
    limits: ImageLimits = field(default_factory=ImageLimits)


def mmc4_nodes(rec: dict, max_images: int) -> list[Node] | None:
    texts, infos = rec.get("text_list"), rec.get("image_info") or []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not isinstance(infos, list):
        return None
    before: dict[int, list[Node]] = {}
    nodes: list[Node] = []
    for info in infos[:max_images]:
        info = info if isinstance(info, dict) else {}
        idx = info.get("matched_text_index")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(texts):
            nodes.append(("unplaced", None))
            continue
        refs = [f"data:image;base64,{info['base64']}"] if info.get("base64") else []
        refs += [info[k] for k in ("image_name", "image", "raw_url") if info.get(k)]
        before.setdefault(idx, []).append(("image", refs))
    for i, text in enumerate(texts):
        nodes += before.get(i, [])
        nodes.append(("text", text))
    return nodes


def obelics_nodes(rec: dict) -> list[Node] | None:
    texts, images = rec.get("texts"), rec.get("images")
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        return None
    nodes: list[Node] = []
    for text, image in zip(texts, images):
        if isinstance(image, str) and image:
            nodes.append(("image", [image]))
        elif isinstance(text, str):
            nodes.append(("text", text))
    return nodes


def _image(refs: list, roots: ImageRoots, found: Downloads | None, limits: ImageLimits) -> tuple[str, bytes]:
    """The first of `refs` that gives a checked image; the reason of the first failure otherwise."""
    first: BadImage | None = None
    for ref in refs:
        try:
            data = found.read(ref, limits.max_bytes) if found and isinstance(ref, str) and ref.startswith(("http://", "https://")) else None
            image = check_image(data if data is not None else load_ref(ref, roots, limits.max_bytes), limits)
            return image.ext, image.data
        except BadImage as e:
            first = first or e
    raise first or BadImage("image_missing", "no image reference")


def _url(rec: dict) -> str:
    meta = rec.get("general_metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    return str(rec.get("url") or (meta.get("url") if isinstance(meta, dict) else "") or "")


def render(doc: DocInput, cfg: InterleavedConfig, stats: Counter) -> Iterator[Sample]:
    stats.setdefault("imported", 0)  # counted in the unit even when nothing comes in
    roots = image_root(doc, cfg.image_root)
    found = Downloads(doc.related["downloads"], roots.allowed) if doc.related.get("downloads") else None
    try:
        for pos, rec in read_records(doc, stats):
            nodes = mmc4_nodes(rec, cfg.max_images) if "text_list" in rec else obelics_nodes(rec)
            if nodes is None:
                stats["bad_record"] += 1
                continue
            if "text_list" in rec and len(rec.get("image_info") or []) > cfg.max_images:
                stats["images_over_max"] += len(rec["image_info"]) - cfg.max_images
            segments: list[dict[str, str]] = []
            images: dict[str, bytes] = {}
            failed: Counter = Counter()
            for kind, value in nodes:
                if kind == "text":
                    if value.strip():
                        segments.append({"text": value.strip()})
                    continue
                if kind == "unplaced":
                    failed["image_unplaced"] += 1
                    continue
                try:
                    ext, data = _image(value, roots, found, cfg.limits)
                except BadImage as e:
                    failed[e.reason] += 1
                    continue
                name = f"{len(images)}.{ext}"
                images[name] = data
                segments.append({"image": name})
            if not images:
                stats[failed.most_common(1)[0][0] if failed else "no_images"] += 1
                continue
            if failed:
                stats["images_skipped"] += sum(failed.values())
            stats["imported"] += 1
            yield Sample(category="interleaved", source="interleaved", doc=doc.doc, part=pos, origin=doc.origin,
                         segments=segments, images=images, meta={"url": _url(rec), "record": pos})
    finally:
        if found is not None:
            found.close()
