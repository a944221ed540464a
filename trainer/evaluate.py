"""Evaluation on a held-out corpus: multiple-choice items from every multimodal category, scored two ways, and
bits per byte on held-out text. Every score comes with its item (or byte) count and a 95% interval.

Items. Each held-out sample with an image and text gives (image, text) pairs: a single-image sample its image and
its text, an interleaved document each image and the text right after it. An item is the image, a question fitting
the category ("Which text is on this page?") and 4 options: the pair's own text and 3 distractors of the same
category, taken first from the same document (an interleaved document's other texts, a paper's or book's other
pages: hard negatives), then from other documents. Options are cut to `max_chars` (their start; for plot code
their end, the plotting cell); options that read the same after the cut are never used together.

Two scorings of the same items:
- `mc_ppl` (DeepSeek-VL §4, multi-choice perplexity): the model sees the image, the question and all options
  lettered A-D, then "Answer:"; the prediction is the letter whose continuation has the lowest perplexity.
- `option` (lm-evaluation-harness's multiple choice): each option is a continuation of the image, in the
  pretraining format (the text right after the image), scored by its summed log-likelihood. `option_acc` picks the
  highest, `option_acc_norm` the highest per character of the option, `option_acc_image` the highest gain from the
  image: log P(option | image) - log P(option | a blank grey image), lm-evaluation-harness's `acc_mutual_info` with
  the image as the context. What an option's words cost whatever the picture (a rare name, a long title) cancels
  out, so this one moves only with what the model reads in the pixels. No question: a pretrained model has never
  seen one between an image and its text.
Chance is 1/4 for all. Intervals: Wilson score intervals for accuracies.

Bits per byte: for every held-out category (text-only ones and, with their images in context, multimodal ones),
the summed negative log-likelihood of the sample texts' target tokens in bits over the UTF-8 bytes those tokens
encode, over samples up to `bpb_bytes` per category; the headline `bpb` is over the text-only categories. The
interval is a percentile bootstrap over samples.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from trainer.data import IGNORE, Encoded, Encoder, collate_rows
from vlcorpus.sample import TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import read_samples, shard_paths

log = logging.getLogger("vlcorpus.trainer")

QUESTIONS = {
    "doc_ocr": "Which text is on this page?",
    "web_code": "Which code drew this image?",
    "caption": "Which caption describes this image?",
    "table_chart": "Which questions and answers are about this chart or table?",
    "scene_ocr": "Which text appears in this image?",
    "interleaved": "Which text goes with this image?",
}
LETTERS = "ABCDEFGHIJ"
HARD_NEGATIVE_CATEGORIES = ("doc_ocr", "interleaved")  # where a document's other parts are the hard negatives
TAIL_CATEGORIES = ("web_code",)  # options keep the end: the plotting cell, after the cells it depends on
Z95 = 1.959963984540054
SCORES = {"mc_ppl": "mc_ppl_acc", "option": "option_acc", "option_norm": "option_acc_norm",
          "option_image": "option_acc_image"}  # what -> reported as
# The reported accuracies, in the order tables and pictures show them, with their names there.
ACCURACIES = (("option_acc", "option scoring: acc"), ("option_acc_norm", "option scoring: acc_norm"),
              ("option_acc_image", "option scoring: gain from the image"), ("mc_ppl_acc", "MC-PPL (lettered options)"))
BLANK_RGB = (128, 128, 128)  # the image of `option_image`'s baseline: one grey, no information


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate` measures. `items` is per multimodal category; `bpb_bytes` per category."""

    items: int = 64
    options: int = 4
    max_chars: int = 200
    bpb_bytes: int = 30_000
    bootstrap: int = 1000
    seed: int = 0
    categories: tuple[str, ...] | None = None  # multimodal categories to build items for (None: every one held out)

    def __post_init__(self) -> None:
        if not 2 <= self.options <= len(LETTERS):
            raise ValueError(f"options: {self.options} must be between 2 and {len(LETTERS)}")
        if self.items < 1 or self.bpb_bytes < 0 or self.max_chars < 1:
            raise ValueError("items and max_chars must be positive, bpb_bytes at least 0")


@dataclass
class Item:
    category: str
    key: str  # the held-out sample the right answer comes from
    image: bytes
    question: str
    options: list[str]
    answer: int
    hard_negatives: int = 0  # distractors from the same document


@dataclass
class EvalSet:
    items: list[Item]
    texts: dict[str, list[Sample]] = field(default_factory=dict)  # category -> samples scored for bits per byte
    left_out: dict[str, str] = field(default_factory=dict)  # held-out category -> why it gives no items


