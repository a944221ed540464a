"""Resolution: from corpus folders and a mixture file to how many units of each category to write.

Only `index.json` and the filesystem are read here (no tar is opened), so every error a corpus can show
without reading its data (no index, missing shard or sidecar, a size that does not match, an empty required
category, a ratio that needs more repeats than allowed) stops the mix before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from mixer.config import SCARCEST, CategorySpec, MixtureConfig
from vlcorpus.sample import CATEGORIES
from vlcorpus.shards import ShardInfo, read_index, sidecar_path

log = logging.getLogger("vlcorpus.mixer")


class MixError(ValueError):
    """A mixture that cannot be built from these inputs; the message says what to fix."""


@dataclass
class InputShard:
    path: str
    samples: int
    text_tokens: int
    bytes: int
    sha256: str


@dataclass
class CategoryPlan:
    category: str
    spec: CategorySpec
    ratio: float  # requested, normalised
    shards: list[InputShard] = field(default_factory=list)
    target: int = 0  # units to write
    warnings: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.text_tokens for s in self.shards)

    def available(self, unit: str) -> int:
        return self.tokens if unit == "tokens" else self.samples


@dataclass
class Plan:
    categories: list[CategoryPlan]
    budget: int  # total units the targets add up to (before shortfalls)
    inputs_hash: str
    warnings: list[str] = field(default_factory=list)


def category_shards(corpora: list[Path], category: str) -> list[InputShard]:
    """The shards of `category` in every corpus that has it, checked against `index.json` without reading them."""
    shards: list[InputShard] = []
    problems: list[str] = []
    for corpus in corpora:
        folder = corpus / category
        if not folder.is_dir():
            continue
        try:
            index = read_index(folder)
        except FileNotFoundError as e:
            raise MixError(f"{e}; run the pipeline again (it rewrites the index) or remove the folder") from None
        for entry in index.get("shards", []):
            path = folder / entry["shard"]
            if not path.exists():
                problems.append(f"{path}: listed in index.json but missing")
            elif not sidecar_path(path).exists():
                problems.append(f"{path}: its sidecar {sidecar_path(path).name} is missing")
            elif path.stat().st_size != entry["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes on disk, index.json says {entry['bytes']}")
            else:
                shards.append(InputShard(str(path), entry["samples"], entry["text_tokens"], entry["bytes"], ShardInfo.from_json(entry).checksum))
    if problems:
        raise MixError(f"category {category}: {len(problems)} bad shard(s):\n  " + "\n  ".join(problems))
    return shards


def check_corpora(corpora: list[Path]) -> None:
    if not corpora:
        raise MixError("no corpus folder given")
    for corpus in corpora:
        if not corpus.is_dir():
            raise MixError(f"{corpus}: no such corpus folder")
        present = [c for c in CATEGORIES if (corpus / c).is_dir()]
        if not present:
            raise MixError(f"{corpus}: no category folder ({', '.join(CATEGORIES)}); is this a corpus folder?")
        unindexed = [c for c in present if not (corpus / c / "index.json").exists()]
        if unindexed:
            raise MixError(
                f"{corpus}: category folder(s) {', '.join(unindexed)} have no index.json (a pipeline never finished "
                "there); run it again, which rewrites the index, or remove the folder"
            )


def resolve(corpora: list[Path], cfg: MixtureConfig) -> Plan:
    """Targets per category: ratio x budget, capped by what the corpus holds times `max_upsample`."""
    check_corpora(corpora)
    ratios = cfg.ratios()
    plans = [CategoryPlan(name, spec, ratios[name], category_shards(corpora, name)) for name, spec in cfg.categories.items()]
    warnings: list[str] = []
    active: list[CategoryPlan] = []
    for p in plans:
        if p.ratio == 0:
            continue
        if p.available(cfg.unit) == 0:
            msg = f"category {p.category} has no {cfg.unit} in {', '.join(map(str, corpora))}"
            if p.spec.on_short == "error":
                raise MixError(f"{msg}; it is required (on_short: error). Add data or set on_short: warn to mix without it")
            p.warnings.append(msg + "; left out (on_short: warn), its share stays unfilled")
            continue
        active.append(p)
    if not active:
        raise MixError("every category of the mixture is empty in these corpora")
    if cfg.budget == SCARCEST:
        budget = min(p.spec.max_upsample * p.available(cfg.unit) / p.ratio for p in active)
    else:
        budget = cfg.budget
    for p in active:
        allowed = math.floor(p.spec.max_upsample * p.available(cfg.unit))
        wanted = math.floor(p.ratio * budget + 1e-6)
        if wanted > allowed:
            msg = (f"category {p.category}: {wanted} {cfg.unit} wanted ({p.ratio:.4f} of {budget}) but it holds "
                   f"{p.available(cfg.unit)} and may repeat at most {p.spec.max_upsample:g}x")
            if p.spec.on_short == "error":
                raise MixError(f"{msg}; lower the budget, raise max_upsample or set on_short: warn")
            p.warnings.append(msg + f"; capped at {allowed} (on_short: warn)")
            wanted = allowed
        p.target = wanted
    for p in plans:
        for w in p.warnings:
            log.warning(w)
        warnings.extend(p.warnings)
    return Plan(plans, math.floor(budget), inputs_hash(plans), warnings)


def inputs_hash(plans: list[CategoryPlan]) -> str:
    """What went in, independent of where it lies: category, shard name and sha256 of every input shard."""
    h = hashlib.sha256()
    for p in plans:
        for s in p.shards:
            h.update(f"{p.category}/{Path(s.path).name}:{s.sha256}\n".encode())
    return h.hexdigest()
