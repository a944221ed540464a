"""Mixture tars -> training batches: one webdataset stream per category, the sequence budget, the mixture realised in
its unit, modality-grouped steps and packing.

- `read_mixture` reads `<mix>/<stage>/mixture.json` by the mixer's schema (`read_mixture_json`, the one place that
  knows it): the unit (tokens or samples), each category's ratio and its shards with their sample counts.
- `Encoder` turns a sample into token ids and labels in the run's chat format, within the sequence budget: `seq_len`
  counts text tokens and the image placeholders come on top (room for one image); text is cut, an image never.
- `CategoryStream` is a webdataset reader run in DataLoader workers, endless (one reshuffled epoch after another)
  and resumable: it seeks to the shard and member offset a checkpoint's sample count points at.
- `StepBatcher` realises the mixture in its unit: each step's modality and each sample's category are drawn so
  that every category's share of the trained units follows the mixture (deficit draws on what was trained, summed
  over ranks, so every rank picks the same modality), then packs samples into rows whose position ids restart at
  every sample; flash attention gets the rows flattened with explicit `cu_seqlens`.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from mixer.schema import UNITS
from mixer.schema import read_mixture_json as read_mixture_file
from trainer.tokenizer import ChatFormat, special_ids
from vlcorpus import storage
from vlcorpus.config import ConfigError
from vlcorpus.sample import TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import iter_members, shard_under

IGNORE = -100
OVER_BUDGET = "over_seq_budget"  # drop reason: nothing to learn from is left within the sequence budget

log = logging.getLogger("trainer")


# --- the mixture ---------------------------------------------------------------------------------------------------


def read_mixture_json(stage_dir: storage.Location) -> tuple[str, dict[str, dict]]:
    """The unit, and per category its requested and realised ratio and its shards (path, samples), from the mixer's
    `mixture.json` read by the mixer's own schema (`mixer.schema`)."""
    path = storage.join(stage_dir, "mixture.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no mixture.json (build the stage with `vlcorpus mix`)")
    meta = read_mixture_file(path)
    if meta.unit not in UNITS:
        raise ValueError(f"{path}: unit {meta.unit!r} is not one of {', '.join(UNITS)}")
    return meta.unit, {name: {"requested": c.requested_ratio, "ratio": c.realised_ratio,
                              "shards": [(shard_under(stage_dir, s.shard), s.samples) for s in c.shards]}
                       for name, c in meta.categories.items()}


@dataclass
class Mixture:
    root: storage.Location
    unit: str  # tokens (text tokens) | samples: what the ratios count
    ratios: dict[str, float]  # each category's target share of the trained units (realised ratios, normalised)
    requested: dict[str, float]
    shards: dict[str, list[storage.Location]]
    shard_samples: dict[str, list[int]]

    @property
    def language(self) -> list[str]:
        return [c for c in self.shards if c in TEXT_ONLY_CATEGORIES]

    @property
    def multimodal(self) -> list[str]:
        return [c for c in self.shards if c not in TEXT_ONLY_CATEGORIES]

    @property
    def language_share(self) -> float:
        return sum(self.ratios[c] for c in self.language)


def read_mixture(mix: str | Path, stage: str) -> Mixture:
    root = storage.join(storage.location(mix), stage)
    if not storage.is_remote(root) and not root.is_dir():
        raise FileNotFoundError(f"{root}: no such mixture stage folder (expected <mix>/{stage}/mixture.json)")
    unit, cats = read_mixture_json(root)
    cats = {c: v for c, v in cats.items() if v["ratio"] > 0 and v["shards"]}
    total = sum(v["ratio"] for v in cats.values())
    if not cats or total <= 0:
        raise ValueError(f"{root}: no category has a positive ratio and shards")
    present = set(storage.find(root)) if storage.is_remote(root) else None  # one listing, not a HEAD per shard
    missing = [str(p) for v in cats.values() for p, _ in v["shards"]
               if (p not in present if present is not None else not p.exists())]
    if missing:
        raise FileNotFoundError(f"{root}: shards listed in mixture.json are missing: {', '.join(missing[:5])}")
    return Mixture(root, unit, {c: v["ratio"] / total for c, v in cats.items()},
                   {c: v["requested"] for c, v in cats.items()},
                   {c: [p for p, _ in v["shards"]] for c, v in cats.items()},
                   {c: [n for _, n in v["shards"]] for c, v in cats.items()})


