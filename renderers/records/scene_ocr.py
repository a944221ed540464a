"""Scene-text images with word boxes -> `scene_ocr` samples: the image, then its text in reading order.

Input records are one image each: `{"image": path, "words": [{"text", "bbox": [x, y, w, h]}]}`. TextOCR-style
files (`imgs`, `anns`, `imgToAnns` in one big JSON) are converted to such records by `textocr_records`, which the
pipeline runs once at discovery. Illegible words (TextOCR writes them as ".") are left out.
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


def textocr_records(data: dict) -> Iterator[dict]:
    """TextOCR JSON (`imgs`, `anns`, `imgToAnns`) -> one `{"image", "id", "words"}` record per image."""
    imgs, anns, index = data.get("imgs"), data.get("anns"), data.get("imgToAnns")
    if not isinstance(imgs, dict) or not isinstance(anns, dict) or not isinstance(index, dict):
        raise ValueError("not TextOCR-style JSON: needs 'imgs', 'anns' and 'imgToAnns' objects")
    for img_id, info in imgs.items():
        words = []
        for ann_id in index.get(img_id, []):
            a = anns.get(ann_id) or {}
            words.append({"text": a.get("utf8_string", ""), "bbox": a.get("bbox")})
        yield {"image": info.get("file_name"), "id": img_id, "words": words}


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
        text = "\n".join(" ".join(line) for line in lines)
        yield pair_sample("scene_ocr", doc, pos, image, text,
                          {"image_ref": str(rec.get("image")), "words": sum(map(len, lines)), "lines": len(lines)})
