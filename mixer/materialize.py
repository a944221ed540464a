"""Writing one category of a mixture: stream, deduplicate, shuffle, tag, write (one Ray task, or in-process).

A category is read pass by pass ("copies"). Copy 0 visits the shards in a seeded order through a bounded
shuffle buffer, drops duplicates, and writes until the category's target is met. When the corpus runs out
first and the mixture allows up-sampling, copy 1, 2, ... write the kept samples again, each pass in a fresh
seeded order, until the target or `max_upsample` x the unique units is reached. Each copy starts a new shard,
so a key never appears twice in one tar; the copy index is `meta.mix.repeat`. Nothing but the shuffle buffer
and the sets of kept keys and hashes is held in memory.
"""

from __future__ import annotations

import math
import random
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from mixer.config import MixtureConfig
from mixer.dedup import Deduper
from mixer.resolve import CategoryPlan
from vlcorpus.sample import ContractError, Sample
from vlcorpus.shards import (
    ChecksumError,
    ShardWriter,
    iter_members,
    verify_shard,
    write_index,
)

T = TypeVar("T")


def shuffled(items: Iterator[T], size: int, rng: random.Random) -> Iterator[T]:
    """webdataset's shuffle stage: hold `size` items, emit a random one as each new one arrives."""
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


def read_category(shards: list[str], failures: list[dict[str, str]] | None) -> Iterator[Sample]:
    """Samples of `shards` in order; a sample off the contract or a shard that cannot be read is skipped and,
    when `failures` is given, recorded there (the driver turns these into ledger lines)."""
    for shard in shards:
        try:
            for members in iter_members(shard):
                try:
                    yield Sample.from_wds(members)
                except ContractError as e:
                    if failures is not None:
                        failures.append({"doc": f"{shard}#{members.get('__key__')}", "origin": shard,
                                         "error_class": "ContractError", "error": str(e)})
        except (OSError, tarfile.TarError, ValueError) as e:
            if failures is not None:
                failures.append({"doc": shard, "origin": shard, "error_class": type(e).__name__,
                                 "error": f"shard unreadable, rest of it skipped: {e}"})


def verify_category(plan: CategoryPlan) -> list[str]:
    """Every input shard of the category against its sidecar's sha256; the problems found."""
    problems = []
    for s in plan.shards:
        try:
            verify_shard(Path(s.path))
        except ChecksumError as e:
            problems.append(str(e))
    return problems


def write_category(cfg: MixtureConfig, plan: CategoryPlan, folder: str) -> dict[str, Any]:
    """Write the category's share of the mixture into `folder` (emptied first, so a retry starts clean)."""
    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    by_tokens = cfg.unit == "tokens"
    dedup = Deduper(cfg.near_dup, cfg.near_dup_threshold, cfg.near_dup_num_perm)
    drops: Counter = Counter()
    failures: list[dict[str, str]] = []
    tag = {"stage": cfg.stage, "category": plan.category, "ratio": round(plan.ratio, 6)}
    units = unique_units = distinct = copies = 0
    cap = plan.target
    writer = ShardWriter(out, plan.category, int(cfg.max_shard_mb * 1024**2), cfg.max_shard_samples)
    with writer:
        while units < cap:
            if copies > 0:
                cap = min(plan.target, math.floor(plan.spec.max_upsample * unique_units))
                if units >= cap:
                    break
                writer.close()  # the next copy starts a new shard
            rng = random.Random(f"{cfg.seed}:{cfg.stage}:{plan.category}:{copies}")
            order = [s.path for s in plan.shards]
            rng.shuffle(order)
            stream = shuffled(read_category(order, failures if copies == 0 else None), cfg.shuffle_buffer, rng)
            seen: set[str] = set()
            wrote = 0
            for sample in stream:
                if units >= cap:
                    break
                if copies == 0:
                    reason = dedup.check(sample)
                    if reason:
                        drops[reason] += 1
                        continue
                elif sample.key not in dedup.keys or sample.key in seen:
                    continue
                seen.add(sample.key)
                sample.meta["mix"] = {**tag, "repeat": copies}
                writer.write(sample)
                u = sample.text_tokens if by_tokens else 1
                units += u
                wrote += 1
                if copies == 0:
                    unique_units += u
                    distinct += 1
            stream.close()
            if wrote == 0:
                break
            copies += 1
    infos = writer.finished
    write_index(out)
    return {
        "category": plan.category,
        "units": units,
        "unique_units": unique_units,
        "copies": copies,
        "samples": sum(i.samples for i in infos),
        "distinct": distinct,
        "text_tokens": sum(i.text_tokens for i in infos),
        "images": sum(i.images for i in infos),
        "bytes": sum(i.bytes for i in infos),
        "dropped": dict(sorted(drops.items())),
        "shards": [asdict(i) | {"shard": f"{plan.category}/{i.shard}"} for i in infos],
        "failures": failures,
    }
