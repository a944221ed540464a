"""`vlcorpus mix CORPUS... --mixture stage2 --out MIX`: materialise one training stage's mixture.

Order of work, so that a bad input stops before anything is written and a half-written mixture never looks
finished:
1. preflight (index.json only): unknown categories, missing indexes/shards/sidecars, empty required categories;
2. scan (Ray tasks over groups of input shards): every shard's checksum against its sidecar, every sample parsed,
   checked against the contract and hashed for dedup;
3. plan (driver, `mixer.plan`): dedup, budget, targets, selection, and the exact shares every category will realise:
   a mixture that cannot be met as asked stops here (and with --strict, so does any warning);
4. write every category's streams into `MIX/.<stage>.partial/` (one Ray task per stream, or in-process with
   --local); the ledger `MIX/_ledger/mix_<stage>.jsonl` records each category and every sample that was unusable;
5. write `mixture.json` (`mixer.schema`) last, then rename the folder to `MIX/<stage>` (an old one is replaced only
   with --overwrite).

On an object store (no rename) the streams write straight into `MIX/<stage>/` and `mixture.json`, written last, is
the commit: a stage prefix without it is unfinished and is cleared by the next mix (an old mixture loses its
`mixture.json` first when --overwrite replaces it).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixer.config import TOLERANCE, MixtureConfig, load_mixture
from mixer.materialize import write_stream
from mixer.plan import CategoryPlan, Plan, check_present, make_plan, stream_jobs
from mixer.resolve import InputShard, MixError, inputs_hash, preflight
from mixer.scan import ShardScan, scan_shards, task_groups
from mixer.schema import (
    REPEATS,
    SCHEMA,
    CategoryEntry,
    Counts,
    Inputs,
    MixtureJson,
    ShardEntry,
    Shares,
)
from vlcorpus import storage
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.shards import atomic_write_json, fsync_dir, write_index

log = logging.getLogger("vlcorpus.mixer")

COMMAND = ("mix",)
HELP = "build a training stage's mixture: ratio-tagged, deduplicated, shuffled shards + mixture.json"
PROGRESS_S = 10.0  # seconds between progress lines while tasks run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpora", nargs="+", type=storage.location,
                   help="corpus folder(s) or s3:// / gs:// prefix(es): <corpus>/<category>/*.tar + index.json")
    p.add_argument("--mixture", required=True, help="stage1|stage2|stage3 (mixer/mixtures/) or a YAML file")
    p.add_argument("--out", type=storage.location, required=True, help="mixture folder or prefix: writes <out>/<stage>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a mixture setting, e.g. seed=3, budget=dominant, categories.caption.on_short=warn")
    p.add_argument("--strict", action="store_true",
                   help=f"stop (nothing written) on any warning: a share more than {TOLERANCE * 100:.0f} points from its "
                        "request, "
                        "a capped or empty category, a key conflict")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/<stage>")
    p.add_argument("--local", action="store_true", help="work in this process instead of Ray tasks (small mixtures)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")


def main(args: argparse.Namespace) -> int:
    cfg = load_mixture(args.mixture, args.set)
    if not args.local:
        init_ray(args.address, args.num_cpus)
    mixture = run_mix(args.corpora, cfg, args.out, local=args.local, overwrite=args.overwrite, strict=args.strict)
    for name, c in mixture["categories"].items():
        print(f"  {name:16s} requested {c['requested_ratio']:7.2%} realised {c['realised_ratio']:7.2%} "
              f"({c['deviation_points']:+5.1f} pts) {c['written']['samples']:8d} samples "
              f"{c['written']['text_tokens']:11d} tokens x{c['repeat_factor']:.2f} in {c['streams']} stream(s)")
    print(f"{cfg.stage}: {mixture['budget']['explained']}")
    for w in mixture["warnings"]:
        print(f"WARNING {cfg.stage}: {w}")
    print(f"{cfg.stage}: {mixture['totals']['samples']} samples -> {storage.join(args.out, cfg.stage)}"
          + (f" ({len(mixture['warnings'])} warning(s), also in mixture.json)" if mixture["warnings"] else ""))
    return 0


def _fan_out(fn: Callable, calls: list[tuple], local: bool, what: str) -> list[Any]:
    """Run `fn(*args)` for every call, as Ray tasks or in-process; each result or the exception it raised."""
    start = last = time.monotonic()
    if local:
        results = []
        for i, args in enumerate(calls):
            try:
                results.append(fn(*args))
            except Exception as e:  # noqa: BLE001 - reported per category by the caller
                results.append(e)
            if time.monotonic() - last > PROGRESS_S:
                last = time.monotonic()
                log.info("%s: %d/%d done (%.0f s)", what, i + 1, len(calls), last - start)
        return results
    import ray

    task = ray.remote(fn).options(num_cpus=1, max_retries=2)
    refs = [task.remote(*args) for args in calls]
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=PROGRESS_S)
        if pending:
            log.info("%s: %d/%d done (%.0f s)", what, len(refs) - len(pending), len(refs), time.monotonic() - start)
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError as e:
            results.append(e)
    return results


def scan(cfg: MixtureConfig, inputs: dict[str, list[InputShard]], local: bool) -> dict[str, list[ShardScan]]:
    """Every input shard of every category the mixture draws from; MixError listing every shard that fails."""
    calls, owners = [], []
    for category, shards in inputs.items():
        if cfg.categories[category].ratio > 0:
            for group in task_groups([(s.path, s.bytes) for s in shards]):
                calls.append((group, cfg.near_dup, cfg.near_dup_num_perm))
                owners.append(category)
    start = time.monotonic()
    results = _fan_out(scan_shards, calls, local, "scan")
    out: dict[str, list[ShardScan]] = {c: [] for c in inputs}
    problems = []
    for category, res in zip(owners, results):
        if isinstance(res, Exception):
            problems.append(f"category {category}: reading failed: {res}")
            continue
        for s in res:
            if s.checksum_error:
                problems.append(s.checksum_error)
            out[category].append(s)
    if problems:
        raise MixError(f"{len(problems)} input shard(s) fail verification, nothing written:\n  " + "\n  ".join(problems))
    mb = sum(s.bytes for shards in inputs.values() for s in shards) / 1e6
    log.info("%s: scanned %d shard(s), %.0f MB, in %d task(s), %.1f s", cfg.stage, sum(map(len, out.values())), mb,
             len(calls), time.monotonic() - start)
    return out


def run_mix(corpora: list[storage.Location], cfg: MixtureConfig, out: storage.Location, local: bool = False,
            overwrite: bool = False, strict: bool = False) -> dict:
    """Build `<out>/<stage>`; return what mixture.json says. Raise MixError (nothing finished) when it cannot."""
    corpora, out = [storage.location(c) for c in corpora], storage.location(out)
    remote = storage.is_remote(out)
    if remote:
        storage.check_store(out)
    final = storage.join(out, cfg.stage)
    if storage.exists(storage.join(final, "mixture.json") if remote else final) and not overwrite:
        raise MixError(f"{final} exists; pass --overwrite to replace it")
    where = ", ".join(map(str, corpora))
    if cfg.left_out:
        log.warning(left_out_notice(cfg))
    mixed = cfg.kept()
    inputs = preflight(corpora, mixed)
    check_present(mixed, inputs, where)
    plan = make_plan(mixed, inputs, scan(mixed, inputs, local), where)
    if strict and plan.warnings:
        raise MixError(f"--strict: {len(plan.warnings)} warning(s), nothing written:\n  " + "\n  ".join(plan.warnings))
    if remote:
        with Ledger(out, f"mix_{cfg.stage}") as ledger:
            storage.remove([u for u in [f"{final}/mixture.json"] if storage.exists(u)])  # uncommit the old one first
            storage.remove(storage.find(final))  # and what it held, or what an unfinished mix left
            mixture = _write(cfg, mixed, plan, corpora, inputs, final, local, strict, ledger, where)
            storage.write_json(f"{final}/mixture.json", mixture)  # the commit
    else:
        out.mkdir(parents=True, exist_ok=True)
        with Ledger(out, f"mix_{cfg.stage}") as ledger:
            partial = out / f".{cfg.stage}.partial"
            try:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                mixture = _write(cfg, mixed, plan, corpora, inputs, partial, local, strict, ledger, where)
                atomic_write_json(partial / "mixture.json", mixture)
                _swap_in(partial, final)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
    log.info("%s: wrote %s", cfg.stage, final)
    return mixture


def left_out_notice(cfg: MixtureConfig) -> str:
    """The loud console block of a mix that leaves categories out: which, why, and the ratios renormalised."""
    table, kept = cfg.ratios(), cfg.kept().ratios()
    rows = [f"  {c:<16} {table[c]:7.2%} -> {kept[c]:7.2%}" for c in kept]
    rows += [f"  {c:<16} {table[c]:7.2%} -> left out: {why}" for c, why in cfg.left_out.items()]
    return (f"\n{'=' * 78}\n{cfg.stage}: the mixture leaves out {', '.join(cfg.left_out)}; the other categories' "
            f"ratios are renormalised over what stays (mixture.json records both):\n" + "\n".join(rows) + f"\n{'=' * 78}")


def _write(cfg: MixtureConfig, mixed: MixtureConfig, plan: Plan, corpora: list[storage.Location],
           inputs: dict[str, list[InputShard]], folder: storage.Location, local: bool, strict: bool, ledger: Ledger,
           where: str) -> dict:
    """Write every category's streams (of `mixed`, the categories kept) and indexes under `folder`, record them in
    the ledger; the mixture.json dict."""
    jobs = [j for p in plan.categories for j in stream_jobs(mixed, p, str(storage.join(folder, p.category)))]
    start = time.monotonic()
    results = _fan_out(write_stream, [(j,) for j in jobs], local, "write")
    written, errors = _collect(jobs, results)
    ledger.append(_ledger_entries(plan.categories, written, errors, where))
    if errors:
        raise MixError(f"the mixture failed, nothing finished (see {ledger.path}):\n  "
                       + "\n  ".join(f"category {c}: {e}" for c, e in errors.items()))
    log.info("%s: wrote %d stream(s) in %.1f s", cfg.stage, len(jobs), time.monotonic() - start)
    for category in written:
        write_index(storage.join(folder, category))
    return describe(cfg, plan, corpora, inputs, written, strict)


def _collect(jobs, results) -> tuple[dict[str, dict], dict[str, str]]:
    """Stream results summed per category; the first error of each category that had one."""
    written: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for job, res in zip(jobs, results):
        if isinstance(res, Exception):
            msg = str(res).strip().splitlines()[-1][:2000] if str(res).strip() else repr(res)
            errors.setdefault(job.category, f"stream {job.stream}: {type(res).__name__}: {msg}")
            continue
        w = written.setdefault(job.category, {"samples": 0, "text_tokens": 0, "images": 0, "bytes": 0, "shards": []})
        for k in ("samples", "text_tokens", "images", "bytes"):
            w[k] += res[k]
        w["shards"].extend(res["shards"])
    for w in written.values():
        w["shards"].sort(key=lambda s: s["shard"])
    return written, errors


def _ledger_entries(plans: list[CategoryPlan], written: dict[str, dict], errors: dict[str, str],
                    origin: str) -> list[Entry]:
    entries = []
    for p in plans:
        entries.extend(Entry(status="failed", **f) for f in p.failures)
        if p.category in errors:
            entries.append(Entry(doc=p.category, origin=origin, status="failed", error_class="MixError",
                                 error=errors[p.category]))
        elif p.ratio > 0:
            w = written.get(p.category, {"samples": 0, "shards": []})
            entries.append(Entry(doc=p.category, origin=origin, status="ok", samples=w["samples"],
                                 shards=[s["shard"] for s in w["shards"]],
                                 counts=dict(sorted(p.dropped.items())) | {"invalid": len(p.failures)}))
    return entries


def _swap_in(partial: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(partial, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def describe(cfg: MixtureConfig, plan: Plan, corpora: list[storage.Location], inputs: dict[str, list[InputShard]],
             written: dict[str, dict], strict: bool) -> dict:
    """mixture.json (`mixer.schema.MixtureJson`): what was written and why; checks it is what the plan said."""
    unit = cfg.unit
    none = {"samples": 0, "text_tokens": 0, "images": 0, "bytes": 0, "shards": []}
    by_unit = {c: w["text_tokens" if unit == "tokens" else "samples"] for c, w in written.items()}
    total_units = sum(by_unit.values()) or 1
    total_tokens = sum(w["text_tokens"] for w in written.values()) or 1
    total_samples = sum(w["samples"] for w in written.values()) or 1
    categories = {}
    for p in plan.categories:
        w = written.get(p.category, none)
        units = by_unit.get(p.category, 0)
        if units != p.planned(unit):
            raise MixError(f"category {p.category}: {units} {unit} written, {p.planned(unit)} planned; an input "
                           "changed during the mix, run it again")
        u = p.units_of(unit)
        first = int(u[p.passes[0]].sum()) if p.passes else 0
        k = p.kept
        categories[p.category] = CategoryEntry(
            requested_ratio=round(p.ratio, 6),
            realised_ratio=round(units / total_units, 6),
            realised=Shares(round(w["text_tokens"] / total_tokens, 6), round(w["samples"] / total_samples, 6)),
            deviation_points=round((units / total_units - p.ratio) * 100, 4),
            target=p.target,
            available=Counts(p.available_samples, p.available_tokens, sum(s.images for s in p.inputs),
                             sum(s.bytes for s in p.inputs)),
            unique=Counts(len(k.keys), int(k.tokens.sum()), int(k.images.sum()), int((k.ends - k.starts).sum())),
            written=Counts(w["samples"], w["text_tokens"], w["images"], w["bytes"]),
            distinct_samples=len(p.passes[0]) if p.passes else 0,
            copies=len(p.passes),
            repeat_factor=round(units / first, 6) if first else 0.0,
            sampling_factor=round(units / p.unique(unit), 6) if p.unique(unit) else 0.0,
            max_upsample=p.spec.max_upsample,
            on_short=p.spec.on_short,
            short=p.short,
            streams=p.streams,
            dropped=dict(sorted(p.dropped.items())),
            invalid=len(p.failures),
            warnings=p.warnings,
            shards=[ShardEntry(**{f: s[f] for f in ShardEntry.__dataclass_fields__}) for s in w["shards"]],
        )
    return MixtureJson(
        schema=SCHEMA,
        stage=cfg.stage,
        unit=unit,
        seed=cfg.seed,
        strict=strict,
        tolerance_points=TOLERANCE * 100,
        config=asdict(cfg),
        config_hash=cfg.config_hash(),
        inputs=Inputs([str(c) for c in corpora], inputs_hash(inputs)),
        budget=plan.budget,
        dedup={"exact": True, "near_dup": cfg.near_dup, "near_dup_threshold": cfg.near_dup_threshold},
        repeats=REPEATS,
        categories=categories,
        totals=Counts(*(sum(getattr(c.written, f) for c in categories.values())
                        for f in ("samples", "text_tokens", "images", "bytes"))),
        warnings=plan.warnings,
        ok=not plan.warnings,
        left_out={c: {"file_ratio": round(cfg.ratios()[c], 6), "why": why} for c, why in cfg.left_out.items()},
    ).to_dict()
