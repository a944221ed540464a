"""MMC4-style documents -> `interleaved` samples: text and images in document order.

A record is `{"text_list": [...], "image_info": [{"image_name" | "base64" | "image", "matched_text_index"}], "url"}`;
each image goes right before the sentence it was matched to. Images that are missing or do not decode are
dropped (counted); a document left without images is skipped (`no_images`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from renderers.images import ImageLimits, image_or_count
from renderers.records.caption import image_root
from renderers.records.reader import first_field, read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample


@dataclass
class InterleavedConfig:
    image_root: str = ""
    max_images: int = 32
    limits: ImageLimits = field(default_factory=ImageLimits)


def render(doc: DocInput, cfg: InterleavedConfig, stats: Counter) -> Iterator[Sample]:
    root = image_root(doc, cfg.image_root)
    for pos, rec in read_records(doc, stats):
        texts, infos = rec.get("text_list"), rec.get("image_info") or []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not isinstance(infos, list):
            stats["bad_record"] += 1
            continue
        by_text: dict[int, list[tuple[str, bytes]]] = {}
        kept = 0
        for info in infos[: cfg.max_images]:
            idx = info.get("matched_text_index") if isinstance(info, dict) else None
            if not isinstance(idx, int) or not 0 <= idx < len(texts):
                stats["image_unplaced"] += 1
                continue
            ref = f"data:image;base64,{info['base64']}" if info.get("base64") else first_field(info, ("image_name", "image"))
            image = image_or_count(ref, root, cfg.limits, stats)
            if image is not None:
                by_text.setdefault(idx, []).append(image)
                kept += 1
        stats["images_over_max"] += max(0, len(infos) - cfg.max_images)
        if not kept:
            stats["no_images"] += 1
            continue
        segments: list[dict[str, str]] = []
        images: dict[str, bytes] = {}
        for i, text in enumerate(texts):
            for ext, data in by_text.get(i, []):
                name = f"{len(images)}.{ext}"
                images[name] = data
                segments.append({"image": name})
            if text.strip():
                segments.append({"text": text.strip()})
        yield Sample(category="interleaved", source="interleaved", doc=doc.doc, part=pos, origin=doc.origin,
                     segments=segments, images=images, meta={"url": str(rec.get("url", "")), "record": pos})