# --- intervals ---------------------------------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (well-behaved near 0, 1 and for small n, unlike k/n ± z·se)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, draws: int, seed: int) -> tuple[float, float]:
    """95% percentile-bootstrap interval of sum(num)/sum(den), resampling the paired entries (samples)."""
    if len(num) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(draws, len(num)))
    ratios = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return (float(lo), float(hi))


# --- building the evaluation set ---------------------------------------------------------------------------------

def _pairs(sample: Sample) -> list[tuple[bytes, str]]:
    """(image, text) pairs of a sample: its only image with all its (non-user) text, or, with several images,
    each image with the text segment right after it."""
    segs = [s for s in sample.segments if s.get("role") != "user" or "image" in s]
    images = [i for i, s in enumerate(segs) if "image" in s]
    if len(images) == 1:
        text = "\n\n".join(s["text"] for s in segs if "text" in s).strip()
        return [(sample.images[segs[images[0]]["image"]], text)] if text else []
    out = []
    for i in images:
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        if nxt is not None and "text" in nxt and nxt["text"].strip():
            out.append((sample.images[segs[i]["image"]], nxt["text"].strip()))
    return out


def read_held_out(folder: str | Path, per_category: int, text_bytes: int) -> dict[str, list[Sample]]:
    """Held-out samples by category: per category folder, samples until `per_category` are read and their text
    holds `text_bytes` bytes (one category per folder, as corpora and mixtures lay them out)."""
    shards = shard_paths(folder)
    if not shards:
        raise ValueError(f"{folder}: no held-out shards found (expected <folder>/<category>/*.tar, e.g. the "
                         "split/heldout folder of `vlcorpus run`)")
    by_folder: dict[str, list] = defaultdict(list)
    for shard in shards:
        by_folder[str(shard).rsplit("/", 1)[0]].append(shard)
    found: dict[str, list[Sample]] = defaultdict(list)
    for paths in by_folder.values():
        nbytes = 0
        for sample in read_samples(paths):
            found[sample.category].append(sample)
            nbytes += len(sample.text.encode("utf-8"))
            if len(found[sample.category]) >= per_category and nbytes >= text_bytes:
                break
    return dict(found)


def build_items(samples: dict[str, list[Sample]], cfg: EvalConfig) -> tuple[list[Item], dict[str, str]]:
    """Up to `cfg.items` items per multimodal category, and the categories left out with why: a category named in
    `cfg.categories` that cannot give an item is an error; without `cfg.categories`, every held-out multimodal
    category that can give items is evaluated and the others are left out."""
    rng = random.Random(cfg.seed)
    wanted = cfg.categories or tuple(sorted(c for c in samples if c not in TEXT_ONLY_CATEGORIES and not c.startswith("sft_")))
    items: list[Item] = []
    left_out: dict[str, str] = {}
    for cat in wanted:
        cut = (lambda t: t[-cfg.max_chars :]) if cat in TAIL_CATEGORIES else (lambda t: t[: cfg.max_chars])
        pairs = [(s, img, cut(text)) for s in samples.get(cat, []) for img, text in _pairs(s)]
        distinct = len({t for _, _, t in pairs})
        if distinct < cfg.options:
            why = (f"{len(samples.get(cat, []))} held-out samples, {distinct} distinct texts with an image, and an "
                   f"item needs {cfg.options}")
            if cfg.categories:
                raise ValueError(f"category {cat} gives no items: {why}. Hold out more of its documents "
                                 "(heldout_fraction), or leave it out of eval_categories")
            left_out[cat] = why
            continue
        by_doc: dict[str, list[int]] = defaultdict(list)
        by_sample: dict[str, list[int]] = defaultdict(list)
        for j, (s, _, _) in enumerate(pairs):
            by_doc[s.doc].append(j)
            by_sample[s.key].append(j)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for j in order[: cfg.items]:
            sample, image, text = pairs[j]
            near = by_sample[sample.key] + (by_doc[sample.doc] if cat in HARD_NEGATIVE_CATEGORIES else [])
            near = [k for k in dict.fromkeys(near) if k != j]
            rng.shuffle(near)
            chosen = _distinct_texts([pairs[k][2] for k in near], {text}, cfg.options - 1)
            hard = len(chosen) if cat in HARD_NEGATIVE_CATEGORIES else 0
            rest = [pairs[k][2] for k in rng.sample(range(len(pairs)), len(pairs))]
            chosen += _distinct_texts(rest, {text, *chosen}, cfg.options - 1 - len(chosen))
            options = chosen + [text]
            rng.shuffle(options)
            items.append(Item(cat, sample.key, image, QUESTIONS.get(cat, QUESTIONS["interleaved"]), options,
                              options.index(text), hard))
    return items, left_out


