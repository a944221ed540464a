"""Materialising one category of a mixture on 1, 2 and 4 Ray worker nodes vs a bare tar copy of the same shards.

    PYTHONPATH=. python3 benchmarks/mix.py --gb 0.5 --rounds 2 --work /tmp/bench_mix

Builds one category (doc_ocr: noise JPEGs, so images do not compress, plus ~60 words of text) of about --gb GB in
64 MB shards, then per round: (a) the bare copy: every shard member by member with `tarfile` (read stream -> write
stream, no parsing), with and without an fsync per output shard; (b) the checksum pass alone over the input (the sidecars' xxh3-128) (what the
shard contract costs before any work); (c) `run_mix` of a mixture that takes every sample once (samples unit,
scarcest budget, `streams` = --streams), which verifies every input checksum, parses and checks every sample,
dedups, plans, and writes shuffled, tagged, fsynced shards with sidecars: in this process (`--local`), and as Ray
tasks on a `ray.cluster_utils.Cluster` of 1, 2 and 4 worker nodes of --cpus-per-node CPUs each (the head node has
no CPU, so every task runs on a worker). The output of every mix run must be byte-identical (same seed, same N).
All runs read the same page-cached input; best and median of the rounds are reported (the box is shared), and for
the in-process runs also the CPU time (user + system), which a loaded box does not inflate the way it does wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import resource
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import yaml
from PIL import Image

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, shard_paths, verify_shard, write_index

CATEGORY = "doc_ocr"


def noise_jpeg(rng: random.Random, side: int) -> bytes:
    im = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build(corpus: Path, gb: float) -> int:
    rng = random.Random(0)
    pool = [noise_jpeg(rng, 256) for _ in range(64)]
    n = int(gb * 1024**3 / (sum(map(len, pool)) / len(pool)))
    with ShardWriter(corpus / CATEGORY, "bench", max_bytes=64 * 1024**2) as w:
        for i in range(n):
            text = f"page {i} " + " ".join(f"w{rng.randrange(50000)}" for _ in range(60))
            w.write(Sample(CATEGORY, "bench", f"doc{i // 8}", i % 8, f"bench/{i}", [{"image": "0.jpg"}, {"text": text}],
                           {"0.jpg": pool[i % len(pool)]}))
    write_index(corpus / CATEGORY)
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


def digest(folder: Path) -> str:
    """One hash over every file of a mix stage: equal digests, byte-identical outputs."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def mix_on_cluster(corpus: Path, cfg, out: Path, nodes: int, cpus: int) -> float:
    """Seconds `run_mix` takes on a fresh local cluster of `nodes` worker nodes (cluster start not counted)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus)
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        cluster.wait_for_nodes()
        t = time.monotonic()
        run_mix([corpus], cfg, out, overwrite=True)
        return time.monotonic() - t
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=0.5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_mix"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--streams", type=int, default=4, help="output streams of the category (the same in every run)")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    corpus = args.work / "corpus"
    t = time.monotonic()
    n = build(corpus, args.gb)
    size = sum(p.stat().st_size for p in shard_paths(corpus))
    shards = len(shard_paths(corpus))
    print(f"corpus: {n} samples, {shards} shards, {size / 1e6:.0f} MB in {time.monotonic() - t:.0f} s")
    mixture = args.work / "all.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "bench", "unit": "samples", "budget": "scarcest",
                                       "streams": args.streams, "max_shard_mb": 64, "categories": {CATEGORY: {"ratio": 1.0}}}))
    logging.basicConfig(level=logging.WARNING)
    cfg = load_mixture(mixture)
    names = ["copy", "copy+fsync", "checksum", "mix local", *(f"mix {k} node{'s' * (k > 1)}" for k in args.nodes)]
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names[:4]}
    digests = set()
    for r in range(args.rounds):
        t, c = time.monotonic(), cpu_seconds()
        for shard in shard_paths(corpus):
            verify_shard(shard)
        times["checksum"].append(time.monotonic() - t)
        cpu["checksum"].append(cpu_seconds() - c)
        for name, fsync in (("copy", False), ("copy+fsync", True)):
            shutil.rmtree(args.work / "copy", ignore_errors=True)
            t, c = time.monotonic(), cpu_seconds()
            bare_copy(corpus, args.work / "copy", fsync)
            times[name].append(time.monotonic() - t)
            cpu[name].append(cpu_seconds() - c)
        t, c = time.monotonic(), cpu_seconds()
        mix = run_mix([corpus], cfg, args.work / "mix", local=True, overwrite=True)
        times["mix local"].append(time.monotonic() - t)
        cpu["mix local"].append(cpu_seconds() - c)
        assert mix["totals"]["samples"] == n, mix["totals"]
        streams = mix["categories"][CATEGORY]["streams"]
        digests.add(digest(args.work / "mix" / "bench"))
        for k in args.nodes:
            times[f"mix {k} node{'s' * (k > 1)}"].append(
                mix_on_cluster(corpus, cfg, args.work / "mix", k, args.cpus_per_node))
            digests.add(digest(args.work / "mix" / "bench"))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    assert len(digests) == 1, "the mix runs did not write the same bytes"
    mb = size / 1e6
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"every mix run wrote the same bytes ({streams} streams): {digests.pop()[:16]}")
    print("| " + " | ".join(["", *names]) + " |")
    print("| " + " | ".join(["---"] * (len(names) + 1)) + " |")
    print("| best, MB/s | " + " | ".join(f"{mb / best[k]:.0f}" for k in names) + " |")
    print("| median, MB/s | " + " | ".join(f"{mb / med[k]:.0f}" for k in names) + " |")
    print("| median, x the copy's time | " + " | ".join(f"{med[k] / med['copy']:.2f}" for k in names) + " |")
    cmin = {k: min(v) for k, v in cpu.items()}
    print("| CPU s (in-process), best | " + " | ".join(f"{cmin[k]:.2f}" if k in cmin else "" for k in names) + " |")
    print("| CPU, x the copy's | " + " | ".join(f"{cmin[k] / cmin['copy']:.2f}" if k in cmin else "" for k in names) + " |")
    print("per round (s): " + "; ".join(f"{k} " + " / ".join(f"{v:.1f}" for v in times[k]) for k in names))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
