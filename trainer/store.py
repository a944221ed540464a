"""Training output and pretrained bundles on an object store (`train --out s3://...`, `--pretrained s3://...`).

The trainer writes as on disk into a local working copy of `--out` (one per URL, on this host); what is finished goes
up under the same rule as on disk, with a pointer written last instead of a rename:
- a checkpoint: its files, then `metrics.jsonl`, then `<stage>/ckpt/latest.json` naming it (the commit); older
  checkpoints past `keep_checkpoints` are removed after;
- a finished stage: `final/` (the bundle), the curves, then `<stage>/summary.json` (the commit `run_stages` checks).
A run that starts on a fresh host pulls the committed checkpoint (and the metrics up to it) and resumes from it;
files without a pointer naming them are never read. One host writes: the ranks share its working copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from vlcorpus import storage

POINTER = "latest.json"


def local_root(out: str) -> Path:
    """Where the trainer writes: `out` itself, or this host's working copy of an `out` on a store."""
    if not storage.is_remote(out):
        return Path(out)
    return storage.scratch_root() / f"vlcorpus-train-{hashlib.sha1(out.encode()).hexdigest()[:12]}"


def pull_stage(out: str, stage: str) -> None:
    """Bring the stage's committed checkpoint and metrics into the working copy (nothing when `out` is local)."""
    if not storage.is_remote(out):
        return
    pointer = f"{out}/{stage}/ckpt/{POINTER}"
    local = local_root(out) / stage
    if not storage.exists(pointer):
        return
    step = json.loads(storage.read_bytes(pointer))["checkpoint"]
    target = local / "ckpt" / step
    if target.is_dir():
        return  # this host wrote it
    shutil.rmtree(local / "ckpt", ignore_errors=True)
    target.mkdir(parents=True)
    prefix = f"{out}/{stage}/ckpt/{step}/"
    for url in storage.find(prefix):
        dest = target / url[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(url, dest)
    metrics = f"{out}/{stage}/metrics.jsonl"
    if storage.exists(metrics):
        (local / "metrics.jsonl").write_bytes(storage.read_bytes(metrics))


def push_checkpoint(out: str, stage: str, step_dir: Path, keep: int) -> None:
    """Upload a finished checkpoint folder, the metrics so far, then the pointer; remove the checkpoints past `keep`."""
    if not storage.is_remote(out):
        return
    base, local = f"{out}/{stage}", step_dir.parent.parent
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())  # a checkpoint holds folders (trainer.checkpoint)
    storage.put_files(files, [f"{base}/ckpt/{step_dir.name}/{f.relative_to(step_dir).as_posix()}" for f in files])
    if (local / "metrics.jsonl").exists():
        storage.put_file(local / "metrics.jsonl", f"{base}/metrics.jsonl")
    storage.write_json(f"{base}/ckpt/{POINTER}", {"checkpoint": step_dir.name})
    kept = {p.name for p in step_dir.parent.glob("step-*")}
    ckpt = f"{base}/ckpt/"
    steps = {u: u[len(ckpt):].split("/", 1)[0] for u in storage.find(ckpt)}
    storage.remove([u for u, step in steps.items() if step.startswith("step-") and step not in kept])


def push_final(out: str, stage: str) -> None:
    """Upload the stage's bundle, curves, metrics and evaluation, then `summary.json` (the commit)."""
    if not storage.is_remote(out):
        return
    local, base = local_root(out) / stage, f"{out}/{stage}"
    files = sorted(p for p in (local / "final").rglob("*") if p.is_file())
    files += [p for p in (local / "curves.png", local / "metrics.jsonl") if p.exists()]
    storage.put_files(files, [f"{base}/{p.relative_to(local).as_posix()}" for p in files])
    if (local.parent / "eval.jsonl").exists():
        storage.put_file(local.parent / "eval.jsonl", f"{out}/eval.jsonl")
    storage.put_file(local / "summary.json", f"{base}/summary.json")


def finished(out: str, stage: str) -> dict | None:
    """The stage's `summary.json` when it finished (on disk or on the store), else None."""
    path = storage.join(storage.location(out), stage, "summary.json")
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def final_bundle(out: str, stage: str) -> str:
    """The local folder of a finished stage's bundle (pulled into the working copy when `out` is on a store)."""
    local = local_root(out) / stage / "final"
    if storage.is_remote(out) and not local.is_dir():
        pull_bundle(f"{out}/{stage}/final", local)
    return str(local)


def pull_bundle(url: str, local: Path) -> None:
    """Download a bundle folder (config, weights, tokenizer, processor) from the store into `local`, which appears
    only when complete (downloaded beside it, then renamed)."""
    urls = storage.find(url)
    if not urls:
        raise FileNotFoundError(f"{url}: no bundle under this prefix (expected config.json and the weights)")
    tmp = local.with_name(f".{local.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for u in urls:
        storage.get_file(u, tmp / u[len(url) + 1:])
    shutil.rmtree(local, ignore_errors=True)
    tmp.replace(local)


def pretrained(path: str | None) -> str | None:
    """`--pretrained` as a local folder: a bundle on a store is downloaded once per host into a folder named for it."""
    if path is None or not storage.is_remote(path):
        return path
    local = storage.scratch_root() / f"vlcorpus-pretrained-{hashlib.sha1(path.encode()).hexdigest()[:12]}"
    if not local.is_dir():
        pull_bundle(path.rstrip("/"), local)
    return str(local)
