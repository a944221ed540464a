"""`vlcorpus mix CORPUS... --mixture stage2 --out MIX`: materialise one training stage's mixture.

Order of work, so that a bad input stops before anything is written and a half-written mixture never looks
finished:
1. resolve (index.json only): unknown categories, missing indexes/shards/sidecars, empty or too-scarce categories;
2. verify every input shard's sha256 against its sidecar (one task per category);
3. write every category into `MIX/.<stage>.partial/` (one Ray task per category, or in-process with --local),
   recording unreadable samples in the ledger `MIX/_ledger/mix_<stage>.jsonl`;
4. write `mixture.json` last, then rename the folder to `MIX/<stage>` (an old one is replaced only with --overwrite).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixer.config import MixtureConfig, load_mixture
from mixer.materialize import verify_category, write_category
from mixer.resolve import MixError, Plan, resolve
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.shards import atomic_write_json, fsync_dir

log = logging.getLogger("vlcorpus.mixer")

COMMAND = ("mix",)
HELP = "build a training stage's mixture: ratio-tagged, deduplicated, shuffled shards + mixture.json"
SCHEMA = "vlcorpus-mix/1"
REPEATS = ("a repeated (up-sampled) sample is written again with the same key in a later copy pass; "
           "meta.mix.repeat is the copy index and every copy starts a new shard, so read all shards once")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpora", nargs="+", type=Path, help="corpus folder(s): <corpus>/<category>/*.tar + index.json")
    p.add_argument("--mixture", required=True, help="stage1|stage2|stage3 (mixer/mixtures/) or a YAML file")
    p.add_argument("--out", type=Path, required=True, help="mixture folder: writes <out>/<stage>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a mixture setting, e.g. seed=3")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/<stage>")
    p.add_argument("--local", action="store_true", help="write in this process instead of Ray tasks (small mixtures)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")


def main(args: argparse.Namespace) -> int:
    cfg = load_mixture(args.mixture, args.set)
    if not args.local:
        init_ray(args.address, args.num_cpus)
    mixture = run_mix(args.corpora, cfg, args.out, local=args.local, overwrite=args.overwrite)
    for name, c in mixture["categories"].items():
        print(f"  {name:16s} requested {c['requested_ratio']:.4f} realised {c['realised_ratio']:.4f} "
              f"{c['written']['samples']:8d} samples {c['written']['text_tokens']:11d} tokens x{c['repeat_factor']:.2f}")
    print(f"{cfg.stage}: {mixture['totals']['samples']} samples -> {args.out / cfg.stage}")
    return 0


def _fan_out(fn: Callable, calls: list[tuple], local: bool) -> list[Any]:
    """Run `fn(*args)` for every call, as Ray tasks or in-process; each result or the exception it raised."""
    if local:
        results = []
        for args in calls:
            try:
                results.append(fn(*args))
            except Exception as e:  # noqa: BLE001 - reported per category by the caller
                results.append(e)
        return results
    import ray

    task = ray.remote(fn).options(num_cpus=1, max_retries=2)
    refs = [task.remote(*args) for args in calls]
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError as e:
            results.append(e)
    return results


def run_mix(corpora: list[Path], cfg: MixtureConfig, out: Path, local: bool = False, overwrite: bool = False) -> dict:
    """Build `<out>/<stage>`; return what mixture.json says. Raise MixError (nothing finished) when it cannot."""
    corpora = [Path(c) for c in corpora]
    final = out / cfg.stage
    if final.exists() and not overwrite:
        raise MixError(f"{final} exists; pass --overwrite to replace it")
    plan = resolve(corpora, cfg)
    to_write = [p for p in plan.categories if p.target > 0]
    problems = [msg for res in _fan_out(verify_category, [(p,) for p in to_write], local)
                for msg in ([f"verification failed: {res}"] if isinstance(res, Exception) else res)]
    if problems:
        raise MixError(f"{len(problems)} input shard(s) fail verification, nothing written:\n  " + "\n  ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    with Ledger(out, f"mix_{cfg.stage}") as ledger:
        partial = out / f".{cfg.stage}.partial"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            results = _fan_out(write_category, [(cfg, p, str(partial / p.category)) for p in to_write], local)
            entries, errors = _ledger_entries(to_write, results, corpora)
            ledger.append(entries)
            if errors:
                raise MixError(f"the mixture failed, nothing finished (see {ledger.path}):\n  " + "\n  ".join(errors))
            mixture = describe(cfg, plan, corpora, {r["category"]: r for r in results})
            atomic_write_json(partial / "mixture.json", mixture)
            _swap_in(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    log.info("%s: wrote %s", cfg.stage, final)
    return mixture


def _ledger_entries(plans, results, corpora) -> tuple[list[Entry], list[str]]:
    origin = ",".join(map(str, corpora))
    entries, errors = [], []
    for p, res in zip(plans, results):
        if isinstance(res, Exception):
            msg = str(res).strip().splitlines()[-1][:2000] if str(res).strip() else repr(res)
            entries.append(Entry(doc=p.category, origin=origin, status="failed", error_class=type(res).__name__, error=msg))
            errors.append(f"category {p.category}: {type(res).__name__}: {msg}")
            continue
        for f in res["failures"]:
            entries.append(Entry(status="failed", **f))
        entries.append(Entry(doc=p.category, origin=origin, status="ok", samples=res["samples"],
                             shards=[s["shard"] for s in res["shards"]], counts=res["dropped"]))
    return entries, errors


def _swap_in(partial: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(partial, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def describe(cfg: MixtureConfig, plan: Plan, corpora: list[Path], results: dict[str, dict]) -> dict:
    """mixture.json: everything a trainer or a reader needs to know about what was written and why."""
    total_units = sum(r["units"] for r in results.values()) or 1
    categories = {}
    for p in plan.categories:
        r = results.get(p.category)
        categories[p.category] = {
            "requested_ratio": round(p.ratio, 6),
            "realised_ratio": round(r["units"] / total_units, 6) if r else 0.0,
            "target": p.target,
            "available": {"samples": p.samples, "text_tokens": p.tokens, "shards": len(p.shards)},
            "written": {k: (r[k] if r else 0) for k in ("samples", "text_tokens", "images", "bytes")},
            "distinct_samples": r["distinct"] if r else 0,
            "copies": r["copies"] if r else 0,
            "repeat_factor": round(r["units"] / r["unique_units"], 6) if r and r["unique_units"] else 0.0,
            "sampling_factor": round(r["units"] / p.available(cfg.unit), 6) if r and p.available(cfg.unit) else 0.0,
            "dropped": r["dropped"] if r else {},
            "invalid": len(r["failures"]) if r else 0,
            "short": bool(r is None or r["units"] < p.target),
            "max_upsample": p.spec.max_upsample,
            "warnings": p.warnings,
            "shards": [{k: s[k] for k in ("shard", "samples", "bytes", "checksum", "text_tokens", "images")}
                       for s in (r["shards"] if r else [])],
        }
    return {
        "schema": SCHEMA,
        "stage": cfg.stage,
        "unit": cfg.unit,
        "seed": cfg.seed,
        "config": asdict(cfg),
        "config_hash": cfg.config_hash(),
        "inputs": {"corpora": [str(c) for c in corpora], "inputs_hash": plan.inputs_hash},
        "budget": {"requested": cfg.budget, "resolved": plan.budget},
        "dedup": {"exact": True, "near_dup": cfg.near_dup, "near_dup_threshold": cfg.near_dup_threshold},
        "repeats": REPEATS,
        "categories": categories,
        "totals": {
            "samples": sum(c["written"]["samples"] for c in categories.values()),
            "text_tokens": sum(c["written"]["text_tokens"] for c in categories.values()),
            "images": sum(c["written"]["images"] for c in categories.values()),
            "bytes": sum(c["written"]["bytes"] for c in categories.values()),
        },
        "warnings": plan.warnings,
    }
