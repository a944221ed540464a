"""Cost of issue 30's containment: the tree check run after every TeX tool, one poll of the disk cap, and where the
cap stops a TeX `\\write` loop. `python -m benchmarks.containment` (needs TeX Live and bubblewrap)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from renderers.paper.arxiv import PaperConfig, render_arxiv
from renderers.paper.sandbox import ToolDiskLimit, check_tree, tree_bytes
from vlcorpus.document import DocInput

ROOT = Path(__file__).resolve().parent.parent
LOOP = ("\\documentclass{article}\\begin{document}\\newwrite\\f\\immediate\\openout\\f=junk.txt"
        "\\loop\\immediate\\write\\f{%s}\\iftrue\\repeat\\end{document}\n" % ("x" * 200))


def per_call_ms(fn, tree: Path, n: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(tree)
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(ROOT / "demo/arxiv/re-gorder", tmp / "demo")
        for i in range(5000):
            folder = tmp / "many" / f"d{i % 50}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i}.tex").write_text("x" * 100)
        for name in ("demo", "many"):
            entries = sum(1 for _ in (tmp / name).rglob("*"))
            print(f"{name}: {entries} entries, check_tree {per_call_ms(lambda t: check_tree(t, 'm'), tmp / name):.1f} ms, "
                  f"tree_bytes {per_call_ms(tree_bytes, tmp / name):.1f} ms")
        for cap in (20, 100):
            folder = tmp / f"flood{cap}"
            folder.mkdir()
            (folder / "paper.tex").write_text(LOOP)
            start = time.perf_counter()
            try:
                list(render_arxiv(DocInput(folder.name, folder.name, str(folder), {"source": str(folder)}),
                                  PaperConfig(max_tree_mb=cap), Counter()))
            except ToolDiskLimit as e:
                print(f"cap {cap} MB: stopped after {time.perf_counter() - start:.1f} s: {e}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
