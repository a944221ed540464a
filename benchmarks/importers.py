"""Samples/s of the caption importer from Parquet versus bare pyarrow reading + image decode of the same file; and
the discovery of a large COCO captions JSON versus a bare `json.load` of it.

Parquet: one run, one generated file (JPEG photos-like noise images with captions in HF `{"bytes", "path"}` structs):
1. bare: `ParquetFile.iter_batches` + PIL full decode of every image (the floor any importer pays);
2. renderer: `renderers.records.caption.render` over every row-group input in this process (reading, checks, Samples);
3. job: `vlcorpus import caption` end to end on a local Ray (bounded child processes, shards, sidecars, ledger);
   Ray is started before the clock starts (its start-up time is printed on its own).

    python3 benchmarks/importers.py [--images 3000] [--row-group 250] [--num-cpus 2]

Large JSON (`--coco-json-gb G`): a COCO `captions_train2017.json` of about G GB (tests/dataset_layouts.py's
`write_coco_large`), then, each in a fresh process with its peak RSS: `record_inputs` (the streaming read that writes
the JSONL pieces and the image lookup) and, up to `--bare-max-gb`, a bare `json.load` of the same file.

    python3 benchmarks/importers.py --coco-json-gb 2 [--bare-max-gb 0.25]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def make_parquet(path: Path, n: int, row_group: int, side: int = 256) -> None:
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, n, row_group):
        images, captions = [], []
        for i in range(start, min(n, start + row_group)):
            base = rng.integers(0, 255, (side // 16, side // 16, 3), dtype=np.uint8)
            arr = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8)) + rng.integers(0, 24, (side, side, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=85)
            images.append({"bytes": buf.getvalue(), "path": f"{i}.jpg"})
            captions.append(f"synthetic image number {i} with blocks of colour")
        table = pa.table({"image": images, "caption": captions})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def bare(path: Path) -> int:
    n = 0
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=256, columns=["image", "caption"]):
            for rec in batch.to_pylist():
                Image.open(io.BytesIO(rec["image"]["bytes"])).convert("RGB")
                n += 1
    return n


def renderer(path: Path, staging: Path) -> int:
    from pipelines.records import record_inputs
    from renderers.records import caption

    cfg, stats = caption.CaptionConfig(), Counter()
    return sum(1 for d in record_inputs(path, staging) for _ in caption.render(d, cfg, stats))


def start_ray(num_cpus: int) -> int:
    from vlcorpus.runtime import init_ray

    init_ray(None, num_cpus)
    return 0


def job(path: Path, out: Path, num_cpus: int) -> int:
    from vlcorpus.cli import main as cli

    assert cli(["import", "caption", str(path), "--out", str(out), "--num-cpus", str(num_cpus)]) == 0
    return json.loads((out / "caption" / "index.json").read_text())["samples"]


def timed(fn, *args) -> tuple[int, float]:
    t = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - t


_MEASURED = """
import json, resource, sys, time
from pathlib import Path
t = time.perf_counter()
if sys.argv[1] == "bare":
    n = len(json.load(open(sys.argv[2], "rb"))["annotations"])
else:
    from pipelines.records import record_inputs
    n = len(record_inputs(Path(sys.argv[2]), Path(sys.argv[3]), (".json",), 2000))
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"n": n, "seconds": time.perf_counter() - t, "cpu": use.ru_utime + use.ru_stime, "peak_mb": use.ru_maxrss / 1024}))
"""


def measured(*argv: str) -> dict:
    """Run one measurement in a fresh process (its own peak RSS)."""
    root = str(Path(__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-c", _MEASURED, *argv], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])})
    return json.loads(res.stdout)


def large_json(gb: float, bare_max_gb: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dataset_layouts import write_coco_large

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        exp = write_coco_large(tmp / "coco", target_bytes=int(gb * 1024**3))
        path = exp.input / "annotations" / "captions_train2017.json"
        size = path.stat().st_size
        print(f"file: {size / 1024**2:,.0f} MB, {exp.records:,} captions (written in {time.perf_counter() - t:.0f} s), cpus={os.cpu_count()}")
        ours = measured("discover", str(exp.input), str(tmp / "staging"))
        staged = sum(p.stat().st_size for p in (tmp / "staging").rglob("*") if p.is_file())
        print(f"record_inputs (streaming)   {ours['seconds']:8.1f} s wall {ours['cpu']:8.1f} s CPU "
              f"{size / 1024**2 / ours['cpu']:7.1f} MB/CPU-s  peak RSS {ours['peak_mb']:7.0f} MB  ({ours['n']} pieces, "
              f"{staged / 1024**2:,.0f} MB staged)")
        if gb <= bare_max_gb:
            bare = measured("bare", str(path))
            print(f"bare json.load              {bare['seconds']:8.1f} s wall {bare['cpu']:8.1f} s CPU "
                  f"{size / 1024**2 / bare['cpu']:7.1f} MB/CPU-s  peak RSS {bare['peak_mb']:7.0f} MB  ({bare['n']:,} annotations)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--row-group", type=int, default=250)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--coco-json-gb", type=float, help="measure the large-JSON discovery instead, on a file of this size")
    p.add_argument("--bare-max-gb", type=float, default=0.25, help="largest file to also json.load whole (default %(default)s)")
    args = p.parse_args()
    if args.coco_json_gb:
        large_json(args.coco_json_gb, args.bare_max_gb)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "captions.parquet"
        make_parquet(path, args.images, args.row_group)
        size_mb = path.stat().st_size / 1024**2
        results = {}
        _, ray_start = timed(start_ray, args.num_cpus)
        for name, fn, fargs in (("bare pyarrow + PIL decode", bare, (path,)),
                                ("caption renderer, in process", renderer, (path, tmp / "staging")),
                                (f"vlcorpus import caption, Ray num_cpus={args.num_cpus}", job, (path, tmp / "out", args.num_cpus))):
            n, s = timed(fn, *fargs)
            results[name] = {"samples": n, "seconds": round(s, 2), "samples_per_s": round(n / s, 1)}
        print(f"file: {args.images} JPEG images 256x256, {size_mb:.1f} MB, row groups of {args.row_group}, cpus={os.cpu_count()}")
        print(f"Ray start-up (not in the job figure): {ray_start:.1f} s")
        for name, r in results.items():
            print(f"{name:<45} {r['samples']:>6} samples {r['seconds']:>8.2f} s {r['samples_per_s']:>9.1f} samples/s")


if __name__ == "__main__":
    main()
