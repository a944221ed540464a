"""`vlcorpus build sft INPUT --out CORPUS [--corpus CORPUS ...]`: SFT shards in the DeepSeek-VL taxonomy.

Three Ray jobs in a row, all through the driver (ledger, bounded documents, atomic shards):
1. stage: conversation files under INPUT (LLaVA JSON(L), OpenAI `messages` JSONL, own `.tar` shards) and, with
   `--corpus`, derived tasks from the project's `doc_ocr` and `web_code` shards, labelled or classified, into
   `<out>/_sft_staging/`. Resumable: staged inputs are not read again. A file under `INPUT/<category>/` with
   `<category>` one of sft_general, sft_table_chart, sft_web_code, sft_text goes to that category; the rest to
   sft_taxonomy.
2. plan (on the driver, from light items scanned by Ray tasks): dedup, eval split, per-leaf balancing
   (`renderers/sft/split.py`); the coverage table is printed and written to `<out>/sft_coverage.json`.
3. write: train samples to `<out>/<sft category>/`, eval samples to `<out>/_eval/sft_taxonomy/`. These two are
   rebuilt from the staging on every run (their ledgers are reset), so a changed plan never mixes with an old one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.job import (
    add_job_arguments,
    job_options,
    job_stage,
    renderer_config,
    report_drops,
    run_stage,
)
from renderers.records.discovery import add_record_arguments, record_inputs
from renderers.records.reader import MAX_RECORD_BYTES
from renderers.sft import classify, conversations, derived
from renderers.sft import split as sft_split
from vlcorpus import storage
from vlcorpus.document import Bounds, DocInput
from vlcorpus.driver import run_pipeline
from vlcorpus.inputs import input_root
from vlcorpus.ledger import summarize
from vlcorpus.runtime import init_ray
from vlcorpus.sample import SFT_CATEGORIES
from vlcorpus.shards import atomic_write_json, shard_paths
from vlcorpus.stage import Stage

COMMAND = ("build", "sft")
HELP = "conversation sets + derived tasks -> balanced sft_* shards, taxonomy eval split and coverage table"
CATEGORIES = SFT_CATEGORIES  # what it can write: `vlcorpus run` checks mixtures against it
DERIVED_FROM = ("doc_ocr", "web_code")
STAGING, EVAL = "_sft_staging", "_eval"
# The staging job; the derived-task and write jobs share its batch size and bounds.
STAGE = Stage(source="sft_in", render=conversations.render, batch_size=4, bounds=Bounds(timeout_s=900, memory_gb=4))
READS_CORPUS = True  # `vlcorpus run` passes it the corpus just built (--corpus) and runs it after the other sources


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p, STAGE)
    add_record_arguments(p)
    p.add_argument("--corpus", type=Path, action="append", default=[],
                   help="a corpus whose doc_ocr and web_code shards give derived tasks (repeatable)")
    p.add_argument("--taxonomy", help="taxonomy YAML (default: DeepSeek-VL Table 3); same as --set taxonomy=PATH")


def conversation_inputs(root: Path, staging: Path, lines_per_doc: int, max_record_bytes: int = MAX_RECORD_BYTES) -> list[DocInput]:
    inputs = []
    root = root.resolve()
    for d in record_inputs(root, staging / "_pieces", (".jsonl", ".json", ".tar"), lines_per_doc, max_record_bytes):
        first = Path(d.origin).parts[0] if root.is_dir() else ""
        category = first if first in SFT_CATEGORIES else "sft_taxonomy"
        inputs.append(DocInput(doc=d.doc, origin=d.origin, path=d.path, related={**d.related, "category": category}))
    return inputs


def derived_inputs(corpora: list[Path]) -> list[DocInput]:
    inputs = []
    for corpus in corpora:
        if not corpus.is_dir():
            raise FileNotFoundError(f"--corpus {corpus} is not a folder")
        for category in DERIVED_FROM:
            if (corpus / category).is_dir():
                for shard in shard_paths(corpus / category):
                    rel = f"{category}/{shard.name}"
                    inputs.append(DocInput(doc=f"{corpus.resolve()}/{rel}", origin=rel, path=str(shard)))
    return inputs


def _rebuild(args: argparse.Namespace, out: Path, stage: Stage, inputs: list[DocInput]) -> dict[str, int]:
    """Run a write stage from scratch: dropping its ledger makes the driver's reconcile remove its old shards."""
    (out / "_ledger" / f"{stage.source}.jsonl").unlink(missing_ok=True)
    return run_pipeline(stage, inputs, job_options(args, out))


