"""Mixture files: which categories a training stage draws from, in what ratio, how much, and how strictly.

A mixture is a YAML file (`mixer/mixtures/stage{1,2,3}.yaml` are the paper's) loaded through `vlcorpus.config`,
so an unknown key or a wrong type stops at once. Ratios that do not sum to 1 are normalised with a warning
(a file written in percent, or one that drops a category, still means what it says relative to the others).
A realised ratio more than `TOLERANCE` (2 points) from the request is never silent (docs/mixer.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mixer.schema import UNITS
from vlcorpus.config import ConfigError, load_config
from vlcorpus.sample import CATEGORIES

log = logging.getLogger("vlcorpus.mixer")

MIXTURES_DIR = Path(__file__).parent / "mixtures"
ON_SHORT = ("error", "warn")
SCARCEST = "scarcest"  # the largest budget at which every required category (on_short: error) stays within max_upsample
DOMINANT = "dominant"  # all of the category with the largest ratio, once; the others up-sampled within max_upsample
BUDGET_MODES = (SCARCEST, DOMINANT)
TOLERANCE = 0.02  # a realised ratio further than this from the requested one is a warning (an error with --strict)


@dataclass
class CategorySpec:
    ratio: float
    # Each unique sample is written at most this many times on average (1.0: never repeat, only down-sample).
    max_upsample: float = 1.0
    # A category that cannot get its share (empty, would need more than max_upsample copies, or its target cannot be
    # written within TOLERANCE in whole samples): stop before writing ("error"), or write what it can and warn ("warn").
    on_short: str = "error"
    # Selection by what curation recorded (meta.language, meta.provenance): empty lists select everything. Licences
    # are SPDX ids or statements as the source gives them; "unknown" stands for a sample whose licence is not known.
    languages: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    exclude_licenses: list[str] = field(default_factory=list)

    def deselects(self, language: str, licence: tuple[str, ...]) -> str | None:
        """Why a sample of this language and licence (its SPDX id and statement, or ("unknown",)) is not drawn."""
        if self.languages and language not in self.languages:
            return "language_not_selected"
        if (self.licenses and not set(licence) & set(self.licenses)) or set(licence) & set(self.exclude_licenses):
            return "license_not_selected"
        return None


@dataclass
class MixtureConfig:
    stage: str = ""
    categories: dict[str, CategorySpec] = field(default_factory=dict)
    unit: str = "tokens"  # ratios and budget count estimated text tokens, or samples
    budget: int | str = SCARCEST  # total units to write, or "scarcest" / "dominant" (see BUDGET_MODES)
    seed: int = 0
    near_dup: bool = False  # MinHash-LSH near-duplicate text removal on top of the exact dedup that always runs
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of word 3-gram sets at which a text is a duplicate
    near_dup_num_perm: int = 128
    streams: int = 1  # output streams per category, each written by its own Ray task (at most one per output shard)
    max_shard_mb: float = 256
    max_shard_samples: int = 10_000
    # Categories of `categories` this mix leaves out, each with why (`vlcorpus run`: no source of the run gives it).
    # The others' ratios are renormalised over what stays; mixture.json records both.
    left_out: dict[str, str] = field(default_factory=dict)

    def kept(self) -> MixtureConfig:
        """The mixture as it is mixed: without the `left_out` categories (`ratios()` renormalises the rest)."""
        return replace(self, categories={c: s for c, s in self.categories.items() if c not in self.left_out})

    def ratios(self) -> dict[str, float]:
        """Requested ratios normalised to sum to 1, in the file's category order."""
        total = sum(c.ratio for c in self.categories.values())
        return {name: c.ratio / total for name, c in self.categories.items()}

    def config_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()


def validate(cfg: MixtureConfig) -> MixtureConfig:
    """Check what a dataclass cannot: names, ranges, the ratio sum. Raise ConfigError saying what to fix."""
    if not cfg.stage or "/" in cfg.stage or cfg.stage.startswith((".", "_")):
        raise ConfigError(f"stage: {cfg.stage!r} must be a plain folder name such as 'stage2'")
    if not cfg.categories:
        raise ConfigError("categories: the mixture names no category")
    unknown = sorted(set(cfg.categories) - set(CATEGORIES))
    if unknown:
        raise ConfigError(f"categories: unknown category {', '.join(unknown)}; valid: {', '.join(CATEGORIES)}")
    for name, c in cfg.categories.items():
        if not math.isfinite(c.ratio) or c.ratio < 0:
            raise ConfigError(f"categories.{name}.ratio: {c.ratio} must be a finite number >= 0")
        if not math.isfinite(c.max_upsample) or c.max_upsample < 1:
            raise ConfigError(f"categories.{name}.max_upsample: {c.max_upsample} must be >= 1 (1 = never repeat)")
        if c.on_short not in ON_SHORT:
            raise ConfigError(f"categories.{name}.on_short: {c.on_short!r} is not one of {', '.join(ON_SHORT)}")
    unknown = sorted(set(cfg.left_out) - set(cfg.categories))
    if unknown:
        raise ConfigError(f"left_out: {', '.join(unknown)} not among the mixture's categories")
    total = sum(c.ratio for name, c in cfg.categories.items() if name not in cfg.left_out)
    if total <= 0:
        raise ConfigError("categories: the ratios sum to 0" + (" without the left_out ones" if cfg.left_out else ""))
    if abs(total - 1) > 1e-6:
        log.warning("ratios sum to %g, not 1: normalising them (each ratio / %g)", total, total)
    if cfg.unit not in UNITS:
        raise ConfigError(f"unit: {cfg.unit!r} is not one of {', '.join(UNITS)}")
    if isinstance(cfg.budget, str) and cfg.budget not in BUDGET_MODES:
        raise ConfigError(f"budget: {cfg.budget!r} must be a positive integer ({cfg.unit}) or one of "
                          f"{', '.join(BUDGET_MODES)}")
    if isinstance(cfg.budget, int) and cfg.budget <= 0:
        raise ConfigError(f"budget: {cfg.budget} must be positive")
    if not 0 < cfg.near_dup_threshold <= 1:
        raise ConfigError(f"near_dup_threshold: {cfg.near_dup_threshold} must be in (0, 1]")
    if cfg.near_dup_num_perm < 16:
        raise ConfigError(f"near_dup_num_perm: {cfg.near_dup_num_perm} must be >= 16")
    if cfg.streams < 1:
        raise ConfigError(f"streams: {cfg.streams} must be >= 1")
    if cfg.max_shard_mb <= 0 or cfg.max_shard_samples <= 0:
        raise ConfigError("max_shard_mb and max_shard_samples must be positive")
    return cfg


def mixture_path(name_or_path: str | Path) -> Path:
    """`stage2` names the shipped `mixer/mixtures/stage2.yaml`; anything else is a path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and (MIXTURES_DIR / f"{name_or_path}.yaml").exists():
        return MIXTURES_DIR / f"{name_or_path}.yaml"
    return path


def load_mixture(name_or_path: str | Path, overrides: list[str] | None = None) -> MixtureConfig:
    return validate(load_config(MixtureConfig, mixture_path(name_or_path), overrides))
