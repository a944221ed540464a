"""Write and read back ~1 GB of mixed image/text samples: vlcorpus's ShardWriter / read_shard versus plain
`tarfile` and plain `webdataset.TarWriter` / `webdataset.WebDataset` on the same samples, in one run.

    python benchmarks/shards.py --gb 1.0 --out /tmp/shard-bench

Every writer rolls at 256 MB and fsyncs each finished tar (durability is part of the job; ours also renames and
writes a sidecar). Reads follow the writes, so all three read from the page cache alike.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, read_shard, shard_paths

ROLL = 256 * 1024**2


def image_pool(n: int, rng: random.Random) -> list[bytes]:
    """Real JPEGs of page-like content and sizes (noise + stripes, 60-250 KB)."""
    pool = []
    for _ in range(n):
        w, h = rng.choice([(768, 1024), (1024, 1024), (1024, 768), (600, 800)])
        arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((w, h))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.choice([75, 85, 90]))
        pool.append(buf.getvalue())
    return pool


def make_samples(gb: float, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    pool = image_pool(32, rng)
    words = "the of model vision language page table figure equation data train token image text".split()
    samples, total, i = [], 0, 0
    while total < gb * 1024**3:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(50, 1500)))
        if i % 3 == 2:  # a third text-only
            s = Sample("text", "bench", f"doc{i}", 0, f"doc{i}", [{"text": text}])
        else:
            img = pool[i % len(pool)]
            s = Sample("doc_ocr", "bench", f"doc{i}", 0, f"doc{i}", [{"image": "0.jpg"}, {"text": text}], {"0.jpg": img})
        samples.append(s)
        total += len(text) + sum(len(b) for b in s.images.values())
        i += 1
    return samples


def members(s: Sample) -> dict:
    d = {"__key__": s.key, "json": json.dumps(s.to_json(), ensure_ascii=False, sort_keys=True).encode()}
    d.update(s.images)
    return d


def fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def write_ours(samples, out: Path) -> None:
    with ShardWriter(out, "bench-run-00000", max_bytes=ROLL) as w:
        for s in samples:
            w.write(s)


def write_wds(samples, out: Path) -> None:
    out.mkdir(parents=True)
    index, f, tw, size = 0, None, None, 0
    for s in samples:
        if tw is None:
            f = open(out / f"plain-{index:06d}.tar", "wb")
            tw, size, index = wds.TarWriter(f, encoder=False), 0, index + 1
        size += tw.write(members(s))
        if size >= ROLL:
            tw.close()
            fsync_close(f)
            tw = None
    if tw is not None:
        tw.close()
        fsync_close(f)


def write_tarfile(samples, out: Path) -> None:
    out.mkdir(parents=True)
    index, f, tf = 0, None, None
    for s in samples:
        if tf is None:
            f = open(out / f"plain-{index:06d}.tar", "wb")
            tf, index = tarfile.open(fileobj=f, mode="w|"), index + 1
        for name, data in members(s).items():
            if name == "__key__":
                continue
            ti = tarfile.TarInfo(f"{s.key}.{name}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        if f.tell() >= ROLL:
            tf.close()
            fsync_close(f)
            tf = None
    if tf is not None:
        tf.close()
        fsync_close(f)


def read_ours(out: Path) -> int:
    return sum(1 for p in shard_paths(out) for _ in read_shard(p))


def read_wds(out: Path) -> int:
    return sum(1 for _ in wds.WebDataset([str(p) for p in shard_paths(out)], shardshuffle=False))


def read_tarfile(out: Path) -> int:
    n = 0
    for p in shard_paths(out):
        with tarfile.open(p, mode="r|") as tf:
            for ti in tf:
                tf.extractfile(ti).read()
                n += ti.name.endswith(".json")
    return n


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vlcorpus-shard-bench"))
    ap.add_argument("--repeats", type=int, default=2, help="best of N per contender")
    args = ap.parse_args()
    samples = make_samples(args.gb)
    print(f"{len(samples)} samples; writers roll at {ROLL >> 20} MB; best of {args.repeats}")
    contenders = [("tarfile", write_tarfile, read_tarfile), ("webdataset", write_wds, read_wds),
                  ("vlcorpus", write_ours, read_ours)]
    best = {name: [float("inf"), float("inf"), 0] for name, _, _ in contenders}
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits every contender alike
        for name, write, read in contenders:
            shutil.rmtree(args.out, ignore_errors=True)
            tw, _ = timed(write, samples, args.out / name)
            tr, n = timed(read, args.out / name)
            assert n == len(samples), (name, n)
            size = sum(p.stat().st_size for p in shard_paths(args.out / name))
            best[name] = [min(best[name][0], tw), min(best[name][1], tr), size]
    results = {}
    for name, (tw, tr, size) in best.items():
        results[name] = (size / tw / 1e6, size / tr / 1e6)
        print(f"{name:11s} {size / 1e9:.2f} GB  write {results[name][0]:7.1f} MB/s  read {results[name][1]:7.1f} MB/s")
    ours = results["vlcorpus"]
    for base in ("tarfile", "webdataset"):
        print(f"vlcorpus / {base}: write {ours[0] / results[base][0]:.2f}x  read {ours[1] / results[base][1]:.2f}x")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