# --- one sample: tokens, labels, the sequence budget -----------------------------------------------------------------


@dataclass
class Encoded:
    """One sample as token ids, labels and preprocessed images (in placeholder order)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    high_res_pixel_values: torch.Tensor | None = None
    category: str = ""
    text_tokens: int = 0  # tokens that are not image placeholders (the unit `tokens` counts these)
    cut: int = 0  # tokens left out by the sequence budget

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def n_images(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class OverBudget(ValueError):
    """A sample with nothing left to learn from within the sequence budget (dropped and counted)."""


class Encoder:
    """Sample -> Encoded: the prompt format, the label rule and the sequence budget.

    Pretraining (no roles): `<bos>` + every segment + `<eos>`; all text is a target, image placeholders never.
    Conversation (roles): the chat format's preamble, then per turn (consecutive segments of one role) its header,
    the content and its closer; only assistant content and its closer (and the format's final token after an
    answer) are targets. The first token is never a target, so packed and unpacked samples are supervised alike.
    Text inside a sample never becomes a special token (`split_special_tokens`).

    Sequence budget: at most `seq_len` text tokens and `seq_len + n_img` tokens in all (one image on top of the
    text; further images take their room from the text). A longer sample is cut at the end, before the image block
    that would not fit whole; one left without any target is `OverBudget`.
    """

    def __init__(self, tokenizer, chat: ChatFormat, n_image_tokens: int, image_processor, seq_len: int):
        self.tok, self.chat, self.ids = tokenizer, chat, special_ids(tokenizer)
        self.n_img, self.proc, self.seq_len = n_image_tokens, image_processor, seq_len
        self.max_len = seq_len + n_image_tokens
        self._special = tokenizer.get_added_vocab()

    def text_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def _fixed(self, s: str, target: bool) -> list[tuple]:
        """A header/closer string: one special token where it is one, else text."""
        if not s:
            return []
        return [("id", self._special[s], target)] if s in self._special else [("text", s, target)]

    def _turn(self, role: str, items: list[dict]) -> list[tuple]:
        """One turn as DeepSeek-VL's template renders it: texts joined by a space, the ends stripped."""
        target = role == "assistant"
        out = self._fixed(self.chat.headers[role], False)
        for i, item in enumerate(items):
            if "image" in item:
                out.append(("image", item["image"], False))
                continue
            text = item["text"]
            text = text.lstrip() if i == 0 else text
            text = text.rstrip() if i == len(items) - 1 else text
            out.append(("text", (" " if i and "text" in items[i - 1] else "") + text, target))
        return out + self._fixed(self.chat.closers[role], target)

    def _pieces(self, sample: Sample) -> list[tuple]:
        pieces: list[tuple] = [("id", self.ids.bos, False)]
        if "role" not in sample.segments[0]:
            pieces += [("image", s["image"], False) if "image" in s else ("text", s["text"], True) for s in sample.segments]
            return pieces + [("id", self.ids.eos, True)]
        pieces += self._fixed(self.chat.preamble, False)
        turns: list[tuple[str, list[dict]]] = []
        for seg in sample.segments:
            if turns and turns[-1][0] == seg["role"]:
                turns[-1][1].append(seg)
            else:
                turns.append((seg["role"], [seg]))
        for role, items in turns:
            pieces += self._turn(role, items)
        if turns[-1][0] == "assistant":
            pieces += self._fixed(self.chat.final, True)
        return pieces

    def _tokens(self, pieces: list[tuple]) -> tuple[list[int], list[int], list[str]]:
        """Pieces -> ids and labels. Runs of text are tokenised as one string (as the processor does); a token is a
        target when any of its characters belongs to a target piece."""
        ids: list[int] = []
        labels: list[int] = []
        images: list[str] = []
        i = 0
        while i < len(pieces):
            kind, value, target = pieces[i]
            if kind == "id":
                ids.append(value)
                labels.append(value if target else IGNORE)
                i += 1
            elif kind == "image":
                images.append(value)
                ids += [self.ids.image] * self.n_img
                labels += [IGNORE] * self.n_img
                i += 1
            else:
                text, spans = "", []
                while i < len(pieces) and pieces[i][0] == "text":
                    if pieces[i][2]:
                        spans.append((len(text), len(text) + len(pieces[i][1])))
                    text += pieces[i][1]
                    i += 1
                enc = self.tok(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
                for tid, (a, b) in zip(enc.input_ids, enc.offset_mapping):
                    ids.append(tid)
                    labels.append(tid if any(a < e and s < b for s, e in spans) else IGNORE)
        return ids, labels, images

    def tokens(self, sample: Sample) -> tuple[list[int], list[int], list[str]]:
        return self._tokens(self._pieces(sample))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """A chat prompt (transformers' message format) as training renders it, opened for the answer, one image
        token per image: what `apply_chat_template(..., add_generation_prompt=True)` must give too."""
        pieces: list[tuple] = [("id", self.ids.bos, False), *self._fixed(self.chat.preamble, False)]
        for m in messages:
            content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            pieces += self._turn(m["role"], [{"image": "x"} if c["type"] == "image" else {"text": c["text"]}
                                             for c in content])
        ids, _, _ = self._tokens(pieces + self._fixed(self.chat.prompt, False))
        out, prev = [], None
        for t in ids:  # one image token per image, as the template writes it
            if not (t == self.ids.image and prev == self.ids.image):
                out.append(t)
            prev = t
        return out

    def fit(self, ids: list[int]) -> int:
        """Where the sequence budget cuts: after at most `seq_len` text tokens and `max_len` tokens, never inside
        an image block."""
        is_img = np.asarray(ids) == self.ids.image
        over = (np.cumsum(~is_img) > self.seq_len) | (np.arange(1, len(ids) + 1) > self.max_len)
        if not over.any():
            return len(ids)
        cut = int(over.argmax())
        if is_img[cut]:  # back to the start of its image block (blocks of n_img may follow each other)
            run = cut
            while run > 0 and is_img[run - 1]:
                run -= 1
            cut = run + (cut - run) // self.n_img * self.n_img
        return cut

    def __call__(self, sample: Sample) -> Encoded:
        ids, labels, images = self.tokens(sample)
        cut = self.fit(ids)
        dropped = len(ids) - cut
        ids, labels = ids[:cut], labels[:cut]
        if all(label == IGNORE for label in labels):
            raise OverBudget(f"{sample.key}: no target within {self.seq_len} text + {self.n_img} image tokens")
        kept = ids.count(self.ids.image) // self.n_img
        enc = Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
                      category=sample.category, text_tokens=len(ids) - kept * self.n_img, cut=dropped)
        if kept:
            pil = [Image.open(io.BytesIO(sample.images[name])).convert("RGB") for name in images[:kept]]
            px = self.proc(pil, return_tensors="pt")
            enc.pixel_values = px["pixel_values"]
            enc.high_res_pixel_values = px.get("high_res_pixel_values")
        return enc

    def check_template(self, processor) -> None:
        """The processor's chat template must render a prompt as training does, or a checkpoint would be used at
        inference in a format it was not trained in."""
        probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is shown? "}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "A chart."}]},
                 {"role": "user", "content": [{"type": "text", "text": "And the title?"}]}]
        rendered = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        theirs = self.tok(rendered, add_special_tokens=False).input_ids
        ours = self.prompt_ids(probe)
        def strip(t: list[int]) -> list[int]:  # a template may or may not write the BOS
            return t[1:] if t and t[0] == self.ids.bos else t

        if strip(theirs) != strip(ours):
            raise ConfigError(f"the chat template renders {rendered!r}, but training renders "
                              f"{self.tok.decode(ours)!r} ({self.chat.name} format): they must agree")


