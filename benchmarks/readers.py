"""Size and read time of one corpus in the `vlcorpus/2` layout (one msgpack member per sample) against the same
samples in the `vlcorpus/1` layout (`K.json` + one member per image), and the time each reader of docs/reading.md
takes to load all of it: the project's `read_samples`, plain `webdataset`, Hugging Face `datasets` (`load_dataset`,
which also converts to Arrow) and Ray Data's `read_webdataset` with default arguments (`take_all`).

    PYTHONPATH=. python3 benchmarks/readers.py --samples 4000 --work /tmp/bench_readers

The corpus: a quarter each of captions (one JPEG), document pages (one PNG), interleaved documents (two to four
images, JPEG and PNG) and text; images of 64-640 px of noise (so they do not compress), 40-400 words of text.
`datasets` and Ray Data only load the v2 layout losslessly (docs/reading.md), so they are timed on it alone.
CPU time (user + system of this process; Ray's read tasks run in its workers, not counted) is reported beside wall
time: the box is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, read_samples, shard_paths

WORDS = "the of model vision language page table figure equation data train token image text".split()


def image(rng: random.Random, fmt: str) -> bytes:
    w, h = rng.randint(64, 640), rng.randint(64, 640)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(rng.randint(0, 1 << 30)).integers(0, 256, (h, w, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


def corpus(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 400)))
        kind = ("caption", "doc_ocr", "interleaved", "text")[i % 4]
        meta = {"n": i, kind: {"seed": rng.random()}}
        if kind == "text":
            out.append(Sample(kind, "bench", f"d{i}", 0, f"d{i}", [{"text": text}], meta=meta))
        elif kind == "interleaved":
            names = [f"{j}.{'jpg' if j % 2 else 'png'}" for j in range(rng.randint(2, 4))]
            segs = [seg for name in names for seg in ({"image": name}, {"text": text[: 80]})]
            out.append(Sample(kind, "bench", f"d{i}", 0, f"d{i}", segs,
                              {n_: image(rng, "JPEG" if n_.endswith("jpg") else "PNG") for n_ in names}, meta=meta))
        else:
            name = "0.jpg" if kind == "caption" else "0.png"
            out.append(Sample(kind, "bench", f"d{i}", 0, f"d{i}", [{"image": name}, {"text": text}],
                              {name: image(rng, "JPEG" if kind == "caption" else "PNG")}, meta=meta))
    return out


def v1_members(s: Sample) -> dict:
    d = {"schema": "vlcorpus/1", "category": s.category, "source": s.source, "doc": s.doc, "part": s.part,
         "origin": s.origin, "segments": s.segments, "meta": s.meta}
    return {"__key__": s.key, "json": json.dumps(d, sort_keys=True).encode(), **s.images}


def timed(fn) -> tuple[float, float, object]:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_readers"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    samples = corpus(args.samples)
    v2, v1 = args.work / "v2", args.work / "v1"
    writers = {c: ShardWriter(v2 / c, "bench", max_bytes=64 << 20) for c in {s.category for s in samples}}
    for s in samples:
        writers[s.category].write(s)
    for w in writers.values():
        w.close()
    v1.mkdir(parents=True)
    with wds.ShardWriter(str(v1 / "v1-%06d.tar"), maxsize=64 << 20, verbose=0) as w:
        for s in samples:
            w.write(v1_members(s))
    size = {name: sum(p.stat().st_size for p in shard_paths(d)) for name, d in (("v1", v1), ("v2", v2))}
    tars = {"v1": [str(p) for p in shard_paths(v1)], "v2": [str(p) for p in shard_paths(v2)]}
    print(f"{args.samples} samples, {sum(len(s.images) for s in samples)} images: v1 {size['v1'] / 1e6:.1f} MB in "
          f"{len(tars['v1'])} tars, v2 {size['v2'] / 1e6:.1f} MB in {len(tars['v2'])} tars "
          f"({100 * (size['v2'] / size['v1'] - 1):+.2f}%)")

    def hf():
        from datasets import load_dataset

        with tempfile.TemporaryDirectory(dir=args.work) as cache:
            return len(load_dataset("webdataset", data_files={"train": tars["v2"]}, split="train", cache_dir=cache))

    def ray_data():
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            return len(ray.data.read_webdataset(tars["v2"]).take_all())
        finally:
            ray.shutdown()

    runs = [(f"read_samples {layout}", lambda t=tars[layout]: sum(1 for _ in read_samples(t))) for layout in ("v1", "v2")]
    runs += [(f"webdataset {layout}", lambda t=tars[layout]: sum(1 for _ in wds.WebDataset(t, shardshuffle=False)))
             for layout in ("v1", "v2")]
    runs += [("datasets load_dataset v2", hf), ("ray.data read_webdataset v2", ray_data)]
    for name, fn in runs:
        wall, cpu, n = timed(fn)
        assert n == args.samples, (name, n)
        print(f"{name:30s} {wall:7.2f} s wall {cpu:7.2f} s CPU  {args.samples / wall:8.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
