"""The plan of a stage's mixture: from what the scan found to exactly which samples each output stream writes.

All of it runs in the driver and is deterministic: the same inputs, config and seed give the same plan, however
many tasks scanned or will write.
1. dedup: each category's samples in canonical order (corpora as given, shards as indexed, members as stored);
2. budget: total units from the unique units: `scarcest` (the largest at which every required category, on_short:
   error, stays within its max_upsample; the console says which category sets it and what the budget would be
   without it), `dominant` (all of the category with the largest ratio, once) or a number;
3. targets: ratio x budget, capped at max_upsample x unique units (a cap is an error unless on_short: warn);
4. selection: copy passes, each in its own seeded order; the last one stops at the sample that lands nearest the
   target, so a target is never overshot by more than half a sample;
5. shares: what every category will realise is known exactly here, before anything is written; a share more than
   TOLERANCE from its request is a warning, or an error where its own category fell short with on_short: error;
6. streams: a category's selected samples are split into N streams by hash of key (N = `streams`, at most one per
   output shard), so the set of samples is the same for any N and the bytes are the same for a given N.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import xxhash

from mixer.config import DOMINANT, SCARCEST, TOLERANCE, CategorySpec, MixtureConfig
from mixer.dedup import Deduper
from mixer.materialize import Pass, StreamJob
from mixer.resolve import InputShard, MixError
from mixer.scan import ShardScan
from mixer.schema import Budget

log = logging.getLogger("vlcorpus.mixer")


@dataclass
class Kept:
    """A category's samples that survived dedup and the contract check, in canonical order, column by column."""

    shard_idx: np.ndarray  # index into CategoryPlan.inputs
    starts: np.ndarray
    ends: np.ndarray
    tokens: np.ndarray
    images: np.ndarray
    keys: list[str]

    @classmethod
    def empty(cls) -> Kept:
        z = np.zeros(0, np.int64)
        return cls(z, z, z, z, z, [])


@dataclass(eq=False)
class CategoryPlan:
    category: str
    spec: CategorySpec
    ratio: float  # requested, normalised
    inputs: list[InputShard]
    kept: Kept = field(default_factory=Kept.empty)
    dropped: Counter = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)  # ledger lines: off-contract samples, bad shards
    target: int = 0  # units to write
    passes: list[np.ndarray] = field(default_factory=list)  # per copy pass: indices into `kept`, in write order
    streams: int = 1
    short: bool = False  # its data could not fill its share (left out, or capped at max_upsample)
    warnings: list[str] = field(default_factory=list)

    def units_of(self, unit: str) -> np.ndarray:
        return self.kept.tokens if unit == "tokens" else np.ones(len(self.kept.keys), np.int64)

    def unique(self, unit: str) -> int:
        return int(self.units_of(unit).sum())

    def planned(self, unit: str) -> int:
        u = self.units_of(unit)
        return int(sum(u[p].sum() for p in self.passes))

    @property
    def available_samples(self) -> int:
        return sum(s.samples for s in self.inputs)

    @property
    def available_tokens(self) -> int:
        return sum(s.text_tokens for s in self.inputs)


@dataclass
class Plan:
    categories: list[CategoryPlan]
    budget: Budget
    budget_units: float  # the budget before rounding: targets are ratio x this
    warnings: list[str]


def _required_but_empty(category: str, unit: str, where: str) -> MixError:
    return MixError(f"category {category} has no {unit} in {where}; it is required (on_short: error). Add data, or "
                    f"set its on_short: warn to mix without it (or its ratio: 0)")


def check_present(cfg: MixtureConfig, inputs: dict[str, list[InputShard]], where: str) -> None:
    """Before any tar is read: a required category whose index lists no sample stops the mix."""
    for name, spec in cfg.categories.items():
        if spec.ratio > 0 and spec.on_short == "error" and not sum(s.samples for s in inputs[name]):
            raise _required_but_empty(name, "samples", where)


