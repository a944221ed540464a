"""Materialising a mixture vs a bare tar-to-tar copy of the same shards, in MB/s of input, in one run.

    PYTHONPATH=. python3 benchmarks/mix.py --gb 1.5 --rounds 3 --work /tmp/bench_mix

Builds a corpus (caption + doc_ocr with noise JPEGs, so images do not compress, + text) of about --gb GB,
then alternates: (a) copy every shard member by member with `tarfile` (read stream -> write stream, no parsing),
(b) `run_mix` of a mixture that takes every sample (samples unit, equal ratios, scarcest budget), which also
verifies every input sha256, parses and validates samples, dedups (exact hashes), shuffles, tags and writes
fsynced shards with sidecars, once in this process and once as Ray tasks (one per category) on a local Ray
with all CPUs. All read the same page-cached input; the best of the rounds is reported (the box is shared).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import yaml
from PIL import Image

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus.runtime import init_ray
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, shard_paths, verify_shard, write_index


def noise_jpeg(rng: random.Random, side: int) -> bytes:
    im = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build(corpus: Path, gb: float) -> int:
    rng = random.Random(0)
    pool = [noise_jpeg(rng, 384) for _ in range(64)]
    per_image = sum(map(len, pool)) / len(pool)
    n = int(gb * 1024**3 / 2 / per_image)
    for category in ("caption", "doc_ocr", "text"):
        with ShardWriter(corpus / category, "bench", max_bytes=128 * 1024**2) as w:
            for i in range(n):
                text = f"{category} {i} " + " ".join(f"w{rng.randrange(50000)}" for _ in range(60 if category != "caption" else 15))
                images = {} if category == "text" else {"0.jpg": pool[i % len(pool)]}
                segments = ([{"image": "0.jpg"}] if images else []) + [{"text": text}]
                w.write(Sample(category, "bench", f"doc{i // 8}", i % 8, f"bench/{i}", segments, images))
        write_index(corpus / category)
    return n


def bare_copy(corpus: Path, dst: Path, fsync: bool) -> None:
    """Member by member with tarfile; with `fsync`, each output shard is flushed to disk as the mixer's are."""
    for src in shard_paths(corpus):
        out = dst / src.parent.name / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            with tarfile.open(src, "r|") as tin, tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tout:
                for member in tin:
                    tout.addfile(member, tin.extractfile(member))
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_mix"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    corpus = args.work / "corpus"
    t = time.monotonic()
    n = build(corpus, args.gb)
    size = sum(p.stat().st_size for p in shard_paths(corpus))
    print(f"corpus: {n} samples per category, {size / 1e6:.0f} MB in {time.monotonic() - t:.0f} s")
    mixture = args.work / "all.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "bench", "unit": "samples", "budget": "scarcest", "categories": {
        c: {"ratio": 1.0} for c in ("caption", "doc_ocr", "text")}}))
    logging.basicConfig(level=logging.ERROR)  # the equal ratios sum to 3: the normalising warning is expected
    cfg = load_mixture(mixture)
    init_ray(num_cpus=os.cpu_count())
    times: dict[str, list[float]] = {"copy": [], "copy+fsync": [], "sha256": [], "mix local": [], "mix ray": []}
    for r in range(args.rounds):
        t = time.monotonic()
        for shard in shard_paths(corpus):
            verify_shard(shard)  # the checksum pass alone: what the contract costs before any work
        times["sha256"].append(time.monotonic() - t)
        for name, fsync in (("copy", False), ("copy+fsync", True)):
            shutil.rmtree(args.work / "copy", ignore_errors=True)
            t = time.monotonic()
            bare_copy(corpus, args.work / "copy", fsync)
            times[name].append(time.monotonic() - t)
        for name, local in (("mix local", True), ("mix ray", False)):
            t = time.monotonic()
            mix = run_mix([corpus], cfg, args.work / "mix", local=local, overwrite=True)
            times[name].append(time.monotonic() - t)
            assert mix["totals"]["samples"] == 3 * n, mix["totals"]
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    mb = size / 1e6
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| input | bare copy | bare copy + fsync | sha256 of input | mix local (1 process) | mix Ray (1 task per category) |")
    print(f"| {mb:.0f} MB, {3 * n} samples | " + " | ".join(f"{mb / best[k]:.0f} MB/s" for k in times) + " |")
    for k in ("mix local", "mix ray"):
        print(f"{k}: {best[k] / best['copy']:.2f}x the bare copy's time, {best[k] / best['copy+fsync']:.2f}x with fsync")
    print("medians: " + ", ".join(f"{k} {mb / v:.0f} MB/s" for k, v in med.items()))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
