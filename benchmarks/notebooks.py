"""Notebooks/s and pairs/s of `vlcorpus extract notebooks` versus bare `json.load` + `base64.b64decode` of the same
notebooks, in one run.

    python benchmarks/notebooks.py --input demo/notebooks --copies 8 --num-cpus 2

The input notebooks are copied `--copies` times into a temporary folder. In each copy, one corner pixel of every PNG
output is set to a colour naming the copy, so the copies hold distinct images and the job-wide exact-duplicate
filter does not drop them: every copy does the full work (SVG outputs stay identical, so their copies are dropped
as duplicates after rendering). Three measurements on the same files:
- baseline: one process, `json.load` each notebook and `base64.b64decode` every image output;
- renderer: one process, `renderers.notebook.pairs.render` on each notebook (no Ray, no bounded child, no shards);
- pipeline: the whole job (Ray tasks over batches, bounded child per batch, dedup registry, shards, ledger), timed
  from the job's start with Ray already running; Ray's start-up is reported separately.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from renderers.notebook.pairs import NotebookConfig, render
from vlcorpus import cli
from vlcorpus.document import DocInput
from vlcorpus.ledger import Ledger
from vlcorpus.runtime import init_ray


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


def baseline(paths: list[Path]) -> tuple[float, int]:
    """json.load + b64decode of every image output; returns (seconds, images decoded)."""
    start, images = time.perf_counter(), 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                for mime, value in out.get("data", {}).items():
                    if mime in ("image/png", "image/jpeg"):
                        base64.b64decode("".join(value))
                        images += 1
    return time.perf_counter() - start, images


def renderer(paths: list[Path]) -> tuple[float, int]:
    cfg, start, pairs = NotebookConfig(), time.perf_counter(), 0
    for path in paths:
        stats: Counter = Counter()
        pairs += sum(1 for _ in render(DocInput(str(path), str(path), str(path)), cfg, stats))
    return time.perf_counter() - start, pairs


def pipeline(root: Path, out: Path, num_cpus: int, batch_size: int) -> tuple[float, float, int, dict]:
    start = time.perf_counter()
    init_ray(None, num_cpus)
    ray_s = time.perf_counter() - start
    start = time.perf_counter()
    cli.main(["extract", "notebooks", str(root), "--out", str(out), "--batch-size", str(batch_size)])
    job_s = time.perf_counter() - start
    entries = Ledger(out, "notebook").latest().values()
    status = Counter(e.status for e in entries)
    return ray_s, job_s, sum(e.samples for e in entries), dict(status)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("demo/notebooks"))
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nb-bench-"))
    try:
        paths = make_copies(args.input, work / "in", args.copies)
        mb = sum(p.stat().st_size for p in paths) / 1024**2
        print(f"{len(paths)} notebooks, {mb:.1f} MB ({args.copies} copies of {len(paths) // args.copies})")
        base_s, images = baseline(paths)
        print(f"baseline  json.load+b64decode (1 process): {base_s:7.2f} s  {len(paths) / base_s:8.1f} notebooks/s  "
              f"{images / base_s:8.1f} images/s ({images} images)")
        rend_s, pairs = renderer(paths)
        print(f"renderer  render() in process (1 process):  {rend_s:7.2f} s  {len(paths) / rend_s:8.1f} notebooks/s  "
              f"{pairs / rend_s:8.1f} pairs/s ({pairs} pairs)")
        ray_s, job_s, written, status = pipeline(work / "in", work / "out", args.num_cpus, args.batch_size)
        print(f"pipeline  extract notebooks ({args.num_cpus} CPUs, batch {args.batch_size}): {job_s:7.2f} s  "
              f"{len(paths) / job_s:8.1f} notebooks/s  {written / job_s:8.1f} pairs/s ({written} pairs, {status}); "
              f"Ray start {ray_s:.1f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