def empty_category(p: CategoryPlan, unit: str, where: str) -> None:
    """A category with nothing to give: MixError when it is required, else left out with a warning."""
    if p.spec.on_short == "error":
        raise _required_but_empty(p.category, unit, where)
    p.short = True
    p.warnings.append(f"category {p.category} has no {unit} in {where}; left out (on_short: warn), its {p.ratio:.2%} "
                      "share stays unfilled")


def dedup(cfg: MixtureConfig, p: CategoryPlan, scans: list[ShardScan]) -> None:
    """Fill `p.kept`, `p.dropped` and `p.failures` from the category's shard scans (in `p.inputs` order)."""
    d = Deduper(cfg.near_dup, cfg.near_dup_threshold, cfg.near_dup_num_perm)
    cols: dict[str, list] = {"shard_idx": [], "starts": [], "ends": [], "tokens": [], "images": []}
    keys: list[str] = []
    conflicts: list[str] = []
    for idx, s in enumerate(scans):
        p.failures.extend(s.failures)
        for i, key in enumerate(s.keys):
            reason = p.spec.deselects(s.languages[i], s.licenses[i]) or d.check(
                key, s.digests[i], s.image_digests[i] if cfg.near_dup else b"", s.signatures[i] if cfg.near_dup else None)
            if reason:
                p.dropped[reason] += 1
                if reason == "key_conflict" and len(conflicts) < 3:
                    conflicts.append(f"{key} in {s.shard}")
                continue
            keys.append(key)
            for name, value in (("shard_idx", idx), ("starts", s.starts[i]), ("ends", s.ends[i]),
                                ("tokens", s.tokens[i]), ("images", s.images[i])):
                cols[name].append(value)
    p.kept = Kept(**{k: np.asarray(v, np.int64) for k, v in cols.items()}, keys=keys)
    if conflicts:
        p.warnings.append(f"category {p.category}: {p.dropped['key_conflict']} sample(s) share a key with an earlier one "
                          f"but differ in content (the same document rendered differently); the first was kept, these "
                          f"dropped as key_conflict, e.g. {'; '.join(conflicts)}")


def resolve_budget(cfg: MixtureConfig, plans: list[CategoryPlan]) -> tuple[float, Budget]:
    """The budget in units (before rounding) and its description for mixture.json and the console."""
    unit = cfg.unit
    active = [p for p in plans if p.ratio > 0 and p.unique(unit) > 0]
    if not active:
        raise MixError(f"every category of the mixture is empty (no {unit}) in these corpora")
    if cfg.budget == SCARCEST:
        # the categories that must get their share set it; the others (on_short: warn) are capped where they run out
        binding = [p for p in active if p.spec.on_short == "error"] or active
        limits = sorted(((p.spec.max_upsample * p.unique(unit) / p.ratio, p) for p in binding), key=lambda lp: lp[0])
        budget, p = limits[0]
        line = (f"budget {round(budget):,} {unit} (scarcest), set by {p.category}: it holds {p.unique(unit):,} "
                f"{unit}, may repeat {p.spec.max_upsample:g}x and asks {p.ratio:.2%}")
        nxt = limits[1] if len(limits) > 1 else None
        if nxt:
            line += (f"; without that limit the budget would be {round(nxt[0]):,} {unit} "
                     f"({nxt[0] / budget:.1f}x), set by {nxt[1].category}")
        return budget, Budget(SCARCEST, cfg.budget, round(budget), p.category,
                              round(nxt[0]) if nxt else None, nxt[1].category if nxt else None, line)
    if cfg.budget == DOMINANT:
        p = max(active, key=lambda q: q.ratio)
        budget = p.unique(unit) / p.ratio
        line = (f"budget {round(budget):,} {unit} (dominant): all {p.unique(unit):,} {unit} of {p.category} "
                f"({p.ratio:.2%}) once, the others scaled to it")
        return budget, Budget(DOMINANT, cfg.budget, round(budget), p.category, None, None, line)
    return float(cfg.budget), Budget("fixed", cfg.budget, int(cfg.budget), None, None, None,
                                     f"budget {cfg.budget:,} {unit} (fixed)")


