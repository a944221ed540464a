"""`vlcorpus curate CORPUS --out CURATED`: judge a corpus's content and write the curated corpus beside it.

Per sample (Ray tasks, one per shard): prose quality (datatrove's Gopher, repetition, C4 and FineWeb rules), personal
data (image-text pairs that show it are dropped), NSFW images (nudenet). Across the corpus (the driver, in one
canonical order: categories as the contract lists them, shards as indexed, samples as stored): a sample sharing a
13-gram with `--benchmarks`, a near duplicate of a `--heldout` sample, a sample whose every image was already kept
(exact bytes, or perceptually in categories that ask). Then each shard is rewritten (Ray tasks) with what is kept,
personal data in text-only categories replaced by typed placeholders; a few removed samples per category and reason
go to `CURATED/_removed/<category>/` for the report.

Every sample lands in `CURATED/_ledger/curate.jsonl` (one line per document: status, counts per reason and per
redacted type); `CURATED/_curation/summary.json` holds the funnel. The output is built in `CURATED.partial` and
renamed when complete, so a crash never leaves a curated corpus that looks finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from vlcorpus.config import load_config
from vlcorpus.curate.config import CurationConfig
from vlcorpus.curate.decontam import Heldout, benchmark_ngrams, signature
from vlcorpus.curate.funnel import SUMMARY
from vlcorpus.curate.images import ImageIndex
from vlcorpus.curate.judge import REDACTED, STEPS, Verdict, judge, redact_sample, step_of
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.runtime import init_ray
from vlcorpus.sample import CATEGORIES, ContractError, Sample
from vlcorpus.shards import ShardWriter, iter_members, read_index, shard_paths, write_index

COMMAND = ("curate",)
HELP = "judge content (quality, personal data, NSFW, image duplicates, decontamination) -> a curated corpus"

log = logging.getLogger("vlcorpus.pipelines")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", type=Path, help="corpus folder: <corpus>/<category>/*.tar + index.json")
    p.add_argument("--out", type=Path, required=True, help="curated corpus folder (replaced when complete)")
    p.add_argument("--heldout", type=Path, help="held-out corpus: training samples near-duplicating it are dropped")
    p.add_argument("--benchmarks", type=Path, help="folder of benchmark texts (.txt, .json, .jsonl): training "
                   "samples sharing a 13-gram with them are dropped")
    p.add_argument("--config", type=Path, help="YAML file of curation settings (vlcorpus.curate.config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. nsfw_threshold=0.8, categories.text.quality=false")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")


def categories(corpus: Path) -> list[Path]:
    """The corpus's category folders in the contract's order; each must be finished (have its index)."""
    if not corpus.is_dir():
        raise FileNotFoundError(f"{corpus}: not a corpus folder")
    found = [corpus / c for c in CATEGORIES if (corpus / c).is_dir()]
    for folder in found:
        read_index(folder)
    if not found:
        raise ValueError(f"{corpus}: holds no category folder ({', '.join(CATEGORIES)})")
    return found


def samples_of(shard: Path):
    """(sample, None) or (None, (key, why)) per member group: an unreadable sample is dropped, not fatal."""
    for members in iter_members(shard):
        try:
            yield Sample.from_wds(members), None
        except ContractError as e:
            yield None, (members["__key__"], str(e))


def judge_shard(shard: str, cfg: CurationConfig, bench, sign: bool) -> list[Verdict]:
    out = []
    for sample, bad in samples_of(Path(shard)):
        out.append(judge(sample, cfg, bench, sign) if bad is None
                   else Verdict(bad[0], bad[0], "", reason="unreadable_sample"))
    return out


def sign_shard(shard: str) -> list[bytes]:
    return [sig for sample, bad in samples_of(Path(shard)) if bad is None and (sig := signature(sample.text))]


def write_shard(shard: str, category: str, out: str, drops: dict[str, str], examples: set[str],
                redact: bool) -> dict[str, dict]:
    """Rewrite one shard: kept samples (redacted where the category says) to `out/<category>/`, the chosen removed
    ones to `out/_removed/<category>/`. Returns per key: the shard written and the redactions."""
    stem = Path(shard).name.removesuffix(".tar").replace(".", "_")
    kept = ShardWriter(Path(out) / category, stem)
    removed = ShardWriter(Path(out) / "_removed" / category, stem)
    result: dict[str, dict] = {}
    try:
        for sample, bad in samples_of(Path(shard)):
            if bad is not None:
                continue
            reason = drops.get(sample.key)
            if reason is not None:
                if sample.key in examples:
                    sample.meta["removed_by"] = reason
                    removed.write(sample)
                continue
            redacted = redact_sample(sample) if redact else Counter()
            result[sample.key] = {"shard": f"{category}/{kept.write(sample)}", "redacted": dict(redacted)}
    except BaseException:
        kept.abort()
        removed.abort()
        raise
    kept.close()
    removed.close()
    return result


def decide(verdicts: list[tuple[str, Verdict]], cfg: CurationConfig, heldout: Heldout | None) -> dict[str, str]:
    """key -> drop reason, over the whole corpus in order: per-sample verdicts, benchmark, held-out, images."""
    index, drops = ImageIndex(cfg.phash_distance), {}
    for category, v in verdicts:
        rules = cfg.rules(category)
        reason = v.reason or ("benchmark_ngram_overlap" if v.benchmark else None)
        if reason is None and heldout is not None and heldout.near(v.signature):
            reason = "heldout_near_duplicate"
        if reason is None and v.images and rules.image_dedup != "off":
            seen = [index.seen(sha, ph, rules.image_dedup == "near") for sha, ph in v.images]
            if all(seen):
                reason = "image_duplicate" if all(s == "exact" for s in seen) else "image_near_duplicate"
        if reason is None:
            for sha, ph in v.images:
                index.add(sha, ph)
        else:
            drops[v.key] = reason
    return drops


def curate(corpus: Path, out: Path, cfg: CurationConfig, heldout: Path | None = None,
           benchmarks: Path | None = None) -> dict:
    import ray

    if out.resolve() == corpus.resolve() or corpus.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} must be outside the corpus {corpus}")
    folders = categories(corpus)
    bench = benchmark_ngrams(benchmarks, cfg.ngram) if benchmarks is not None else None
    bench_ref = ray.put(bench) if bench else None
    held = None
    if heldout is not None:
        sign = ray.remote(sign_shard)
        sigs = [s for part in ray.get([sign.remote(str(p)) for f in categories(heldout) for p in shard_paths(f)])
                for s in part]
        held = Heldout(sigs, cfg.heldout_threshold)
        log.info("curate: %d held-out signatures from %s", len(sigs), heldout)

    shards = [(f.name, p) for f in folders for p in shard_paths(f)]
    judge_task = ray.remote(judge_shard)
    judged = ray.get([judge_task.remote(str(p), cfg, bench_ref, held is not None) for _, p in shards])
    verdicts = [(cat, v) for (cat, _), vs in zip(shards, judged) for v in vs]
    drops = decide(verdicts, cfg, held)

    chosen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cat, v in verdicts:
        if (reason := drops.get(v.key)) is not None and len(chosen[cat, reason]) < cfg.removed_examples:
            chosen[cat, reason].append(v.key)
    examples = {k for keys in chosen.values() for k in keys}

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_task = ray.remote(write_shard)
    drops_ref, examples_ref = ray.put(drops), ray.put(examples)
    written = ray.get([write_task.remote(str(p), cat, str(partial), drops_ref, examples_ref, cfg.rules(cat).pii == "redact")
                       for cat, p in shards])
    for folder in [partial / f.name for f in folders] + sorted((partial / "_removed").glob("*")):
        folder.mkdir(parents=True, exist_ok=True)
        write_index(folder)
    summary = summarise(verdicts, drops, written, cfg, chosen)
    ledger(partial, verdicts, drops, {k: v for part in written for k, v in part.items()})
    for f in sorted((corpus / "_ledger").glob("*.jsonl")):
        if f.name != "curate.jsonl":
            shutil.copy2(f, partial / "_ledger" / f.name)
    (partial / SUMMARY).parent.mkdir(parents=True, exist_ok=True)
    (partial / SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return summary


def summarise(verdicts: list[tuple[str, Verdict]], drops: dict[str, str], written: list[dict[str, dict]],
              cfg: CurationConfig, chosen: dict[tuple[str, str], list[str]]) -> dict:
    """The funnel per category (in -> each step -> out), redactions per type, languages and licences of what is kept,
    and where the removed examples are."""
    cats: dict[str, dict] = {}
    redacted = {k: v["redacted"] for part in written for k, v in part.items()}
    for cat, v in verdicts:
        c = cats.setdefault(cat, {"in": 0, "dropped": dict.fromkeys(STEPS, 0), "reasons": Counter(), "out": 0,
                                  "redacted": Counter(), "languages": Counter(), "licenses": Counter()})
        c["in"] += 1
        if (reason := drops.get(v.key)) is not None:
            c["dropped"][step_of(reason)] += 1
            c["reasons"][reason] += 1
        else:
            c["out"] += 1
            c["redacted"].update(redacted.get(v.key, {}))
            c["languages"][v.language] += 1
            c["licenses"][v.license] += 1
    for (cat, reason), keys in chosen.items():
        cats[cat].setdefault("examples", {})[reason] = keys
    return {"steps": list(STEPS), "config": asdict(cfg), "categories": cats}


def ledger(out: Path, verdicts: list[tuple[str, Verdict]], drops: dict[str, str], written: dict[str, dict]) -> None:
    """One `curate` ledger line per document: `ok` when any of its samples is kept, else `filtered`."""
    docs: dict[str, Entry] = {}
    for _, v in verdicts:
        e = docs.setdefault(v.doc, Entry(doc=v.doc, origin=v.origin, status="filtered", run="curate"))
        if (reason := drops.get(v.key)) is not None:
            e.counts[reason] = e.counts.get(reason, 0) + 1
            continue
        e.status, e.samples = "ok", e.samples + 1
        w = written[v.key]
        if w["shard"] not in e.shards:
            e.shards.append(w["shard"])
        for kind, n in w["redacted"].items():
            e.counts[f"{REDACTED}_{kind}"] = e.counts.get(f"{REDACTED}_{kind}", 0) + n
    for e in docs.values():
        if e.status == "filtered":
            e.error_class, e.error = "Filtered", f"every sample dropped: {', '.join(sorted(e.counts))}"
    with Ledger(out, "curate") as led:
        led.append(docs.values())


def main(args: argparse.Namespace) -> int:
    cfg = load_config(CurationConfig, args.config, args.set)
    categories(args.corpus)  # a bad argument stops here, before Ray starts
    if args.heldout is not None:
        categories(args.heldout)
    if args.benchmarks is not None and not args.benchmarks.is_dir():
        raise FileNotFoundError(f"--benchmarks {args.benchmarks}: not a folder")
    init_ray(args.address, args.num_cpus)
    summary = curate(args.corpus, args.out, cfg, args.heldout, args.benchmarks)
    for cat, c in summary["categories"].items():
        steps = ", ".join(f"{s} -{n}" for s, n in c["dropped"].items() if n)
        red = ", ".join(f"{k} {n}" for k, n in c["redacted"].items())
        print(f"{cat}: {c['in']} in, {c['out']} out{'; ' + steps if steps else ''}{'; redacted ' + red if red else ''}")
    print(f"curated corpus -> {args.out}")
    return 0