def _distinct_texts(candidates: list[str], taken: set[str], n: int) -> list[str]:
    out: list[str] = []
    for t in candidates:
        if len(out) == n:
            break
        if t not in taken and t not in out:
            out.append(t)
    return out


def load_eval_set(folder: str | Path, cfg: EvalConfig) -> EvalSet:
    """Items and bits-per-byte samples from a held-out folder; raises ValueError saying what to fix when it cannot
    give what `cfg` asks for. Cheap (no model): call it before training to fail early."""
    samples = read_held_out(folder, per_category=max(4 * cfg.items, 64), text_bytes=cfg.bpb_bytes)
    if cfg.categories:
        missing = [c for c in cfg.categories if c not in samples]
        if missing:
            raise ValueError(f"{folder}: no held-out samples of {', '.join(missing)} (it holds {', '.join(sorted(samples))})")
    texts = {}
    for cat, group in sorted(samples.items()):
        kept, nbytes = [], 0
        for s in group:
            if nbytes >= cfg.bpb_bytes:
                break
            if any("text" in seg for seg in s.segments):
                kept.append(s)
                nbytes += len(s.text.encode("utf-8"))
        texts[cat] = kept
    try:
        items, left_out = build_items(samples, cfg)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    for cat, why in left_out.items():
        log.warning("evaluation leaves out %s: %s (a larger heldout_fraction would hold out more of it)", cat, why)
    if not items and not any(texts.get(c) for c in TEXT_ONLY_CATEGORIES):
        raise ValueError(f"{folder}: nothing to evaluate: no category gives a multiple-choice item "
                         f"({'; '.join(f'{c}: {w}' for c, w in left_out.items()) or 'no multimodal category'}) "
                         "and there is no held-out text for bits per byte")
    return EvalSet(items, texts, left_out)


# --- scoring -----------------------------------------------------------------------------------------------------

def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def _image_features(model, pixel_values: torch.Tensor, high_res_pixel_values: torch.Tensor | None) -> torch.Tensor:
    """The adaptor's output for the images: what fills their placeholder tokens."""
    device = next(model.parameters()).device
    extra = {} if high_res_pixel_values is None else {"high_res_pixel_values": high_res_pixel_values.to(device)}
    with _autocast(device):
        return model.model.get_image_features(pixel_values.to(device), **extra, return_dict=True).pooler_output


@torch.no_grad()
def _forward(model, rows: list[Encoded], pad_id: int, features: torch.Tensor | None = None):
    """Last hidden states (predicting each next token) and the targets they predict; `features` (the rows' image
    features, in order) saves encoding one image again for every row."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_rows([[r] for r in rows], pad_id).items()}
    labels = batch.pop("labels")
    pixels, high_res = batch.pop("pixel_values", None), batch.pop("high_res_pixel_values", None)
    if features is None and pixels is not None:
        features = _image_features(model, pixels, high_res)
    extra = {} if features is None else {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}
    with _autocast(device):
        hidden = model.model(**batch, use_cache=False, **extra).last_hidden_state
    return hidden[:, :-1], labels[:, 1:]


def _log_softmax(model, hidden: torch.Tensor) -> torch.Tensor:
    with _autocast(hidden.device):
        logits = model.lm_head(hidden)
    return torch.log_softmax(logits.float(), dim=-1)


def _summed(model, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed log-likelihood of its target tokens (the LM head runs at target positions only), and count."""
    mask = targets != IGNORE
    logp = _log_softmax(model, hidden[mask]).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    summed = torch.zeros(len(targets), dtype=torch.float64).index_add_(0, mask.nonzero()[:, 0].cpu(), logp.double().cpu())
    return summed, mask.sum(-1).cpu()


def _target_logprobs(model, rows: list[Encoded], pad_id: int,
                     features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _summed(model, *_forward(model, rows, pad_id, features))


def _image_inputs(encoder: Encoder, image: bytes) -> dict:
    px = encoder.proc([Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
    return {"pixel_values": px["pixel_values"], "high_res_pixel_values": px.get("high_res_pixel_values")}


def _row(context: list[int], continuation: list[int]) -> Encoded:
    return Encoded(torch.tensor(context + continuation), torch.tensor([IGNORE] * len(context) + continuation))


def mc_ppl_prompt(item: Item) -> str:
    lettered = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(item.options))
    return f"{item.question}\n{lettered}Answer:"


def _blank_image() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), BLANK_RGB).save(buf, "PNG")  # the processor resizes it: still one grey
    return buf.getvalue()


