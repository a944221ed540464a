"""A small synthetic mixture in the mixer's output layout, for tests, the CPU benchmark and smoke runs.

`<out>/<stage>/<category>/*.tar` written with the project's ShardWriter, plus `<out>/<stage>/mixture.json` with
requested and realised ratios per category. Images are drawn with PIL (coloured boxes, any aspect ratio), texts
are sentences over a fixed word list, so everything is generated here and carries no licence question.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter

WORDS = ("the page shows a chart of values over time with labels axis code plot function data table row column "
         "figure text document image section result model train loss value mean sum print import def return").split()

STAGES = {
    "stage1": {"caption": 0.5, "doc_ocr": 0.5},
    "stage2": {"caption": 0.1, "doc_ocr": 0.1, "web_code": 0.1, "text": 0.7},
    "stage3": {"sft_general": 0.6, "sft_text": 0.4},
}


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _image(rng: random.Random, fmt: str) -> bytes:
    w, h = rng.randint(24, 160), rng.randint(24, 160)
    img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randint(0, w - 2), rng.randint(0, h - 2)
        draw.rectangle([x0, y0, rng.randint(x0 + 1, w), rng.randint(y0 + 1, h)], fill=tuple(rng.randint(0, 255) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if fmt == "jpg" else "PNG")
    return buf.getvalue()


def make_sample(category: str, i: int, rng: random.Random, max_words: int = 60) -> Sample:
    doc = f"synthetic/{category}/{i}"
    common = dict(category=category, source="synthetic", doc=doc, part=0, origin=doc, meta={"synthetic": True})
    text = _sentence(rng, rng.randint(5, max_words))
    if category == "text":
        return Sample(segments=[{"text": text}], **common)
    if category == "sft_text":
        return Sample(segments=[{"role": "user", "text": _sentence(rng, 6)}, {"role": "assistant", "text": text}], **common)
    image = {"0.jpg": _image(rng, "jpg")}
    if category.startswith("sft_"):
        segs = [{"role": "user", "image": "0.jpg"}, {"role": "user", "text": "What is shown?"},
                {"role": "assistant", "text": text}]
        return Sample(segments=segs, images=image, **common)
    return Sample(segments=[{"image": "0.jpg"}, {"text": text}], images=image, **common)


def make_mixture(out: str | Path, samples_per_category: int = 24, shard_samples: int = 6, seed: int = 0,
                 stages: dict[str, dict[str, float]] | None = None, max_words: int = 60) -> Path:
    out = Path(out)
    rng = random.Random(seed)
    for stage, ratios in (stages or STAGES).items():
        cats = {}
        for cat, ratio in ratios.items():
            with ShardWriter(out / stage / cat, f"synthetic-{cat}", max_samples=shard_samples) as w:
                for i in range(samples_per_category):
                    w.write(make_sample(cat, i + seed * 100000, rng, max_words))
            cats[cat] = {"requested_ratio": ratio, "realised_ratio": ratio, "samples": samples_per_category}
        (out / stage / "mixture.json").write_text(json.dumps({"stage": stage, "seed": seed, "categories": cats}, indent=1))
    return out
