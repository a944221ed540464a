"""Notebooks/s of `vlcorpus extract notebooks` versus bare `json.load` + `base64.b64decode` of the same notebooks and
the renderer alone, in one run (contenders interleaved round by round), with the job's fixed start-up apart.

    python benchmarks/notebooks.py --input demo/notebooks --copies 8 --num-cpus 1 [--baseline-rev REV]

The input notebooks are copied `--copies` times into a temporary folder. In each copy, one corner pixel of every PNG
output is set to a colour naming the copy, so the copies hold distinct images and the job-wide exact-duplicate
filter does not drop them: every copy does the full work (SVG outputs stay identical, so their copies are dropped
as duplicates after rendering). Measured on the same files:
- baseline: one process, `json.load` each notebook and `base64.b64decode` every image output;
- renderer: one process, `renderers.notebook.pairs.render` on each notebook (no Ray, no bounded child, no shards);
- job: the whole command in a fresh process (benchmarks/run_job.py: CLI, Ray start, tasks, bounded children,
  dedup registry, shards, ledger) over all copies and over one notebook; the one-notebook job is the fixed
  start-up, the difference is what the job spends on the notebooks. With `--num-cpus 1` that is the per-core rate.
Wall and CPU seconds (all the job's processes) are both reported: CPU seconds give a per-core rate that a machine
shared with other jobs distorts less. `--baseline-rev` runs the job with an earlier commit's code as well.
"""

from __future__ import annotations

import argparse
import base64
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

from PIL import Image

from benchmarks.run_job import source_tree
from renderers.notebook.pairs import NotebookConfig, render
from vlcorpus.document import DocInput
from vlcorpus.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def mark_png(png: bytes, copy: int) -> bytes:
    """The same plot with its top-left pixel set to a colour that names the copy."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        im.putpixel((0, 0), (copy % 256, copy // 256 % 256, 7, 255)[: len(im.getbands())])
        out = io.BytesIO()
        im.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def make_copies(src: Path, dst: Path, copies: int) -> list[Path]:
    paths = []
    for nb_path in sorted(src.rglob("*.ipynb")):
        for k in range(copies):
            nb = json.loads(nb_path.read_text("utf-8"))
            for cell in nb["cells"]:
                for out in cell.get("outputs", []):
                    data = out.get("data", {})
                    if "image/png" in data:
                        png = mark_png(base64.b64decode("".join(data["image/png"])), k)
                        data["image/png"] = base64.b64encode(png).decode("ascii")
            path = dst / f"copy{k:03d}" / nb_path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(nb, indent=1), "utf-8")
            paths.append(path)
    return paths


def baseline(paths: list[Path]) -> int:
    """json.load + b64decode of every image output; returns the images decoded."""
    images = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                for mime, value in out.get("data", {}).items():
                    if mime in ("image/png", "image/jpeg"):
                        base64.b64decode("".join(value))
                        images += 1
    return images


def renderer(paths: list[Path]) -> int:
    cfg, pairs = NotebookConfig(), 0
    for path in paths:
        pairs += sum(1 for _ in render(DocInput(str(path), str(path), str(path)), cfg, Counter()))
    return pairs


def job(tree: Path, root: Path, out: Path, num_cpus: int, batch_size: int) -> tuple[int, float]:
    """(pairs written, CPU seconds of all the job's processes) of `extract notebooks` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_job.py"), "extract", "notebooks", str(root),
                          "--out", str(out), "--num-cpus", str(num_cpus), "--batch-size", str(batch_size)],
                         env=env, cwd=tree, check=True, capture_output=True, text=True)
    entries = Ledger(out, "notebook").latest().values()
    assert all(e.status == "ok" for e in entries), Counter(e.status for e in entries)
    return sum(e.samples for e in entries), json.loads(res.stdout.splitlines()[-1])["cpu_seconds"]


def measure(fn, *args) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, count); a job reports its own CPU seconds, in-process work its process time."""
    t, c = time.perf_counter(), time.process_time()
    n = fn(*args)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return (wall, n[1], n[0]) if isinstance(n, tuple) else (wall, cpu, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("demo/notebooks"))
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline-rev", help="also run the job with this git revision's code")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nb-bench-"))
    try:
        paths = make_copies(args.input, work / "in", args.copies)
        one = work / "one"
        one.mkdir()
        shutil.copy(paths[0], one)
        trees = {"job": ROOT}
        if args.baseline_rev:
            trees[f"job@{args.baseline_rev}"] = source_tree(args.baseline_rev, work / "before")
        mb = sum(p.stat().st_size for p in paths) / 1024**2
        print(f"{len(paths)} notebooks, {mb:.1f} MB ({args.copies} copies of {len(paths) // args.copies}); "
              f"jobs with --num-cpus {args.num_cpus}, batch {args.batch_size}")
        contenders = [("baseline json.load+b64decode", baseline, (paths,)), ("renderer in process", renderer, (paths,))]
        for name, tree in trees.items():
            contenders += [(f"{name} start-up (1 notebook)", job, (tree, one, work / "out", args.num_cpus, args.batch_size)),
                           (f"{name} ({len(paths)} notebooks)", job, (tree, work / "in", work / "out", args.num_cpus,
                                                                      args.batch_size))]
        runs: dict[str, list[tuple[float, float, int]]] = {}
        for r in range(args.rounds):
            for name, fn, fargs in contenders:
                wall, cpu, n = measure(fn, *fargs)
                runs.setdefault(name, []).append((wall, cpu, n))
                print(f"round {r} {name:36s} {wall:8.2f} s  CPU {cpu:7.2f} s  ({n} images/pairs; load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
        med = {name: (statistics.median(w for w, _, _ in v), statistics.median(c for _, c, _ in v), v[-1][2])
               for name, v in runs.items()}
        print(f"\nmedian of {args.rounds} rounds; per-core = notebooks per CPU-second")
        for name, (wall, cpu, _) in med.items():
            print(f"  {name:36s} {wall:8.2f} s {len(paths) / wall:7.2f} nb/s  CPU {cpu:7.2f} s {len(paths) / cpu:7.2f} nb/CPU-s")
        for name in trees:
            (w1, c1, _), (wn, cn, pairs) = med[f"{name} start-up (1 notebook)"], med[f"{name} ({len(paths)} notebooks)"]
            n = len(paths) - 1
            print(f"  {name}: fixed start-up {w1:.2f} s; the other {n} notebooks {wn - w1:.2f} s = {n / (wn - w1):.2f} nb/s "
                  f"with {args.num_cpus} CPU(s), {n / (cn - c1):.2f} nb per CPU-second; {pairs} pairs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
