"""Small corpora for the mixer tests: every category, real tiny JPEGs, written with the foundation's writer."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from vlcorpus.sample import CATEGORIES, TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import ShardWriter, write_index

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    im = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def text_of(category: str, i: int, words: int = 12) -> str:
    return f"{category} sample {i}: " + " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))


def make_sample(category: str, source: str, i: int, text: str | None = None, image_seed: int | None = None) -> Sample:
    text = text if text is not None else text_of(category, i)
    sft = category.startswith("sft_")
    segments: list[dict] = []
    images: dict[str, bytes] = {}
    if category not in TEXT_ONLY_CATEGORIES:
        images["0.jpg"] = jpeg(i if image_seed is None else image_seed, (24 + i % 5 * 8, 16 + i % 3 * 8))
        segments.append({"image": "0.jpg"} | ({"role": "user"} if sft else {}))
    if sft:
        segments.append({"text": "Describe it.", "role": "user"})
        segments.append({"text": text, "role": "assistant"})
    else:
        segments.append({"text": text})
    return Sample(category=category, source=source, doc=f"{source}/{category}/{i // 4}", part=i % 4,
                  origin=f"{category}/{i}.txt", segments=segments, images=images,
                  taxonomy=["Recognition", "OCR"] if category == "sft_taxonomy" else None, meta={"n": i})


def write_category(corpus: Path, category: str, samples: list[Sample], per_shard: int = 7) -> None:
    with ShardWriter(corpus / category, f"{samples[0].source}-test", max_samples=per_shard) as w:
        for s in samples:
            w.write(s)
    write_index(corpus / category)


def build_corpus(corpus: Path, per_category: int = 40, categories=CATEGORIES) -> Path:
    for cat in categories:
        write_category(corpus, cat, [make_sample(cat, "synth", i) for i in range(per_category)])
    return corpus
