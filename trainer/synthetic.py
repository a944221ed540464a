"""A small synthetic mixture in the mixer's output layout, for tests, the CPU benchmark and smoke runs.

`<out>/<stage>/<category>/*.tar` written with the project's ShardWriter, plus `<out>/<stage>/mixture.json` in the
mixer's schema (`mixer.schema`, every category realised exactly at its ratio). Images are drawn with PIL (coloured boxes, any aspect ratio), texts
are sentences over a fixed word list, so everything is generated here and carries no licence question.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from mixer.schema import (
    REPEATS,
    SCHEMA,
    Budget,
    CategoryEntry,
    Counts,
    Inputs,
    MixtureJson,
    ShardEntry,
    Shares,
)
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
    text = _sentence(rng, rng.randint(min(5, max_words), max_words))
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


def write_stage(out: Path, stage: str, samples: dict[str, list[Sample]], ratios: dict[str, float],
                shard_samples: int = 6, unit: str = "tokens", seed: int = 0) -> Path:
    """`<out>/<stage>/<category>/*.tar` + `mixture.json` (the mixer's schema) holding the given samples, each
    category realised exactly at its ratio (what a mix without shortfalls records)."""
    written: dict[str, tuple[Counts, list[ShardEntry]]] = {}
    for cat in ratios:
        with ShardWriter(out / stage / cat, f"synthetic-{cat}", max_samples=shard_samples) as w:
            for sample in samples[cat]:
                w.write(sample)
        shards = [ShardEntry(shard=f"{cat}/{i.shard}", stream=0, samples=i.samples, bytes=i.bytes, checksum=i.checksum,
                             text_tokens=i.text_tokens, images=i.images) for i in w.finished]
        counts = Counts(**{k: sum(getattr(e, k) for e in shards) for k in ("samples", "text_tokens", "images", "bytes")})
        written[cat] = counts, shards
    totals = Counts(**{k: sum(getattr(c, k) for c, _ in written.values()) for k in ("samples", "text_tokens", "images", "bytes")})
    ratio_sum = sum(ratios.values())
    categories = {}
    for cat, (counts, shards) in written.items():
        ratio = ratios[cat] / ratio_sum
        share = Shares(text_tokens=counts.text_tokens / max(1, totals.text_tokens), samples=counts.samples / max(1, totals.samples))
        units = counts.text_tokens if unit == "tokens" else counts.samples
        categories[cat] = CategoryEntry(
            requested_ratio=ratio, realised_ratio=ratio, realised=share, deviation_points=0.0, target=units,
            available=counts, unique=counts, written=counts, distinct_samples=counts.samples, copies=1,
            repeat_factor=1.0, sampling_factor=1.0, max_upsample=1.0, on_short="error", short=False, streams=1,
            dropped={}, invalid=0, warnings=[], shards=shards)
    mix = MixtureJson(
        schema=SCHEMA, stage=stage, unit=unit, seed=seed, strict=False, tolerance_points=2.0,
        config={"synthetic": True, "ratios": ratios}, config_hash="synthetic", inputs=Inputs(corpora=[], inputs_hash=""),
        budget=Budget(mode="fixed", requested="synthetic", resolved=totals.text_tokens if unit == "tokens" else totals.samples,
                      limited_by=None, without_limit=None, next_limited_by=None, explained="synthetic mixture"),
        dedup={"exact": False}, repeats=REPEATS, categories=categories, totals=totals, warnings=[])
    (out / stage / "mixture.json").write_text(json.dumps(mix.to_dict(), indent=1))
    return out / stage


def make_mixture(out: str | Path, samples_per_category: int = 24, shard_samples: int = 6, seed: int = 0,
                 stages: dict[str, dict[str, float]] | None = None, max_words: int | dict[str, int] = 60,
                 unit: str = "tokens") -> Path:
    """`max_words` per category (a dict) makes categories of different lengths; the ratios count `unit`."""
    out = Path(out)
    rng = random.Random(seed)
    for stage, ratios in (stages or STAGES).items():
        samples = {}
        for cat in ratios:
            words = max_words[cat] if isinstance(max_words, dict) else max_words
            samples[cat] = [make_sample(cat, i + seed * 100000, rng, words) for i in range(samples_per_category)]
        write_stage(out, stage, samples, ratios, shard_samples, unit, seed)
    return out