def set_target(cfg: MixtureConfig, p: CategoryPlan, budget: float) -> None:
    """ratio x budget, capped at max_upsample x unique units (an error unless on_short: warn)."""
    unique = p.unique(cfg.unit)
    ideal, allowed = p.ratio * budget, p.spec.max_upsample * unique
    if ideal <= allowed * (1 + 1e-9):
        p.target = min(round(ideal), math.floor(allowed + 1e-6))
        return
    msg = (f"category {p.category}: {ideal:,.0f} {cfg.unit} wanted ({p.ratio:.2%} of {budget:,.0f}) but it holds "
           f"{unique:,} and may repeat at most {p.spec.max_upsample:g}x")
    if p.spec.on_short == "error":
        raise MixError(f"{msg}; lower the budget, raise its max_upsample or set its on_short: warn")
    p.short = True
    p.target = math.floor(allowed + 1e-6)
    p.warnings.append(f"{msg}; capped at {p.target:,} (on_short: warn)")


def _order(keys: list[str], seed: str) -> np.ndarray:
    """A seeded permutation of `keys` that depends only on the seed string and the keys themselves."""
    s = xxhash.xxh3_64_intdigest(seed.encode())
    h = np.fromiter((xxhash.xxh3_64_intdigest(k.encode(), s) for k in keys), np.uint64, len(keys))
    return np.argsort(h, kind="stable")


def select(cfg: MixtureConfig, p: CategoryPlan) -> None:
    """Copy passes until the target: whole passes while a whole one fits, then the part nearest the rest."""
    units = p.units_of(cfg.unit)
    unique, done = int(units.sum()), 0
    p.passes = []
    while done < p.target and unique > 0:
        order = _order(p.kept.keys, f"{cfg.seed}:{cfg.stage}:{p.category}:{len(p.passes)}")
        rest = p.target - done
        if rest < unique:
            cum = np.cumsum(units[order])
            n = int(np.searchsorted(cum, rest, side="right"))
            if n < len(order) and cum[n] - rest < rest - (cum[n - 1] if n else 0):
                n += 1  # overshooting by this sample lands nearer the target than stopping short of it
            order = order[:n]
        if len(order) == 0:
            break
        p.passes.append(order)
        done += int(units[order].sum())
        if rest < unique:
            break


def _alone(p: CategoryPlan, unit: str, budget: float) -> float:
    """The share `p` would realise if every other category got exactly ratio x budget: it causes a deviation when
    this is off (the others then only see their shares shifted by it)."""
    planned, ideal = p.planned(unit), p.ratio * budget
    return planned / (budget - ideal + planned) if budget - ideal + planned > 0 else 0.0


