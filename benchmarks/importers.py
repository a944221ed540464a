"""Importer jobs against a bare single-process read + decode of the same inputs, with the job's fixed start-up
measured apart, in one run (contenders interleaved round by round).

Inputs (generated): `caption` = one Parquet file of JPEG images (HF `{"bytes", "path"}` structs) with captions;
`text` = one JSONL file of ~1.5 KB text records. For each kind and round:
1. bare: one process, `ParquetFile.iter_batches` + PIL full decode of every image / JSONL read + `json.loads`;
2. renderer: one process, the importer's renderer over every input piece (reading, checks, `Sample`s; no shards);
3. job: `vlcorpus import KIND` as a user runs it (a fresh process through benchmarks/run_job.py: CLI, embedded
   Ray start, bounded workers, shards, ledger), on the file and on a 10-record file of the same kind; the 10-record
   job's wall time is the fixed start-up, and the big job's time minus it is what the job spends on the records.
   CPU seconds (all the job's processes) are reported beside: per-core figures a shared machine distorts less.

    python3 benchmarks/importers.py --rows 20000 --num-cpus 2 --rounds 2 [--baseline-rev b686ba2]

`--baseline-rev` also runs the jobs with the code of an earlier commit (git archive into a temporary folder),
interleaved with the current code: before and after in one run.

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
import shutil
import statistics
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

from benchmarks.run_job import source_tree

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the of model vision language page table figure equation data train token image text corpus".split()


def make_parquet(path: Path, n: int, row_group: int, side: int) -> None:
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, n, row_group):
        images, captions = [], []
        for i in range(start, min(n, start + row_group)):
            cells = max(1, side // 16)
            base = rng.integers(0, 255, (cells, cells, 3), dtype=np.uint8)
            arr = np.kron(base, np.ones((side // cells, side // cells, 1), dtype=np.uint8))
            arr = arr + rng.integers(0, 24, arr.shape, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=85)
            images.append({"bytes": buf.getvalue(), "path": f"{i}.jpg"})
            captions.append(f"synthetic image number {i} with blocks of colour")
        table = pa.table({"image": images, "caption": captions})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def make_jsonl(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            paras = ["\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(4)) for _ in range(3)]
            f.write(json.dumps({"id": i, "text": "\n\n".join(paras)}) + "\n")


def bare(kind: str, path: Path) -> int:
    n = 0
    if kind == "caption":
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=256, columns=["image", "caption"]):
                for rec in batch.to_pylist():
                    Image.open(io.BytesIO(rec["image"]["bytes"])).convert("RGB")
                    n += 1
    else:
        with open(path, encoding="utf-8") as f:
            for line in f:
                n += bool(json.loads(line)["text"])
    return n


def renderer(kind: str, path: Path, staging: Path) -> int:
    from renderers.records import caption, text
    from renderers.records.discovery import record_inputs

    module, cfg = (caption, caption.CaptionConfig()) if kind == "caption" else (text, text.TextConfig(min_chars=10))
    stats: Counter = Counter()
    return sum(1 for d in record_inputs(path, staging) for _ in module.render(d, cfg, stats))


CPU: dict[tuple[str, str], list[float]] = {}


def job(tree: Path, kind: str, path: Path, out: Path, num_cpus: int) -> tuple[int, float]:
    """(samples written, CPU seconds of all the job's processes)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    args = [sys.executable, str(ROOT / "benchmarks" / "run_job.py"), "import", kind, str(path), "--out", str(out),
            "--num-cpus", str(num_cpus)]
    if kind == "text":
        args += ["--set", "min_chars=10"]
    res = subprocess.run(args, env=env, cwd=tree, check=True, capture_output=True, text=True)
    category = "caption" if kind == "caption" else "text"
    return json.loads((out / category / "index.json").read_text())["samples"], json.loads(res.stdout.splitlines()[-1])["cpu_seconds"]


