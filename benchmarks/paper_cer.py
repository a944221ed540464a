"""Tesseract's CER on every page of a paper corpus, split by where the page's text came from (LaTeX or the PDF's
text layer) and by how much of it is maths (LaTeX maths counts against the CER: tesseract reads glyphs), with the
reading and scoring of `benchmarks/ocr_cer.py`.

    PYTHONPATH=. python benchmarks/paper_cer.py CORPUS [--maths-heavy 0.1]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.ocr_cer import MATH_SPAN, cer, normalise, page_pairs, read_back


def maths_share(text: str) -> float:
    return sum(len(m.group(0)) for m in MATH_SPAN.finditer(text)) / max(1, len(text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path)
    p.add_argument("--maths-heavy", type=float, default=0.1, help="share of the text's characters inside maths")
    args = p.parse_args()
    groups: dict[str, list[float]] = defaultdict(list)
    for _, text, image, meta in page_pairs(str(args.corpus), "doc_ocr"):
        if len(text.strip()) < 40:
            continue
        rate = cer(normalise(text), normalise(read_back(image, "eng")))
        kind = "maths-heavy" if maths_share(text) > args.maths_heavy else "prose"
        origin = meta["text_from"]
        for group in ("all", f"from {origin}", kind, f"from {origin}, {kind}"):
            groups[group].append(rate)
    print("| pages | count | median CER | p90 CER |")
    print("|---|---|---|---|")
    for group, rates in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        rates.sort()
        print(f"| {group} | {len(rates)} | {statistics.median(rates):.3f} | {rates[int(0.9 * (len(rates) - 1))]:.3f} |")


if __name__ == "__main__":
    main()
