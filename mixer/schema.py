"""`mixture.json`, the one file that says what a stage's mixture holds: its schema, written by `vlcorpus mix` and read
by the trainer and the report.

Schema `vlcorpus-mix/2`. Every field below is always present. Shares are fractions of the stage's total (0..1);
"units" are the mixture's `unit`: estimated text tokens (`tokens`) or samples (`samples`). A reader checks `schema`
and reads with `read_mixture_json`, which refuses unknown or missing-but-required keys, so a change of this file's
shape is a new schema version, never a silent one. Only the standard library is imported here (the trainer reads
this without Ray).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.config import ConfigError, from_dict

SCHEMA = "vlcorpus-mix/2"
UNITS = ("tokens", "samples")  # what a mixture's ratios and budget count
REPEATS = ("a repeated (up-sampled) sample is written again with the same key in a later copy pass; "
           "meta.mix.repeat is the copy index and every copy starts a new shard, so read all shards once")


@dataclass
class Counts:
    samples: int = 0
    text_tokens: int = 0
    images: int = 0
    bytes: int = 0


@dataclass
class Shares:
    """A category's share of the written stage, in both units (whatever the mixture's own unit is)."""

    text_tokens: float = 0.0
    samples: float = 0.0


@dataclass
class ShardEntry:
    """One written tar: its sidecar's figures, its path relative to the stage folder, and the stream that wrote it."""

    shard: str  # "<category>/<category>-<stream:04d>-<NNNNNN>.tar"
    stream: int
    samples: int
    bytes: int
    checksum: str  # "<algorithm>:<hex>", as in the shard's sidecar
    text_tokens: int
    images: int


@dataclass
class CategoryEntry:
    requested_ratio: float  # what the mixture file asks, normalised over its categories, in `unit`
    realised_ratio: float  # what was written, in `unit`: the share a trainer should realise
    realised: Shares  # the written share in tokens and in samples
    deviation_points: float  # (realised_ratio - requested_ratio) x 100; beyond tolerance_points there is a warning
    target: int  # units planned: requested ratio x budget, capped by max_upsample x unique units
    available: Counts  # the inputs as their index.json lists them (before dedup)
    unique: Counts  # what survived dedup and the contract check: what one copy holds
    written: Counts  # what the tars hold, repeats included
    distinct_samples: int  # different samples written (written.samples counts each copy)
    copies: int  # copy passes written (1 = no repeat)
    repeat_factor: float  # written units / distinct units written
    sampling_factor: float  # written units / unique units (< 1 down-sampled, > 1 up-sampled)
    max_upsample: float
    on_short: str  # "error" | "warn": what the mixture file said to do when the share cannot be met
    short: bool  # fewer units written than requested_ratio x budget
    streams: int  # output streams (Ray tasks) the category was split into, by hash of key
    dropped: dict[str, int]  # duplicate_key, key_conflict, exact_duplicate, near_duplicate -> samples dropped
    invalid: int  # samples off the contract or in an unreadable part of a shard (each has a ledger line)
    warnings: list[str]  # why this category is not what was asked (empty when it is)
    shards: list[ShardEntry]


@dataclass
class Budget:
    mode: str  # "scarcest" | "dominant" | "fixed"
    requested: int | str  # the mixture file's `budget`
    resolved: int  # total units the targets were computed from
    limited_by: str | None  # scarcest: the category whose data sets the budget; dominant: the dominant category
    without_limit: int | None  # scarcest: the budget if limited_by had no limit (None: it is the only category)
    next_limited_by: str | None  # scarcest: the category that would limit it then
    explained: str  # the same in words, as the console prints it


@dataclass
class Inputs:
    corpora: list[str]
    inputs_hash: str  # sha256 over every input shard's category, name and checksum


@dataclass
class MixtureJson:
    schema: str
    stage: str
    unit: str  # "tokens" | "samples"
    seed: int
    strict: bool  # built with --strict: any warning would have stopped it
    tolerance_points: float  # realised vs requested beyond this many points is a warning
    config: dict[str, Any]  # the mixture config as resolved (file + overrides)
    config_hash: str
    inputs: Inputs
    budget: Budget
    dedup: dict[str, Any]  # {"exact": true, "near_dup": bool, "near_dup_threshold": float}
    repeats: str  # how repeated samples are laid out (REPEATS)
    categories: dict[str, CategoryEntry]  # every category the mixture file names (by name: the file sorts keys)
    totals: Counts
    warnings: list[str]  # every warning of the mix: category warnings and the budget's
    ok: bool = field(default=True)  # no warning: every category within tolerance of its request
    # categories of the mixture file this mix left out (config.left_out): the file's ratio, normalised over all its
    # categories, and why; the requested_ratio of every other category is renormalised over what stayed
    left_out: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_mixture_json(path: str | Path) -> MixtureJson:
    """Load `<mix>/<stage>/mixture.json`; raise ConfigError if it is not this schema."""
    data = json.loads(storage.read_bytes(storage.location(path)))
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"{path}: schema {data.get('schema')!r}, this reader reads {SCHEMA!r}; rebuild the mixture")
    return from_dict(MixtureJson, data)
