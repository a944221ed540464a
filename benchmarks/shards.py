"""Write and read back ~1 GB of mixed image/text samples: vlcorpus's ShardWriter / read_shard versus plain
`tarfile` and plain `webdataset.TarWriter` / `webdataset.WebDataset` on the same samples, in one run; then the
checksums a sidecar could carry over the same tars (sha256 with and without the CPU's SHA instructions, BLAKE3,
xxh3-128).

    python benchmarks/shards.py --gb 1.0 --out /dev/shm/shard-bench [--baseline-rev b686ba2]

Every writer rolls at 256 MB and fsyncs each finished tar (durability is part of the job; ours also renames and
writes a sidecar). Reads follow the writes, so all read from the page cache alike. `--baseline-rev` adds the
ShardWriter of an earlier commit as a contender, interleaved with the others (before/after in one run).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import webdataset as wds
from PIL import Image

from vlcorpus.sample import MEMBER, Sample
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
    return {"__key__": s.key, MEMBER: msgpack.packb(s.to_record(), use_bin_type=True)}


def fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def write_ours(samples, out: Path, writer=ShardWriter) -> None:
    with writer(out, "bench-run-00000", max_bytes=ROLL) as w:
        for s in samples:
            w.write(s)


def writer_at(rev: str):
    """`ShardWriter` as it was at git revision `rev`, imported under its own module name."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:vlcorpus/shards.py"], cwd=root, check=True, capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / f"shards_{rev}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module.ShardWriter


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
                n += ti.name.endswith(f".{MEMBER}")
    return n


HASH_SCRIPT = """
import hashlib, sys, time
files = sys.argv[1:]
t = time.perf_counter()
size = 0
for name in files:
    h = hashlib.sha256()
    with open(name, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
print(size / (time.perf_counter() - t) / 1e6)
"""


def checksum_rates(tars: list[Path], repeats: int) -> dict[str, float]:
    """MB/s of each candidate checksum over the same (page-cached) tars, one core, best of `repeats`."""
    import xxhash

    candidates = {"sha256 (OpenSSL, SHA-NI if the CPU has it)": hashlib.sha256, "xxh3-128": xxhash.xxh3_128}
    try:
        import blake3

        candidates["BLAKE3 (one thread)"] = blake3.blake3
    except ImportError:
        print("BLAKE3: not measured (pip install blake3)")
    size = sum(p.stat().st_size for p in tars)
    rates = {}
    for _ in range(repeats):
        for name, make in candidates.items():
            t = time.perf_counter()
            for p in tars:
                h = make()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                h.digest()
            rates[name] = max(rates.get(name, 0.0), size / (time.perf_counter() - t) / 1e6)
        # OpenSSL reads the CPU features from OPENSSL_ia32cap; clearing bit 29 of the second word disables SHA-NI
        env = {**os.environ, "OPENSSL_ia32cap": ":~0x20000000"}
        out = subprocess.run([sys.executable, "-c", HASH_SCRIPT, *map(str, tars)], env=env, check=True,
                             capture_output=True, text=True).stdout
        name = "sha256 (OpenSSL, SHA-NI disabled)"
        rates[name] = max(rates.get(name, 0.0), float(out))
    return rates


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vlcorpus-shard-bench"))
    ap.add_argument("--repeats", type=int, default=2, help="best of N per contender")
    ap.add_argument("--baseline-rev", help="also time the ShardWriter of this git revision (before/after in one run)")
    args = ap.parse_args()
    samples = make_samples(args.gb)
    print(f"{len(samples)} samples; writers roll at {ROLL >> 20} MB; best of {args.repeats}")
    contenders = [("tarfile", write_tarfile, read_tarfile), ("webdataset", write_wds, read_wds),
                  ("vlcorpus", write_ours, read_ours)]
    if args.baseline_rev:
        old = writer_at(args.baseline_rev)
        contenders.append((f"vlcorpus@{args.baseline_rev}", lambda s, out: write_ours(s, out, old), read_ours))
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
    for name in [n for n in results if n.startswith("vlcorpus")]:
        for base in ("tarfile", "webdataset"):
            print(f"{name} / {base}: write {results[name][0] / results[base][0]:.2f}x  "
                  f"read {results[name][1] / results[base][1]:.2f}x")
    shutil.rmtree(args.out, ignore_errors=True)
    write_wds(samples, args.out / "hash")
    for name, rate in checksum_rates(shard_paths(args.out / "hash"), args.repeats).items():
        print(f"checksum {name:45s} {rate:7.0f} MB/s")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
