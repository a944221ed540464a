"""Mixture tars -> training batches: one webdataset stream per category, modality-grouped steps, packing.

- `read_mixture` finds `<mix>/<stage>/<category>/*.tar` and the categories' ratios in `mixture.json`.
- `CategoryStream` is a webdataset pipeline (shard list -> split_by_node -> split_by_worker -> tar -> decode +
  tokenize + image preprocessing) run in DataLoader workers, endless (one reshuffled epoch after another) and
  resumable: it skips the samples a checkpoint says were consumed, before decoding them.
- `StepBatcher` draws each optimizer step's modality (language or multimodal) from a seeded function of the step
  and the scheduled language share, draws multimodal categories by their relative ratios, and packs samples into
  rows whose position ids restart at every sample. transformers' LLaMA reads restarting position ids (with no
  attention mask) as packed sequences: SDPA/eager get a block-diagonal causal mask, flash attention goes varlen.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from trainer.tokenizer import SpecialIds
from vlcorpus.sample import TEXT_ONLY_CATEGORIES, Sample
from vlcorpus.shards import read_sidecar, shard_paths, sidecar_path

IGNORE = -100
_RATIO_KEYS = ("realised_ratio", "realized_ratio", "realised", "realized", "ratio", "requested_ratio", "requested")


@dataclass
class Mixture:
    root: Path
    shards: dict[str, list[Path]]
    ratios: dict[str, float]  # normalised over the categories present
    ratio_source: str  # "mixture.json" or "folder sizes"

    @property
    def language(self) -> list[str]:
        return [c for c in self.shards if c in TEXT_ONLY_CATEGORIES]

    @property
    def multimodal(self) -> list[str]:
        return [c for c in self.shards if c not in TEXT_ONLY_CATEGORIES]

    @property
    def language_share(self) -> float:
        return sum(self.ratios[c] for c in self.language)


def _ratios_from_json(meta: dict) -> dict[str, float]:
    """Per-category ratios from the mixer's mixture.json, realised ones first; tolerant of a dict or a list form."""
    cats = meta.get("categories", {})
    if isinstance(cats, list):
        cats = {c.get("category") or c.get("name"): c for c in cats if isinstance(c, dict)}
    out: dict[str, float] = {}
    for name, entry in cats.items() if isinstance(cats, dict) else ():
        if isinstance(entry, (int, float)):
            out[name] = float(entry)
            continue
        for key in _RATIO_KEYS:
            if isinstance(entry, dict) and isinstance(entry.get(key), (int, float)):
                out[name] = float(entry[key])
                break
    for key in _RATIO_KEYS:  # a top-level {"realised": {category: ratio}} form
        if not out and isinstance(meta.get(key), dict):
            out = {k: float(v) for k, v in meta[key].items() if isinstance(v, (int, float))}
    return out


def _folder_size(shards: list[Path]) -> float:
    """Text tokens from the sidecars (what the mixer balances by default), else bytes on disk."""
    if all(sidecar_path(s).exists() for s in shards):
        return float(sum(max(read_sidecar(s).text_tokens, 1) for s in shards))
    return float(sum(s.stat().st_size for s in shards))