def timed(fn, *args) -> tuple[float, int, float]:
    """(wall seconds, samples, CPU seconds); in-process contenders report their own process time."""
    t, c = time.perf_counter(), time.process_time()
    n = fn(*args)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return (wall, *n) if isinstance(n, tuple) else (wall, n, cpu)


_MEASURED = """
import json, resource, sys, time
from pathlib import Path
t = time.perf_counter()
if sys.argv[1] == "bare":
    n = len(json.load(open(sys.argv[2], "rb"))["annotations"])
else:
    from renderers.records.discovery import record_inputs
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["caption", "text"], choices=["caption", "text"])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--row-group", type=int, default=500, help="Parquet row group (one job input each)")
    p.add_argument("--side", type=int, default=64, help="image side in pixels")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline-rev", help="also run the jobs with this git revision's code")
    p.add_argument("--coco-json-gb", type=float, help="measure the large-JSON discovery instead, on a file of this size")
    p.add_argument("--bare-max-gb", type=float, default=0.25, help="largest file to also json.load whole (default %(default)s)")
    args = p.parse_args()
    if args.coco_json_gb:
        large_json(args.coco_json_gb, args.bare_max_gb)
        return
    tmp = Path(tempfile.mkdtemp(prefix="importers-bench-"))
    try:
        trees = {"job": ROOT}
        if args.baseline_rev:
            trees[f"job@{args.baseline_rev}"] = source_tree(args.baseline_rev, tmp / "before")
        files = {}
        for kind in args.kinds:
            big, small = tmp / f"{kind}-big", tmp / f"{kind}-small"
            big.mkdir(), small.mkdir()
            if kind == "caption":
                make_parquet(big / "data.parquet", args.rows, args.row_group, args.side)
                make_parquet(small / "data.parquet", 10, 10, args.side)
            else:
                make_jsonl(big / "data.jsonl", args.rows)
                make_jsonl(small / "data.jsonl", 10)
            files[kind] = (big, small)
        times: dict[tuple[str, str], list[float]] = {}
        counts: dict[tuple[str, str], int] = {}
        for r in range(args.rounds):
            for kind, (big, small) in files.items():
                contenders = [("bare", bare, (kind, big / next(big.iterdir()).name)),
                              ("renderer", renderer, (kind, big, tmp / "staging"))]
                for name, tree in trees.items():
                    contenders += [(f"{name} start-up (10 records)", job, (tree, kind, small, tmp / "out", args.num_cpus)),
                                   (f"{name} ({args.rows} records)", job, (tree, kind, big, tmp / "out", args.num_cpus))]
                for name, fn, fargs in contenders:
                    s, n, cpu = timed(fn, *fargs)
                    times.setdefault((kind, name), []).append(s)
                    CPU.setdefault((kind, name), []).append(cpu)
                    counts[(kind, name)] = n
                    print(f"round {r} {kind:8s} {name:40s} {n:7d} samples {s:8.2f} s, CPU {cpu:7.2f} s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"\n{os.cpu_count()} CPUs, jobs with --num-cpus {args.num_cpus}; median of {args.rounds} rounds")
        for kind in files:
            med = {name: statistics.median(v) for (k, name), v in times.items() if k == kind}
            cpu = {name: statistics.median(v) for (k, name), v in CPU.items() if k == kind}
            base, base_cpu = med["bare"], cpu["bare"]
            print(f"\n{kind}: bare {counts[(kind, 'bare')]} records {base:.2f} s (CPU {base_cpu:.2f} s)")
            for name, s in med.items():
                print(f"  {name:40s} {s:8.2f} s  {counts[(kind, name)] / s:9.1f} samples/s   CPU {cpu[name]:7.2f} s")
            for name in trees:
                small, big = f"{name} start-up (10 records)", f"{name} ({args.rows} records)"
                wall, work = med[big] - med[small], cpu[big] - cpu[small]
                print(f"  {name}: fixed start-up {med[small]:.2f} s (CPU {cpu[small]:.2f} s); the records "
                      f"{wall:.2f} s = {wall / base:.2f}x bare, CPU {work:.2f} s = {work / base_cpu:.2f}x bare's CPU")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