@torch.no_grad()
def score_item(model, encoder: Encoder, item: Item, blank: torch.Tensor | None = None) -> dict:
    """One forward pass over the item's rows: the lettered prompt (MC-PPL), the options right after the image and,
    for `option_image`, the options right after the blank image (`blank`: its features, computed once per set).

    Each letter is one token with the demo's and most tokenizers: then one row gives all letters' probabilities at
    its last position (a one-token continuation's perplexity is 1/p); otherwise every letter is its own row."""
    ids = encoder.ids
    image = _image_inputs(encoder, item.image)
    features = _image_features(model, image["pixel_values"], image["high_res_pixel_values"])
    if blank is None:
        blank_inputs = _image_inputs(encoder, _blank_image())
        blank = _image_features(model, blank_inputs["pixel_values"], blank_inputs["high_res_pixel_values"])
    head = [ids.bos] + [ids.image] * encoder.n_img
    prompt = head + encoder.text_ids(mc_ppl_prompt(item))
    n = len(item.options)
    letters = [encoder.text_ids(f" {LETTERS[i]}") for i in range(n)]
    one_token = all(len(t) == 1 for t in letters)
    rows = [_row(prompt, letters[0])] if one_token else [_row(prompt, t) for t in letters]
    options = [_row(head, encoder.text_ids(o)) for o in item.options]
    rows += options + options
    k = len(rows) - 2 * n
    hidden, targets = _forward(model, rows, ids.pad, torch.cat([features.repeat(k + n, 1, 1), blank.repeat(n, 1, 1)]))
    if one_token:
        at = len(prompt) - 1  # the position that predicts the letter
        letter_ppl = -_log_softmax(model, hidden[0, at])[[t[0] for t in letters]].cpu()  # log-perplexity
    else:
        summed, count = _summed(model, hidden[:k], targets[:k])
        letter_ppl = -(summed / count)
    option, _ = _summed(model, hidden[k : k + n], targets[k : k + n])
    without, _ = _summed(model, hidden[k + n :], targets[k + n :])
    option_norm = option / torch.tensor([len(o) for o in item.options], dtype=option.dtype)
    return {"mc_ppl": int(letter_ppl.argmin()) == item.answer, "option": int(option.argmax()) == item.answer,
            "option_norm": int(option_norm.argmax()) == item.answer,
            "option_image": int((option - without).argmax()) == item.answer}


def _accuracy(hits: list[bool]) -> dict:
    k, n = sum(hits), len(hits)
    return {"acc": k / n if n else math.nan, "ci": list(wilson(k, n))}


@dataclass(frozen=True)
class Ranks:
    """This process's share of the evaluation: items and text batches `rank::world`, the results gathered over the
    process group. Every rank runs the same number of forward passes (the last one repeated where its share is
    shorter), as FSDP's per-layer all-gathers need."""

    rank: int = 0
    world: int = 1

    def share(self, n: int) -> list[int]:
        """Indices of this rank's units, padded (with its own first one, result discarded) to every rank's count."""
        mine = list(range(self.rank, n, self.world))
        return mine + mine[:1] * (math.ceil(n / self.world) - len(mine)) if mine else [0] * math.ceil(n / self.world)

    def gather(self, values: dict[int, object]) -> dict[int, object]:
        if self.world == 1:
            return values
        every: list = [None] * self.world
        torch.distributed.all_gather_object(every, values)
        return {k: v for part in every for k, v in part.items()}


def multiple_choice(model, encoder: Encoder, items: list[Item], ranks: Ranks = Ranks()) -> dict:
    """Accuracies with Wilson intervals, overall and per category."""
    blank_inputs = _image_inputs(encoder, _blank_image())
    blank = _image_features(model, blank_inputs["pixel_values"], blank_inputs["high_res_pixel_values"])
    mine = {i: score_item(model, encoder, items[i], blank) for i in ranks.share(len(items))}
    scored = ranks.gather({i: r for i, r in mine.items() if i % ranks.world == ranks.rank})
    results = [(item, scored[i]) for i, item in enumerate(items)]
    out: dict = {"items": len(items), "chance": 1 / len(items[0].options) if items else math.nan, "categories": {}}
    groups: dict[str, list] = defaultdict(list)
    for item, r in results:
        groups[item.category].append((item, r))
    for name, group in [("all", results), *sorted(groups.items())]:
        entry = {"items": len(group), "hard_negatives": sum(i.hard_negatives for i, _ in group)}
        for score, name_ in SCORES.items():
            acc = _accuracy([r[score] for _, r in group])
            entry[name_], entry[f"{name_}_ci"] = acc["acc"], acc["ci"]
        if name == "all":
            out.update({k: v for k, v in entry.items() if k != "hard_negatives"})
        else:
            out["categories"][name] = entry
    return out