def read_mixture(mix: str | Path, stage: str) -> Mixture:
    root = Path(mix) / stage
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such mixture stage folder (expected <mix>/{stage}/<category>/*.tar)")
    shards = {d.name: shard_paths(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))}
    shards = {c: s for c, s in shards.items() if s}
    if not shards:
        raise FileNotFoundError(f"{root}: no category folder holds any .tar shard")
    meta_path = root / "mixture.json"
    ratios = _ratios_from_json(json.loads(meta_path.read_text("utf-8"))) if meta_path.exists() else {}
    source = "mixture.json"
    if not all(c in ratios for c in shards):
        ratios, source = {c: _folder_size(s) for c, s in shards.items()}, "folder sizes"
    ratios = {c: ratios[c] for c in shards}
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError(f"{root}: the category ratios sum to {total}")
    return Mixture(root, shards, {c: r / total for c, r in ratios.items()}, source)


@dataclass
class Encoded:
    """One sample as token ids, labels and preprocessed images (in placeholder order)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    high_res_pixel_values: torch.Tensor | None = None
    category: str = ""

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def n_images(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Encoder:
    """Sample -> Encoded: the prompt format and the label rule.

    Pretraining (no roles): `<bos>` + every segment + `<eos>`; all text is a target, image placeholders never.
    Conversation (roles): `<bos>`, then per turn (consecutive segments of one role) the role marker, the content
    and `<|end|>`; only assistant content, its `<|end|>` and a final `<eos>` after an assistant turn are targets.
    The first token is never a target, so packed and unpacked samples are supervised alike.
    """

    def __init__(self, tokenizer, ids: SpecialIds, n_image_tokens: int, image_processor, seq_len: int):
        self.tok, self.ids, self.n_img, self.proc, self.seq_len = tokenizer, ids, n_image_tokens, image_processor, seq_len

    def text_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def tokens(self, sample: Sample) -> tuple[list[int], list[int], list[str]]:
        ids, labels, images = [self.ids.bos], [IGNORE], []

        def add(tokens: list[int], target: bool) -> None:
            ids.extend(tokens)
            labels.extend(tokens if target else [IGNORE] * len(tokens))

        def add_segment(seg: dict, target: bool) -> None:
            if "image" in seg:
                images.append(seg["image"])
                add([self.ids.image] * self.n_img, False)
            else:
                add(self.text_ids(seg["text"]), target)

        if "role" not in sample.segments[0]:
            for seg in sample.segments:
                add_segment(seg, True)
            add([self.ids.eos], True)
        else:
            role = None
            for seg in sample.segments:
                if seg["role"] != role:
                    if role is not None:
                        add([self.ids.end], role == "assistant")
                    role = seg["role"]
                    add([self.ids.roles[role]], False)
                add_segment(seg, role == "assistant")
            add([self.ids.end], role == "assistant")
            add([self.ids.eos], role == "assistant")
        return ids, labels, images

    def __call__(self, sample: Sample) -> Encoded:
        ids, labels, images = self.tokens(sample)
        if len(ids) > self.seq_len:
            kept_image_tokens = ids[: self.seq_len].count(self.ids.image)
            cut = self.seq_len - kept_image_tokens % self.n_img  # never keep part of an image's placeholders
            ids, labels = ids[:cut], labels[:cut]
            images = images[: ids.count(self.ids.image) // self.n_img]
        enc = Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), category=sample.category)
        if images:
            pil = [Image.open(io.BytesIO(sample.images[name])).convert("RGB") for name in images]
            px = self.proc(pil, return_tensors="pt")
            enc.pixel_values = px["pixel_values"]
            enc.high_res_pixel_values = px.get("high_res_pixel_values")
        return enc


class CategoryStream(IterableDataset):
    """Endless encoded samples of one category for this rank, split over DataLoader workers.

    Shards are reshuffled each epoch with the same seed on every rank and worker, then split by node (webdataset's
    `split_by_node`) and by worker; with fewer shards than readers, every reader takes every n-th sample instead.
    `skip` is the number of samples this rank already consumed. The DataLoader takes samples from its workers in
    turn, starting again at worker 0 after a resume, so worker w takes the part of reader (w + skip) mod workers
    (webdataset's `split_by_worker` with that rotation) and skips that reader's share of the consumed samples.
    """

    def __init__(self, shards: list[Path], encoder: Encoder, seed: int, skip: int = 0):
        self.shards, self.encoder, self.seed, self.skip = [str(s) for s in shards], encoder, seed, skip

    def _raw(self, part: int, parts: int) -> Iterator[dict]:
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        readers, reader = world * parts, rank * parts + part
        by_shard = len(self.shards) >= readers
        epoch = 0
        while True:
            urls = list(self.shards)
            random.Random(self.seed * 100003 + epoch).shuffle(urls)
            stages = [wds.SimpleShardList(urls)]
            if by_shard:
                stages += [wds.split_by_node, lambda src: itertools.islice(src, part, None, parts)]
            stages.append(wds.tarfile_to_samples())
            got = 0
            for i, members in enumerate(wds.DataPipeline(*stages)):
                if by_shard or i % readers == reader:
                    got += 1
                    yield members
            if got == 0:
                raise ValueError(f"{self.shards[0]}…: this category has too few samples for {readers} readers")
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        part = (worker + self.skip) % workers
        mine = (self.skip - part + workers - 1) // workers if self.skip > part else 0
        for i, members in enumerate(self._raw(part, workers)):
            if i >= mine:
                yield self.encoder(Sample.from_wds(members)).as_dict()


def language_share(step: int, target: float, warmup_steps: int) -> float:
    """Modality warm-up: 1.0 at step 0, linearly down to `target` at `warmup_steps`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    return 1.0 + (target - 1.0) * step / warmup_steps


def realised_language_share(state: dict) -> float:
    """Fraction of the steps so far that were all-language, from a `StepBatcher.state_dict()`."""
    counts = state["steps_by_modality"]
    total = sum(counts.values())
    return counts.get("language", 0) / total if total else math.nan


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The draws of one step depend on (seed, step) only, so every rank agrees and a resumed run redraws the same."""
    return np.random.default_rng([seed, step])


@dataclass
class Batch:
    """One optimizer step: its modality and the micro-batches (dicts of model inputs + labels)."""

    modality: str
    micro: list[dict[str, torch.Tensor]]
    categories: Counter = field(default_factory=Counter)

    @property
    def target_tokens(self) -> int:
        return int(sum((m["labels"] != IGNORE).sum() for m in self.micro))

    @property
    def tokens(self) -> int:
        return int(sum(m["input_ids"].numel() for m in self.micro))


def _cat(tensors: list[torch.Tensor], pin: bool) -> torch.Tensor:
    out = torch.empty((sum(t.shape[0] for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=pin)
    return torch.cat(tensors, out=out)


def collate_rows(rows: list[list[Encoded]], pad_id: int, length: int | None = None,
                 pin: bool = False) -> dict[str, torch.Tensor]:
    """Rows of samples -> input_ids, labels, position_ids (restarting per sample and for the padding), images.

    No attention mask: the restarting position ids are the document mask. With `pin`, the batch is assembled
    straight into pinned memory (one copy), so the host-to-GPU transfer can run asynchronously.
    """
    length = length or max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long, pin_memory=pin)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long, pin_memory=pin)
    pos = torch.zeros((len(rows), length), dtype=torch.long, pin_memory=pin)
    px, hpx = [], []
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s)
            ids[r, at : at + n], labels[r, at : at + n] = s.input_ids, s.labels
            pos[r, at : at + n] = torch.arange(n)
            at += n
            if s.pixel_values is not None:
                px.append(s.pixel_values)
                if s.high_res_pixel_values is not None:
                    hpx.append(s.high_res_pixel_values)
        pos[r, at:] = torch.arange(length - at)
    out = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if px:
        out["pixel_values"] = _cat(px, pin)
        if hpx:
            out["high_res_pixel_values"] = _cat(hpx, pin)
    return out


class StepBatcher:
    """Per-step batches from the category streams, with the state needed for an exact resume."""

    def __init__(self, mixture: Mixture, encoder: Encoder, *, seed: int, batch_size: int, micro_batch_size: int,
                 seq_len: int, packing: bool, target_share: float | None, modality_warmup_steps: int,
                 grouped: bool = True, num_workers: int = 0, pin_memory: bool = False, state: dict | None = None):
        self.mixture, self.encoder, self.seed = mixture, encoder, seed
        self.batch_size, self.micro, self.seq_len, self.packing = batch_size, micro_batch_size, seq_len, packing
        self.target = mixture.language_share if target_share is None else target_share
        self.warmup, self.grouped = modality_warmup_steps, grouped
        self.num_workers, self.pin_memory = num_workers, pin_memory
        if (self.target > 0 or self.warmup) and not mixture.language:
            raise ValueError(f"{mixture.root}: language share {self.target} but no text-only category in the mixture")
        if self.target < 1 and not mixture.multimodal:
            raise ValueError(f"{mixture.root}: language share {self.target} < 1 but no multimodal category")
        state = state or {}
        self.consumed: Counter = Counter(state.get("consumed", {}))
        self.pending: dict[str, dict] = state.get("pending", {})
        self.steps_by_modality: Counter = Counter(state.get("steps_by_modality", {}))
        self._iters: dict[str, Iterator] = {}

    def state_dict(self) -> dict:
        """Samples consumed per category (pending ones included, they are saved themselves) and the counters."""
        return {"consumed": dict(self.consumed), "pending": dict(self.pending),
                "steps_by_modality": dict(self.steps_by_modality)}

    def share(self, step: int) -> float:
        return language_share(step, self.target, self.warmup)

    def _iterator(self, category: str) -> Iterator[dict]:
        if category not in self._iters:
            stream = CategoryStream(self.mixture.shards[category], self.encoder, self.seed, self.consumed[category])
            loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                persistent_workers=self.num_workers > 0,
                                prefetch_factor=4 if self.num_workers else None)
            self._iters[category] = iter(loader)
        return self._iters[category]

    def _next(self, category: str) -> Encoded:
        sample = Encoded(**next(self._iterator(category)))
        self.consumed[category] += 1
        return sample

    def _draw_category(self, rng: np.random.Generator, modality: str) -> str:
        if modality == "mixed":
            modality = "language" if rng.random() < self._share_now else "multimodal"
        cats = self.mixture.language if modality == "language" else self.mixture.multimodal
        p = np.array([self.mixture.ratios[c] for c in cats])
        return cats[int(rng.choice(len(cats), p=p / p.sum()))]

    def next_batch(self, step: int) -> Batch:
        rng = step_rng(self.seed, step)
        self._share_now = self.share(step)
        if self.grouped:
            modality = "language" if rng.random() < self._share_now else "multimodal"
        else:
            modality = "mixed"
        self.steps_by_modality[modality] += 1
        rows: list[list[Encoded]] = []
        room: list[int] = []
        categories: Counter = Counter()
        while True:
            if modality in self.pending:
                sample = Encoded(**self.pending.pop(modality))
            else:
                sample = self._next(self._draw_category(rng, modality))
            if not self.packing:
                rows.append([sample])
                categories[sample.category] += 1
                if len(rows) == self.batch_size:
                    break
                continue
            fit = next((i for i, r in enumerate(room) if r >= len(sample)), None)
            if fit is None and len(rows) < self.batch_size:
                rows.append([])
                room.append(self.seq_len)
                fit = len(rows) - 1
            if fit is None:
                self.pending[modality] = sample.as_dict()
                break
            rows[fit].append(sample)
            room[fit] -= len(sample)
            categories[sample.category] += 1
        length = self.seq_len if self.packing else None
        micro = [collate_rows(rows[i : i + self.micro], self.encoder.ids.pad, length, self.pin_memory)
                 for i in range(0, len(rows), self.micro)]
        return Batch(modality, micro, categories)

    def iterate(self, start: int, end: int) -> Iterator[tuple[int, Batch, dict]]:
        """Batches of steps start..end-1, each with the data state right after it (what a checkpoint taken after
        that step holds). The next step's batch is built in a thread while the caller trains on this one."""

        def make(step: int) -> tuple[Batch, dict]:
            return self.next_batch(step), self.state_dict()

        for category in self.mixture.shards:  # loader workers are started from the main thread, not the pool's
            self._iterator(category)
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(make, start) if start < end else None
            for step in range(start, end):
                batch, state = future.result()
                if step + 1 < end:
                    future = pool.submit(make, step + 1)
                yield step, batch, state

    def realised_language_share(self) -> float:
        return realised_language_share(self.state_dict())

    def close(self) -> None:
        self._iters.clear()
