"""Is each page's text what its image shows? tesseract reads every page image back, and the character error rate
between that reading and the sample's text is reported per script (median and p90).

    python benchmarks/ocr_cer.py CORPUS doc_ocr 0.05     # exit status 0 when the Latin-script median is <= 0.05

The tars are read with plain `webdataset`, so the judge shares no code with what it judges. Both texts are NFKC-
normalised and lower-cased, and whitespace and markup characters (markdown, LaTeX braces) are left out, so layout
and syntax are not errors. CER = 1 - difflib's matching ratio (2 x matched characters / both lengths). Tesseract's
language follows the script of the pair's text (tesseract-ocr-jpn/-chi-sim and their -vert models, in
scripts/setup.sh). Even a perfect pair reads back imperfectly: about 0.035 on arXiv pages, 0.04 on web pages,
under 0.01 on English e-book pages, 0.19 on vertical Japanese. A page paired with the wrong text reads 0.5 to 0.9.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import os
import re
import statistics
import subprocess
import sys
import unicodedata

import webdataset as wds
from pylatexenc.latex2text import LatexNodes2Text

MATH_SPAN = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]", re.DOTALL)  # a formula in the corpus's delimiters
IGNORED = re.compile(r"[\s#*_`>|\[\]()\-\\$^{}~]")


def normalise(text: str) -> str:
    return IGNORED.sub("", unicodedata.normalize("NFKC", text).lower())


def as_symbols(text: str) -> str:
    """The text with each formula (`\\(...\\)`, `\\[...\\]`) as the symbols it draws (pylatexenc: `\\frac{\\pi}{a}` ->
    `π/a`): tesseract reads glyphs, so LaTeX's command names would count as errors on a page that shows the formula."""
    return MATH_SPAN.sub(lambda m: LatexNodes2Text().latex_to_text(m.group(1) or m.group(2)), text)


def cer(reference: str, reading: str) -> float:
    if not reference:
        return 1.0
    return 1 - difflib.SequenceMatcher(None, reference, reading, autojunk=False).ratio()


def tesseract_languages(text: str) -> str:
    """By the share of the text's characters in each script."""
    kana = len(re.findall(r"[\u3040-\u30ff]", text))
    han = len(re.findall(r"[\u4e00-\u9fff]", text))
    if kana + han > 0.3 * max(len(text), 1):
        return "jpn+jpn_vert" if kana else "chi_sim+chi_sim_vert"
    return "eng"


def read_back(image: bytes, languages: str) -> str:
    return subprocess.run(["tesseract", "-", "-", "-l", languages, "--psm", "3"], input=image, capture_output=True,
                          env={**os.environ, "OMP_THREAD_LIMIT": "1"}, check=True).stdout.decode("utf-8", "replace")


def page_pairs(corpus: str, category: str):
    """(key, text, first image bytes, sample json) of every sample of the category that has an image, in shard order."""
    tars = sorted(glob.glob(os.path.join(corpus, category, "*.tar")))
    for sample in wds.WebDataset(tars, shardshuffle=False).decode():  # images stay bytes
        segments = sample["json"]["segments"]
        names = [s["image"] for s in segments if "image" in s]
        if names:
            yield sample["__key__"], "".join(s.get("text", "") for s in segments), sample[names[0]], sample["json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("category")
    ap.add_argument("bar", type=float, help="the most the Latin-script median CER may be")
    ap.add_argument("--limit", type=int, default=120, help="pages read back, at an even stride over all of them")
    args = ap.parse_args()
    keys = [key for key, *_ in page_pairs(args.corpus, args.category)]
    chosen = set(keys[:: max(1, len(keys) // args.limit)])
    rates: dict[str, list[float]] = {}
    maths: list[tuple[float, float]] = []  # pages whose text holds a formula as LaTeX: CER as written, as symbols
    for key, text, image, _ in page_pairs(args.corpus, args.category):
        if key in chosen and len(text.strip()) >= 40:
            languages = tesseract_languages(text)
            reading = normalise(read_back(image, languages))
            rates.setdefault(languages, []).append(cer(normalise(text), reading))
            if MATH_SPAN.search(text):
                maths.append((rates[languages][-1], cer(normalise(as_symbols(text)), reading)))
    for languages, r in sorted(rates.items()):
        r.sort()
        print(f"{args.category} [{languages}]: median CER {statistics.median(r):.3f}, p90 {r[int(0.9 * len(r))]:.3f} "
              f"over {len(r)} pages")
    if maths:
        for name, r in (("as written", sorted(m[0] for m in maths)), ("formulas as their symbols", sorted(m[1] for m in maths))):
            print(f"{args.category} [pages with LaTeX formulas, {name}]: median CER {statistics.median(r):.3f}, "
                  f"p90 {r[int(0.9 * len(r))]:.3f} over {len(r)} pages")
    latin = rates.get("eng")
    if not latin:
        print("no Latin-script pages to hold to the bar")
        return 1
    median = statistics.median(latin)
    print(f"{args.category}: Latin-script median CER {median:.3f} over {len(latin)} pages (bar {args.bar})")
    return 0 if median <= args.bar else 1


if __name__ == "__main__":
    sys.exit(main())