# --- one category's stream -----------------------------------------------------------------------------------------


class CategoryStream(IterableDataset):
    """Endless encoded samples of one category for this rank and DataLoader worker; dropped samples come through as
    `{"dropped": reason}` so the consumer counts them.

    Each epoch the shards are reshuffled (same seed on every rank). With at least as many shards as readers (ranks x
    workers), reader r reads every r-th shard of the order; with fewer, every reader reads every shard and takes every
    r-th sample. Either way a reader's position after `k` samples is computed from the shards' sample counts, so a
    resume opens the right shard and skips only the members before its offset. The DataLoader takes samples from its
    workers in turn, starting at worker 0 after a resume, so worker w is reader part (w + skip) mod workers.
    """

    def __init__(self, shards: list[storage.Location], counts: list[int], encoder: Encoder, seed: int, skip: int = 0):
        self.shards, self.counts = [str(s) for s in shards], counts
        self.encoder, self.seed, self.skip = encoder, seed, skip

    def epoch_plan(self, epoch: int, reader: int, readers: int) -> list[tuple[str, range]]:
        """The (shard, member offsets) reader `reader` reads in `epoch`."""
        order = list(range(len(self.shards)))
        random.Random(self.seed * 100003 + epoch).shuffle(order)
        if len(self.shards) >= readers:
            return [(self.shards[j], range(self.counts[j])) for k, j in enumerate(order) if k % readers == reader]
        plan, start = [], 0
        for j in order:
            first = (reader - start) % readers
            if first < self.counts[j]:
                plan.append((self.shards[j], range(first, self.counts[j], readers)))
            start += self.counts[j]
        return plan

    def plan_from(self, reader: int, readers: int, skip: int) -> Iterator[tuple[str, range]]:
        """The reader's endless plan, starting `skip` samples in: whole epochs and shards skipped by their counts."""
        epoch = 0
        while True:
            plan = self.epoch_plan(epoch, reader, readers)
            n = sum(len(r) for _, r in plan)
            if n == 0:
                raise ValueError(f"{self.shards[0]}…: this category has too few samples for {readers} readers")
            for url, offsets in plan:
                if skip >= len(offsets):
                    skip -= len(offsets)
                    continue
                yield url, offsets[skip:]
                skip = 0
            epoch += 1

    def _read(self, url: str, offsets: range) -> Iterator[dict]:
        """The samples at `offsets` of one shard, streamed (a shard on a store is read ahead, never downloaded)."""
        wanted = iter(offsets)
        nxt = next(wanted, None)
        for i, members in enumerate(iter_members(url)):
            if nxt is None:
                return
            if i == nxt:
                yield members
                nxt = next(wanted, None)

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        part = (worker + self.skip) % workers
        mine = (self.skip - part + workers - 1) // workers if self.skip > part else 0
        for url, offsets in self.plan_from(rank * workers + part, world * workers, mine):
            for members in self._read(url, offsets):
                sample = Sample.from_wds(members)
                try:
                    yield self.encoder(sample).as_dict()
                except OverBudget:
                    yield {"dropped": OVER_BUDGET, "category": sample.category}


