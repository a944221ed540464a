"""Evaluation as the paper does it: multi-choice perplexity and text bits-per-byte, on held-out corpus samples.

Multi-choice items are built from held-out image+text samples: the image (and a question fitting its category,
e.g. "which text is on this page?" for doc_ocr, "which code drew this plot?" for web_code) is the context, the
options are the sample's own text and the texts of other samples of its category. Each option is scored by the
summed log-likelihood of its tokens; `acc` picks the highest, `acc_norm` the highest per character of the
option, as lm-evaluation-harness does. Bits per byte: summed negative log-likelihood of held-out text-only
samples, in bits, over their UTF-8 bytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from trainer.data import IGNORE, Encoded, Encoder, collate_rows
from vlcorpus.sample import TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import read_samples, shard_paths

QUESTIONS = {
    "doc_ocr": "Which text is on this page?",
    "web_code": "Which code drew this image?",
    "caption": "Which caption describes this image?",
    "table_chart": "Which text describes this chart or table?",
    "scene_ocr": "Which text appears in this image?",
    "interleaved": "Which text goes with this image?",
}


@dataclass
class Item:
    category: str
    image: bytes
    question: str
    options: list[str]
    answer: int


def _image_and_text(sample: Sample) -> tuple[bytes, str] | None:
    images = [s["image"] for s in sample.segments if "image" in s]
    text = " ".join(s["text"] for s in sample.segments if "text" in s and s.get("role") != "user").strip()
    if len(images) != 1 or not text:
        return None
    return sample.images[images[0]], text


def held_out_samples(folder: str | Path, per_category: int) -> dict[str, list[Sample]]:
    """Up to `per_category` samples of each category found under `folder` (a corpus or a mixture)."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for shard in shard_paths(folder):
        by_folder[shard.parent].append(shard)
    found: dict[str, list[Sample]] = defaultdict(list)
    for shards in by_folder.values():  # one category per folder: stop reading it once enough samples are in
        for sample in read_samples(shards):
            found[sample.category].append(sample)
            if len(found[sample.category]) >= per_category:
                break
    return found


def build_items(samples: dict[str, list[Sample]], n: int, options: int = 4, max_chars: int = 200,
                seed: int = 0) -> list[Item]:
    """Up to `n` items spread over the multimodal categories, distractors drawn from the same category."""
    rng = random.Random(seed)
    pools = {}
    for cat, group in sorted(samples.items()):
        if cat in TEXT_ONLY_CATEGORIES:
            continue
        pairs = [p for p in map(_image_and_text, group) if p is not None]
        pairs = [(img, text[:max_chars]) for img, text in pairs]
        if len({t for _, t in pairs}) >= options:
            pools[cat] = pairs
    items: list[Item] = []
    for cat, pairs in pools.items():
        for i, (img, text) in enumerate(pairs[: max(1, n // len(pools))]):
            others = list(dict.fromkeys(t for j, (_, t) in enumerate(pairs) if j != i and t != text))
            opts = rng.sample(others, options - 1) + [text]
            rng.shuffle(opts)
            items.append(Item(cat, img, QUESTIONS.get(cat, "Which text goes with this image?"), opts, opts.index(text)))
    return items[:n]


def _autocast(model):
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def _sum_logprobs(model, rows: list[Encoded], pad_id: int) -> torch.Tensor:
    """Summed log-likelihood of each row's labelled tokens (one packed-free row per sample)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_rows([[r] for r in rows], pad_id).items()}
    labels = batch.pop("labels")
    with _autocast(model):
        logits = model(**batch, use_cache=False).logits.float()
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets != IGNORE)).sum(-1).cpu()


def score_item(model, encoder: Encoder, item: Item) -> list[float]:
    ids = encoder.ids
    image = Image.open(io.BytesIO(item.image)).convert("RGB")
    px = encoder.proc([image], return_tensors="pt")
    context = [ids.bos] + [ids.image] * encoder.n_img + encoder.text_ids(item.question + "\n")
    rows = []
    for option in item.options:
        cont = encoder.text_ids(option)
        rows.append(Encoded(torch.tensor(context + cont), torch.tensor([IGNORE] * len(context) + cont),
                            px["pixel_values"], px.get("high_res_pixel_values")))
    return _sum_logprobs(model, rows, ids.pad).tolist()


def multiple_choice(model, encoder: Encoder, items: list[Item]) -> dict:
    correct = correct_norm = 0
    for item in items:
        scores = score_item(model, encoder, item)
        norm = [s / len(o) for s, o in zip(scores, item.options)]
        correct += max(range(len(scores)), key=scores.__getitem__) == item.answer
        correct_norm += max(range(len(norm)), key=norm.__getitem__) == item.answer
    n = len(items)
    return {"mc_items": n, "mc_acc": correct / n if n else math.nan, "mc_acc_norm": correct_norm / n if n else math.nan,
            "mc_chance": 1 / len(items[0].options) if n else math.nan}


def bits_per_byte(model, encoder: Encoder, samples: list[Sample], batch_size: int = 4) -> dict:
    """Summed NLL of every target token, in bits, over the UTF-8 bytes of the text those tokens encode."""
    nll = 0.0
    nbytes = 0
    encoded = [encoder(s) for s in samples]
    for i in range(0, len(encoded), batch_size):
        nll -= float(_sum_logprobs(model, encoded[i : i + batch_size], encoder.ids.pad).sum())
    for row in encoded:  # the bytes of what was scored: a sample longer than seq_len is truncated
        scored = [t for t in row.labels.tolist() if t != IGNORE]
        nbytes += len(encoder.tok.decode(scored, skip_special_tokens=True).encode("utf-8"))
    return {"bpb_samples": len(samples), "bpb": nll / math.log(2) / nbytes if nbytes else math.nan}


def evaluate(model, encoder: Encoder, folder: str | Path, items: int = 64, seed: int = 0) -> dict:
    """Both measures on the held-out `folder`; the text part uses text-only samples without roles."""
    was_training = model.training
    model.eval()
    samples = held_out_samples(folder, per_category=max(items, 8))
    mc = build_items(samples, items, seed=seed)
    texts = [s for c in TEXT_ONLY_CATEGORIES for s in samples.get(c, []) if "role" not in s.segments[0]][:items]
    result = {**multiple_choice(model, encoder, mc), **bits_per_byte(model, encoder, texts)}
    model.train(was_training)
    return result