def main(args: argparse.Namespace) -> int:
    import ray

    if args.taxonomy:
        args.set = [*args.set, f"taxonomy={args.taxonomy}"]
    cfg = renderer_config(conversations.SftConfig, args)
    taxonomy = conversations.taxonomy_for(cfg.taxonomy)
    if cfg.classifier == "embedding":
        classify.verified_model_dir()  # a tampered weights file stops the job here, before any batch
    if storage.is_remote(args.out) or storage.is_remote(args.input):
        raise ValueError("build sft takes local folders (it stages pieces and writes its eval split beside the corpus); "
                         "build into a local folder and copy it to the store (e.g. `aws s3 sync`)")
    if not args.input.exists():
        raise FileNotFoundError(f"input {args.input} does not exist")
    if args.corpus:
        missing = [" / ".join(p) for p in (derived.OCR, derived.OCR_FORMAT, derived.CHART_CODE, derived.UI_CODE)
                   if p not in taxonomy.leaves]
        if missing:
            raise ValueError(f"derived tasks need the taxonomy leaves {missing}; the taxonomy lacks them")
    init_ray(args.address, args.num_cpus)
    staging = args.out / STAGING
    counts, code = {}, 0
    for stage, inputs, roots in (
        (job_stage(STAGE, args, config=cfg), conversation_inputs(args.input, staging, args.lines_per_doc, int(args.max_record_mb * 1024**2)),
         [input_root(args.input), staging]),
        (job_stage(STAGE, args, source="derived", render=derived.render, config=cfg), derived_inputs(args.corpus),
         [c.resolve() for c in args.corpus]),
    ):
        if inputs:
            entries = run_stage(stage, inputs, job_options(args, staging), roots)
            counts[stage.source] = summarize(entries)
            code = max(code, report_drops(stage.source, entries, args, unit="conversation"))
    staged = [p for c in SFT_CATEGORIES if (staging / c).is_dir() for p in shard_paths(staging / c)]
    scan = ray.remote(sft_split.scan_shard)
    items = [it for part in ray.get([scan.remote(str(p)) for p in staged]) for it in part]
    assign, report = sft_split.plan(items, cfg)
    plan_path = staging / "plan.json"
    atomic_write_json(plan_path, assign)
    shard_inputs = [DocInput(doc=str(p.relative_to(staging)), origin=str(p.relative_to(staging)), path=str(p)) for p in staged]
    for split, out in (("train", args.out), ("eval", args.out / EVAL)):
        stage = job_stage(STAGE, args, source="sft" if split == "train" else "sft_eval", render=sft_split.render,
                          config=sft_split.SplitConfig(plan=str(plan_path), split=split))
        counts[split] = _rebuild(args, out, stage, shard_inputs)
    report["jobs"] = counts
    atomic_write_json(args.out / "sft_coverage.json", report)
    print(sft_split.coverage_table(report))
    for name in ("train", "eval"):
        c = counts[name]
        print(f"{name}: {c['ok']} ok, {c['filtered']} filtered, {c['failed']} failed, {c['samples']} samples")
    print(f"coverage: {args.out / 'sft_coverage.json'}; train -> {args.out}/sft_*; eval -> {args.out / EVAL}")
    return code