def _batches(encoded: list[Encoded], tokens: int) -> list[list[int]]:
    """Indices grouped so that a batch's padded size stays near `tokens` (bounded logits memory at any seq_len)."""
    out: list[list[int]] = [[]]
    for i in range(len(encoded)):
        if out[-1] and (len(out[-1]) + 1) * max(len(encoded[j]) for j in out[-1] + [i]) > tokens:
            out.append([])
        out[-1].append(i)
    return out if out[0] else []


@torch.no_grad()
def bits_per_byte(model, encoder: Encoder, samples: list[Sample], batch_tokens: int = 8192, bootstrap: int = 1000,
                  seed: int = 0, ranks: Ranks = Ranks()) -> dict:
    """Summed NLL of every target token, in bits, over the UTF-8 bytes of the text those tokens encode (a sample
    longer than the encoder's seq_len is scored on what it keeps), with a bootstrap interval over samples."""
    encoded = [encoder(s) for s in samples]
    batches = _batches(encoded, batch_tokens)
    scored_by: dict[int, tuple[float, int]] = {}
    for b in ranks.share(len(batches)):
        summed, _ = _target_logprobs(model, [encoded[j] for j in batches[b]], encoder.ids.pad)
        for j, value in zip(batches[b], summed.tolist()):
            scored = [t for t in encoded[j].labels.tolist() if t != IGNORE]
            scored_by[j] = (-value / math.log(2), len(encoder.tok.decode(scored, skip_special_tokens=True).encode("utf-8")))
    mine = {j: v for b in range(ranks.rank, len(batches), ranks.world) for j in batches[b] for v in [scored_by[j]]}
    every = ranks.gather(mine)
    nll = np.array([every[j][0] for j in range(len(samples))])
    nbytes = np.array([every[j][1] for j in range(len(samples))], dtype=float)
    total = nbytes.sum()
    return {"bpb": float(nll.sum() / total) if total else math.nan, "bpb_ci": list(bootstrap_ratio(nll, nbytes, bootstrap, seed)),
            "bpb_samples": len(samples), "bpb_bytes": int(total)}


@contextlib.contextmanager
def _one_thread_on_cpu(model):
    """Evaluation batches are a few short rows: on CPU, intra-op threads cost more in synchronisation than they
    save, and on a loaded machine they collapse (20 caption items: 0.6 s with one thread, 14 s with two, measured
    on the 2-core dev box under load)."""
    if next(model.parameters()).device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_set(model, encoder: Encoder, eval_set: EvalSet, cfg: EvalConfig, ranks: Ranks = Ranks()) -> dict:
    was_training = model.training
    model.eval()
    with _one_thread_on_cpu(model):
        result = multiple_choice(model, encoder, eval_set.items, ranks)
        per_cat = {c: bits_per_byte(model, encoder, s, bootstrap=cfg.bootstrap, seed=cfg.seed, ranks=ranks)
                   for c, s in eval_set.texts.items() if s}
        for cat, bpb in per_cat.items():
            result["categories"].setdefault(cat, {}).update(bpb)
        language = [s for c in TEXT_ONLY_CATEGORIES for s in eval_set.texts.get(c, [])]
        if language:
            result.update(bits_per_byte(model, encoder, language, bootstrap=cfg.bootstrap, seed=cfg.seed, ranks=ranks))
    model.train(was_training)
    result["left_out"] = eval_set.left_out
    return result


def evaluate(model, encoder: Encoder, folder: str | Path, items: int = 64, seed: int = 0, ranks: Ranks = Ranks(),
             **settings) -> dict:
    """Every measure on the held-out `folder` (a corpus or mixture folder); `settings` are other EvalConfig fields.
    With `ranks`, every rank of the process group calls it, scores its share and returns the whole result.

    Flat keys for metrics and curves: `items`, `chance`, `mc_ppl_acc`, `option_acc`, `option_acc_norm` (each with
    `_ci`, a [low, high] 95% interval), `bpb`, `bpb_ci`, `bpb_bytes`; `categories` holds the same per category."""
    cfg = EvalConfig(items=items, seed=seed, **settings)
    return evaluate_set(model, encoder, load_eval_set(folder, cfg), cfg, ranks)
