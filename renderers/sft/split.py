"""Balancing and the evaluation split of the staged SFT conversations.

`plan` sees one light `Item` per staged sample (no pixels) and decides, per taxonomy leaf:
1. duplicates (same category, images, user text and answer) are dropped;
2. eval: `eval_fraction` of the leaf (at most `eval_max_per_leaf`), drawn with a seeded shuffle among items whose
   images occur nowhere else and whose user text occurs nowhere else; a derived item is eligible through its
   leaf's `eval_prompts` pool instead (its prompt is swapped). So eval never shares an image or prompt with train.
3. train: capped at `max_per_leaf` (seeded down-sampling), and leaves under `target_per_leaf` are up-sampled
   towards it by whole copies, at most `max_upsample` times each item and never past the cap. `Others` is neither evaluated nor up-sampled.
Categories other than `sft_taxonomy` are deduplicated and go to train as they are.
`render` then copies the staged samples a plan selects into the final shards (one staged shard per input).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from renderers.sft.conversations import SftConfig, taxonomy_for, user_text
from renderers.sft.derived import pick
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample
from vlcorpus.shards import read_shard


@dataclass(frozen=True)
class Item:
    key: str
    category: str
    leaf: tuple[str, ...]
    images: tuple[str, ...]  # sha1 of each image's bytes
    prompt: str  # normalised user text
    answer: str  # sha1 of the assistant text
    derived: bool


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def item_of(s: Sample) -> Item:
    answer = "\n".join(x["text"] for x in s.segments if x.get("role") == "assistant" and "text" in x)
    return Item(
        key=s.key, category=s.category, leaf=tuple(s.taxonomy or ()),
        images=tuple(hashlib.sha1(s.images[x["image"]]).hexdigest() for x in s.segments if "image" in x),
        prompt=_norm(user_text(s.segments)), answer=hashlib.sha1(answer.encode()).hexdigest(),
        derived=s.meta.get("label_source") == "derived",
    )


def scan_shard(path: str) -> list[Item]:
    return [item_of(s) for s in read_shard(path)]


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:12], 16))


def plan(items: list[Item], cfg: SftConfig) -> tuple[dict[str, dict], dict]:
    """(assignments key -> {"split", "copies", "eval_prompt"?}, coverage report)."""
    taxonomy = taxonomy_for(cfg.taxonomy)
    unique: dict[tuple, Item] = {}
    duplicates: Counter = Counter()
    for it in sorted(items, key=lambda i: i.key):
        ident = (it.category, it.images, it.prompt, it.answer)
        if ident in unique:
            duplicates[it.leaf if it.category == "sft_taxonomy" else (it.category,)] += 1
        else:
            unique[ident] = it
    kept = list(unique.values())
    image_uses = Counter(h for it in kept for h in set(it.images))
    prompt_uses = Counter(it.prompt for it in kept)
    assign: dict[str, dict] = {}
    rows = []
    by_leaf: dict[tuple[str, ...], list[Item]] = defaultdict(list)
    for it in kept:
        if it.category == "sft_taxonomy":
            by_leaf[it.leaf].append(it)
        else:
            assign[it.key] = {"split": "train", "copies": 1}
    for leaf in [*taxonomy.leaves, (taxonomy.others,)]:
        group = by_leaf.pop(leaf, [])
        rng = _rng(cfg.seed, "/".join(leaf))
        rng.shuffle(group)
        others = leaf == (taxonomy.others,)
        eval_pool = () if others else taxonomy.leaf(leaf).eval_prompts
        n_eval = 0 if others else min(cfg.eval_max_per_leaf, int(len(group) * cfg.eval_fraction))
        eval_items = []
        for it in group:
            if len(eval_items) >= n_eval:
                break
            images_own = all(image_uses[h] == 1 for h in it.images)
            prompt_own = bool(eval_pool) if it.derived else prompt_uses[it.prompt] == 1
            if images_own and prompt_own:
                eval_items.append(it)
        for it in eval_items:
            assign[it.key] = {"split": "eval", "copies": 1}
            if it.derived:
                assign[it.key]["eval_prompt"] = pick(eval_pool, it.key)[1]
        chosen = {it.key for it in eval_items}
        train = [it for it in group if it.key not in chosen]
        capped = max(0, len(train) - cfg.max_per_leaf)
        train = train[: cfg.max_per_leaf]
        total = len(train)
        if train and not others and len(train) < cfg.target_per_leaf:
            total = min(cfg.target_per_leaf, len(train) * cfg.max_upsample, cfg.max_per_leaf)
        for i, it in enumerate(train):
            assign[it.key] = {"split": "train", "copies": total // len(train) + (1 if i < total % len(train) else 0)}
        rows.append({"leaf": list(leaf), "available": len(group), "duplicates": duplicates[leaf], "eval": len(eval_items),
                     "eval_short": n_eval - len(eval_items), "train_unique": len(train), "train_written": total,
                     "capped": capped})
    for leaf, group in by_leaf.items():  # labels of a taxonomy that is not the one in use (own samples)
        rows.append({"leaf": list(leaf), "available": len(group), "duplicates": duplicates[leaf], "eval": 0,
                     "eval_short": 0, "train_unique": len(group), "train_written": len(group), "capped": 0})
        assign.update({it.key: {"split": "train", "copies": 1} for it in group})
    categories = Counter(it.category for it in kept)
    report = {
        "taxonomy": taxonomy.name,
        "leaves": rows,
        "categories": {c: {"available": n, "duplicates": duplicates[(c,)]} for c, n in sorted(categories.items())},
        "totals": {"staged": len(items), "duplicates": sum(duplicates.values()),
                   "train_written": sum(a["copies"] for a in assign.values() if a["split"] == "train"),
                   "eval": sum(1 for a in assign.values() if a["split"] == "eval")},
        "config": {k: getattr(cfg, k) for k in ("eval_fraction", "eval_max_per_leaf", "max_per_leaf",
                                                "target_per_leaf", "max_upsample", "seed", "min_confidence")},
    }
    return assign, report


def coverage_table(report: dict) -> str:
    """The coverage report as a text table (leaves with nothing are listed too: they show the gaps)."""
    lines = [f"{'leaf':<80} {'avail':>6} {'dup':>5} {'eval':>5} {'train':>6} {'written':>7}"]
    for r in report["leaves"]:
        lines.append(f"{' / '.join(r['leaf'])[:80]:<80} {r['available']:>6} {r['duplicates']:>5} {r['eval']:>5} "
                     f"{r['train_unique']:>6} {r['train_written']:>7}")
    for c, r in report["categories"].items():
        lines.append(f"{'[' + c + ']':<80} {r['available']:>6} {r['duplicates']:>5}")
    t = report["totals"]
    lines.append(f"staged {t['staged']}, duplicates {t['duplicates']}, train written {t['train_written']}, eval {t['eval']}")
    return "\n".join(lines)


@dataclass
class SplitConfig:
    plan: str  # the plan JSON written by the build
    split: str  # "train" or "eval"


@lru_cache(maxsize=2)
def _load_plan(path: str) -> dict[str, dict]:
    return json.loads(Path(path).read_text("utf-8"))


def render(doc: DocInput, cfg: SplitConfig, stats: Counter) -> Iterator[Sample]:
    """The planned samples of one staged shard (copies included), re-keyed under this input: `doc` is the shard,
    `part` counts what this split writes from it, `meta.staged_key` names the staged sample."""
    assign = _load_plan(cfg.plan)
    source = "sft" if cfg.split == "train" else "sft_eval"
    part = 0
    for s in read_shard(doc.path):
        a = assign.get(s.key)
        if a is None:
            stats["not_selected"] += 1  # a duplicate, or over the leaf cap
            continue
        if a["split"] != cfg.split:
            continue
        segments = s.segments
        if "eval_prompt" in a:
            i = next(i for i, x in enumerate(segments) if x["role"] == "user" and "text" in x)
            segments = [*segments[:i], {"role": "user", "text": a["eval_prompt"]}, *segments[i + 1 :]]
        for copy in range(a["copies"]):
            stats["upsampled_copies"] += bool(copy)
            meta = {**s.meta, "split": cfg.split, "staged_key": s.key, "copy": copy}
            if "eval_prompt" in a:
                meta["prompt_index"] = None
            yield Sample(category=s.category, source=source, doc=doc.doc, part=part, origin=s.origin,
                         segments=segments, images=s.images, taxonomy=s.taxonomy, meta=meta)
            part += 1
