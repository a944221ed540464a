"""Scene-text images with word boxes -> `scene_ocr` samples: the image, then its text in reading order.

Input records are one image each: `{"image": path, "words": [{"text", "bbox": [x, y, w, h]}]}`. TextOCR's files
(`imgs`, `anns`, `imgToAnns` in one big JSON) arrive as such records: discovery streams `imgs` into pieces and
`anns` into a lookup, and the reader joins them piece by piece. Illegible words (TextOCR writes them as ".") are
left out. Counted per image: `records`, `imported`, and a reason for each one dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from renderers.images import ImageLimits, image_or_count
from renderers.records.caption import image_root, pair_sample
from renderers.records.reader import read_records
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample

ILLEGIBLE = "."


@dataclass
class SceneOcrConfig:
    image_root: str = ""
    min_words: int = 1
    limits: ImageLimits = field(default_factory=ImageLimits)


def reading_order(words: list[dict]) -> list[list[str]]:
    """Lines of words, top to bottom, each left to right: a word joins the current line when its vertical
    centre lies within the line's height band."""
    boxes = []
    for w in words:
        text, bbox = w.get("text"), w.get("bbox")
        if not isinstance(text, str) or not text.strip() or text.strip() == ILLEGIBLE:
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            continue
        x, y, bw, bh = bbox
        boxes.append((y + bh / 2, x, max(bh, 1e-6), text.strip()))
    boxes.sort()
    lines: list[tuple[float, float, list[tuple[float, str]]]] = []
    for cy, x, h, text in boxes:
        if lines and abs(cy - lines[-1][0]) <= max(h, lines[-1][1]) / 2:
            lines[-1][2].append((x, text))
        else:
            lines.append((cy, h, [(x, text)]))
    return [[t for _, t in sorted(ws)] for _, _, ws in lines]


def render(doc: DocInput, cfg: SceneOcrConfig, stats: Counter) -> Iterator[Sample]:
    stats.setdefault("imported", 0)  # counted in the unit even when nothing comes in
    root = image_root(doc, cfg.image_root)
    for pos, rec in read_records(doc, stats):
        words = rec.get("words")
        lines = reading_order(words) if isinstance(words, list) else []
        if sum(len(line) for line in lines) < cfg.min_words:
            stats["no_legible_words"] += 1
            continue
        image = image_or_count(rec.get("image"), root, cfg.limits, stats)
        if image is None:
            continue
        stats["imported"] += 1
        text = "\n".join(" ".join(line) for line in lines)
        yield pair_sample("scene_ocr", doc, pos, image, text,
                          {"image_ref": str(rec.get("image")), "words": sum(map(len, lines)), "lines": len(lines)})