# --- realising the mixture -----------------------------------------------------------------------------------------


def language_share(step: int, target: float, warmup_steps: int) -> float:
    """Modality warm-up: 1.0 at step 0, linearly down to `target` at `warmup_steps`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    return 1.0 + (target - 1.0) * step / warmup_steps


@dataclass
class Tally:
    """What has been trained: per category units (the mixture's unit), samples, text tokens, drops and cuts; the
    language units the schedule asked for so far (`owed`); steps per modality. The loop keeps one summed over ranks
    (`StepBatcher.record`), each batcher one of its own rank."""

    units: Counter = field(default_factory=Counter)
    samples: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    steps: Counter = field(default_factory=Counter)
    owed: float = 0.0

    @classmethod
    def from_state(cls, state: dict | None) -> Tally:
        state = state or {}
        counters = {k: Counter(state.get(k, {})) for k in ("units", "samples", "tokens", "dropped", "cut", "steps")}
        return cls(**counters, owed=float(state.get("owed", 0.0)))

    def state_dict(self) -> dict:
        return {**{k: dict(getattr(self, k)) for k in ("units", "samples", "tokens", "dropped", "cut", "steps")},
                "owed": self.owed}

    def add(self, category: str, samples: float, tokens: float, unit: str, share: float) -> None:
        units = samples if unit == "samples" else tokens
        self.samples[category] += samples
        self.tokens[category] += tokens
        self.units[category] += units
        self.owed += share * units

    def of(self, categories: list[str]) -> float:
        return float(sum(self.units[c] for c in categories))

    def shares(self, counter: Counter) -> dict[str, float]:
        total = sum(counter.values())
        return {c: v / total for c, v in sorted(counter.items())} if total else {}

    def language_share(self, languages: list[str]) -> float:
        total = sum(self.units.values())
        return self.of(languages) / total if total else math.nan


def pick_modality(tally: Tally, share: float, languages: list[str], multimodal: list[str],
                  per_pick: dict[str, float]) -> str:
    """The modality whose next pick (of about `per_pick[m]` units) leaves the language units closest to what the
    schedule asked for so far: the realised share follows the scheduled one within one pick's units."""
    if not languages or not multimodal:
        return "language" if languages else "multimodal"
    lang = tally.of(languages)
    after_language = tally.owed + share * per_pick["language"] - lang - per_pick["language"]
    after_multimodal = tally.owed + share * per_pick["multimodal"] - lang
    return "language" if abs(after_language) < abs(after_multimodal) else "multimodal"


def pick_category(units: Counter, categories: list[str], ratios: dict[str, float]) -> str:
    """The category furthest behind its ratio (smallest units per unit of ratio): the categories' shares follow
    the ratios within one sample's units."""
    return min(categories, key=lambda c: (units[c] / ratios[c], -ratios[c]))


def mean_per_pick(tally: Tally, counts: Counter, languages: list[str], multimodal: list[str]) -> dict[str, float]:
    """Units per pick of each modality so far (a pick: a step, or a sample); a modality not seen yet borrows the
    other's, and 1 before anything."""
    means = {m: tally.of(cats) / counts[m] for m, cats in (("language", languages), ("multimodal", multimodal))
             if counts[m]}
    default = next(iter(means.values()), 1.0)
    return {m: means.get(m, default) for m in ("language", "multimodal")}


# --- batches -------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One optimizer step on one rank: its modality, the micro-batches (dicts of model inputs + labels), and what
    it holds per category (samples, text tokens) plus the samples dropped or cut while drawing it."""

    modality: str
    micro: list[dict]
    samples: Counter = field(default_factory=Counter)
    text_tokens: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    tokens: int = 0  # tokens of the samples (images included, padding not)

    @property
    def target_tokens(self) -> int:
        return int(sum((m["labels"] != IGNORE).sum() for m in self.micro))

    def counts(self, categories: list[str]) -> list[float]:
        """Samples, text tokens, drops and cuts per category, then target tokens and tokens: the vector ranks sum."""
        per = [float(c[k]) for c in (self.samples, self.text_tokens, self.dropped, self.cut) for k in categories]
        return per + [float(self.target_tokens), float(self.tokens)]


def _cat(tensors: list[torch.Tensor], pin: bool) -> torch.Tensor:
    out = torch.empty((sum(t.shape[0] for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=pin)
    return torch.cat(tensors, out=out)


def collate_rows(rows: list[list[Encoded]], pad_id: int, length: int | None = None, pin: bool = False,
                 varlen: bool = False) -> dict:
    """Rows of samples -> input_ids, labels, position_ids, images.

    Position ids restart at every sample and the padding at a row's end continues its last sample, so a row of one
    sample has plain positions (the causal fast path) and a packed row marks its documents; no attention mask.
    `varlen` (flash attention) flattens the rows into one and passes the documents' boundaries explicitly
    (`cu_seq_lens_*`, `max_length_*`), which flash attention reads at any batch size. With `pin`, the batch is
    assembled straight into pinned memory (one copy), so the host-to-GPU transfer can run asynchronously.
    """
    length = length or max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long, pin_memory=pin)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long, pin_memory=pin)
    pos = torch.zeros((len(rows), length), dtype=torch.long, pin_memory=pin)
    px, hpx, starts = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s)
            ids[r, at : at + n], labels[r, at : at + n] = s.input_ids, s.labels
            pos[r, at : at + n] = torch.arange(n)
            starts.append(r * length + at)
            at += n
            if s.pixel_values is not None:
                px.append(s.pixel_values)
                if s.high_res_pixel_values is not None:
                    hpx.append(s.high_res_pixel_values)
        last = len(row[-1]) if row else 0
        pos[r, at:] = torch.arange(last, last + length - at)
    out = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if varlen:
        bounds = sorted(set(starts) | {r * length for r in range(len(rows))}) + [len(rows) * length]
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        out = {k: v.view(1, -1) for k, v in out.items()}
        out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    if px:
        out["pixel_values"] = _cat(px, pin)
        if hpx:
            out["high_res_pixel_values"] = _cat(hpx, pin)
    return out


class StepBatcher:
    """Per-step batches from the category streams, with the state needed for an exact resume.

    `next_batch(step, tally)` takes the run's tally (summed over ranks, up to the previous step): with grouped steps
    it picks the step's modality from it, so all ranks agree; categories within the modality (and, for mixed
    batches, each sample's modality) come from this rank's own tally. The loop sums each step's `Batch.counts` over
    ranks and gives them back with `record`.
    """

    def __init__(self, mixture: Mixture, encoder: Encoder, *, seed: int, batch_size: int, micro_batch_size: int,
                 packing: bool, target_share: float | None, modality_warmup_steps: int, grouped: bool = True,
                 varlen: bool = False, num_workers: int = 0, pin_memory: bool = False, world: int = 1,
                 state: dict | None = None):
        self.mixture, self.encoder, self.seed = mixture, encoder, seed
        self.batch_size, self.micro, self.packing = batch_size, micro_batch_size, packing
        self.target = mixture.language_share if target_share is None else target_share
        self.warmup, self.grouped, self.varlen = modality_warmup_steps, grouped, varlen
        self.num_workers, self.pin_memory = num_workers, pin_memory
        if (self.target > 0 or self.warmup) and not mixture.language:
            raise ValueError(f"{mixture.root}: language share {self.target} but no text-only category in the mixture")
        if self.target < 1 and not mixture.multimodal:
            raise ValueError(f"{mixture.root}: language share {self.target} < 1 but no multimodal category")
        state = state or {}
        self.readers = [world, max(num_workers, 1)]
        if state.get("readers", self.readers) != self.readers:
            raise ConfigError(f"resume: the checkpoint was read by {state['readers'][0]} rank(s) x "
                              f"{state['readers'][1]} loader worker(s) per category, this run has {world} x "
                              f"{max(num_workers, 1)}; resume with the same --workers and --num-workers")
        self.consumed: Counter = Counter(state.get("consumed", {}))
        self.pending: dict[str, dict] = state.get("pending", {})
        self.local = Tally.from_state(state.get("local"))
        self.categories = list(mixture.shards)
        self._iters: dict[str, Iterator] = {}
        self._warned: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future: Future | None = None

    def state_dict(self) -> dict:
        """This rank's position: samples consumed per category (pending ones included, they are saved themselves)."""
        return {"consumed": dict(self.consumed), "pending": dict(self.pending), "local": self.local.state_dict(),
                "readers": self.readers}

    def share(self, step: int) -> float:
        return language_share(step, self.target, self.warmup)

    def _iterator(self, category: str) -> Iterator[dict]:
        if category not in self._iters:
            stream = CategoryStream(self.mixture.shards[category], self.mixture.shard_samples[category], self.encoder,
                                    self.seed, self.consumed[category])
            loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                persistent_workers=self.num_workers > 0,
                                prefetch_factor=4 if self.num_workers else None)
            self._iters[category] = iter(loader)
        return self._iters[category]

    def _next(self, category: str, batch: Batch) -> Encoded:
        for _ in range(sum(self.mixture.shard_samples[category]) + 1):
            item = next(self._iterator(category))
            self.consumed[category] += 1
            if "dropped" not in item:
                return Encoded(**item)
            batch.dropped[category] += 1
            if category not in self._warned:
                self._warned.add(category)
                log.warning("%s: a sample has no target within the sequence budget (%d text + %d image tokens) and "
                            "is dropped (%s; counted in the metrics and summary)", category, self.encoder.seq_len,
                            self.encoder.n_img, item["dropped"])
        raise ValueError(f"{category}: a whole epoch of samples is over the sequence budget ({self.encoder.seq_len} "
                         f"text + {self.encoder.n_img} image tokens); raise seq_len")

    def _draw(self, modality: str, share: float) -> str:
        if modality == "mixed":
            counts = Counter({m: sum(self.local.samples[c] for c in cats)
                              for m, cats in (("language", self.mixture.language), ("multimodal", self.mixture.multimodal))})
            per = mean_per_pick(self.local, counts, self.mixture.language, self.mixture.multimodal)
            modality = pick_modality(self.local, share, self.mixture.language, self.mixture.multimodal, per)
        cats = self.mixture.language if modality == "language" else self.mixture.multimodal
        return pick_category(self.local.units, cats, self.mixture.ratios)

    def next_batch(self, step: int, tally: Tally) -> Batch:
        share = self.share(step)
        if self.grouped:
            per = mean_per_pick(tally, tally.steps, self.mixture.language, self.mixture.multimodal)
            modality = pick_modality(tally, share, self.mixture.language, self.mixture.multimodal, per)
        else:
            modality = "mixed"
        batch = Batch(modality, [])
        room_len = self.encoder.seq_len if modality == "language" else self.encoder.max_len
        rows: list[list[Encoded]] = []
        room: list[list[int]] = []  # per row: text tokens left, tokens left
        while True:
            if modality in self.pending:
                sample = Encoded(**self.pending.pop(modality))
            else:
                sample = self._next(self._draw(modality, share), batch)
            if self.packing:
                fit = next((i for i, (t, n) in enumerate(room) if t >= sample.text_tokens and n >= len(sample)), None)
                if fit is None and len(rows) < self.batch_size:
                    rows.append([])
                    room.append([self.encoder.seq_len, room_len])
                    fit = len(rows) - 1
                if fit is None:
                    self.pending[modality] = sample.as_dict()
                    break
                rows[fit].append(sample)
                room[fit][0] -= sample.text_tokens
                room[fit][1] -= len(sample)
            else:
                rows.append([sample])
            batch.samples[sample.category] += 1
            batch.text_tokens[sample.category] += sample.text_tokens
            batch.cut[sample.category] += sample.cut > 0
            batch.tokens += len(sample)
            self.local.add(sample.category, 1, sample.text_tokens, self.mixture.unit, share)
            if not self.packing and len(rows) == self.batch_size:
                break
        self.local.steps[modality] += 1
        length = room_len if self.packing else None
        batch.micro = [collate_rows(rows[i : i + self.micro], self.encoder.ids.pad, length, self.pin_memory,
                                    self.varlen and self.packing)
                       for i in range(0, len(rows), self.micro)]
        return batch

    def record(self, tally: Tally, step: int, modality: str, counts: list[float]) -> None:
        """Add one step's counts (summed over ranks, in `Batch.counts` order) to the run's tally."""
        n = len(self.categories)
        for i, c in enumerate(self.categories):
            tally.add(c, counts[i], counts[n + i], self.mixture.unit, self.share(step))
            tally.dropped[c] += counts[2 * n + i]
            tally.cut[c] += counts[3 * n + i]
        tally.steps[modality] += 1

    def start(self) -> None:
        """Loader workers are started from the main thread, not from the thread that builds batches."""
        for category in self.mixture.shards:
            self._iterator(category)

    def prefetch(self, step: int, tally: Tally) -> None:
        """Build `step`'s batch in a thread (while the current step trains), from a copy of the run's tally."""
        snapshot = Tally.from_state(tally.state_dict())
        self._future = self._pool.submit(lambda: (self.next_batch(step, snapshot), self.state_dict()))

    def result(self) -> tuple[Batch, dict]:
        """The prefetched batch and this rank's data position right after it (what a checkpoint after it holds)."""
        return self._future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._iters.clear()