def check_shares(cfg: MixtureConfig, plans: list[CategoryPlan], budget: float, b: Budget) -> None:
    """Compare what each category will realise with its request; warn, or raise MixError (see the module doc)."""
    unit = cfg.unit
    total = sum(p.planned(unit) for p in plans)
    if total == 0:
        raise MixError(f"nothing would be written: at a budget of {budget:,.0f} {unit} every target is under half a "
                       "sample; raise the budget")
    causes = [p for p in plans if p.ratio > 0 and abs(_alone(p, unit, budget) - p.ratio) > TOLERANCE]
    errors = []
    for p in plans:
        planned = p.planned(unit)
        share = planned / total
        dev = share - p.ratio
        if abs(dev) <= TOLERANCE:
            if p.ratio > 0 and planned == 0 and not p.short:
                p.warnings.append(f"category {p.category}: nothing written: its target of {p.target:,} {unit} "
                                  f"({p.ratio:.2%} of {budget:,.0f}) is under half of one of its samples")
            continue
        head = f"category {p.category}: {share:.2%} realised for {p.ratio:.2%} requested ({dev * 100:+.1f} points)"
        if p not in causes:
            names = ", ".join(c.category for c in causes)
            p.warnings.append(f"{head}: the shares shifted because {names} did not get "
                              f"{'its' if len(causes) == 1 else 'their'} own share" if causes else
                              f"{head}: the shares shifted as several categories were rounded to whole samples")
            continue
        if p.short:
            if planned:  # (a category left out already says so)
                p.warnings.append(f"{head}: its data fills {planned:,} of the {p.ratio * budget:,.0f} {unit} asked")
            continue
        mean = p.unique(unit) / max(len(p.kept.keys), 1)
        why = (f"{head}: its target is {p.target:,} {unit}, and whole samples (about {mean:,.0f} {unit} each) give "
               f"{planned:,}")
        if p.spec.on_short == "warn":
            p.warnings.append(why)
            continue
        if b.mode == SCARCEST:
            fix = (f"the budget ({b.resolved:,} {unit}) is the largest the data allows ({b.limited_by} sets it), so no "
                   f"budget meets these ratios: add data to {b.limited_by}, raise its max_upsample, use budget: "
                   f"{DOMINANT}, or set on_short: warn for {p.category} to write it as it comes out")
        else:
            fix = f"raise the budget, or set on_short: warn for {p.category} to write it as it comes out"
        errors.append(f"{why}; {fix}")
    if errors:
        raise MixError("the mixture's ratios cannot be met (on_short: error):\n  " + "\n  ".join(errors))


def stream_jobs(cfg: MixtureConfig, p: CategoryPlan, folder: str) -> list[StreamJob]:
    """Split the category's passes into N streams by hash of key; one job per non-empty stream."""
    k = p.kept
    chosen = np.concatenate(p.passes) if p.passes else np.zeros(0, np.int64)
    max_bytes = int(cfg.max_shard_mb * 1024**2)
    shards = max(math.ceil(int((k.ends - k.starts)[chosen].sum()) / max_bytes), math.ceil(len(chosen) / cfg.max_shard_samples))
    n = max(1, min(cfg.streams, shards))
    p.streams = n
    stream_of = np.fromiter((xxhash.xxh3_64_intdigest(key.encode()) % n for key in k.keys), np.int64, len(k.keys))
    inputs = [s.path for s in p.inputs]
    tag = {"stage": cfg.stage, "category": p.category, "ratio": round(p.ratio, 6)}
    jobs = []
    for i in range(n):
        passes = []
        for order in p.passes:
            mine = order[stream_of[order] == i]
            passes.append(Pass(k.shard_idx[mine], k.starts[mine], k.ends[mine], [k.keys[j] for j in mine]))
        if any(pa.keys for pa in passes):
            jobs.append(StreamJob(p.category, i, n, folder, tag, inputs, passes, max_bytes, cfg.max_shard_samples))
    return jobs


def make_plan(cfg: MixtureConfig, inputs: dict[str, list[InputShard]], scans: dict[str, list[ShardScan]],
              where: str) -> Plan:
    """Everything up to the streams; raise MixError when the mixture cannot be built as asked."""
    ratios = cfg.ratios()
    plans = [CategoryPlan(name, spec, ratios[name], inputs[name]) for name, spec in cfg.categories.items()]
    for p in plans:
        dedup(cfg, p, scans.pop(p.category, []))  # the scans of a category are not needed once it is deduped
        if p.ratio > 0 and p.unique(cfg.unit) == 0:
            empty_category(p, cfg.unit, where + (" (after dedup and the contract check)" if p.inputs else ""))
    budget, b = resolve_budget(cfg, plans)
    log.info("%s: %s", cfg.stage, b.explained)
    for p in plans:
        if p.ratio > 0 and not (p.short and p.unique(cfg.unit) == 0):
            set_target(cfg, p, budget)
            select(cfg, p)
    check_shares(cfg, plans, budget, b)
    warnings = [w for p in plans for w in p.warnings]
    for w in warnings:
        log.warning(w)
    return Plan(plans, b, budget, warnings)
