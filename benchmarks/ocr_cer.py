"""Is each page's text what its image shows? tesseract reads every page image back, and the character error rate
between that reading and the sample's text is reported per script (median and p90).

    python benchmarks/ocr_cer.py CORPUS doc_ocr 0.05     # exit status 0 when the Latin-script median is <= 0.05

The tars are read with plain `webdataset` and `msgpack`, so the judge shares no code with what it judges. Both texts are NFKC-
normalised and lower-cased, and whitespace and markup characters (markdown, LaTeX braces) are left out, so layout
and syntax are not errors. CER = 1 - difflib's matching ratio (2 x matched characters / both lengths). Tesseract's
language follows the script of the pair's text (tesseract-ocr-jpn/-chi-sim and their -vert models, in
scripts/setup.sh). Even a perfect pair reads back imperfectly: about 0.035 on arXiv pages, 0.04 on web pages,
under 0.01 on English e-book pages, 0.19 on vertical Japanese. A page paired with the wrong text reads 0.5 to 0.9.
Pages whose text holds LaTeX formulas (`\\(...\\)`, `\\[...\\]`) are also reported apart: CER as written (LaTeX's
command names count against it), CER with each formula as the symbols it draws, and the share of their prose that
the reading lacks (`prose_missed`): tesseract reads typeset maths poorly, so only the last separates a wrong page
from a hard one.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import unicodedata

import msgpack
import webdataset as wds
from pylatexenc.latex2text import LatexNodes2Text

MATH_SPAN = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]", re.DOTALL)  # a formula in the corpus's delimiters
PICTURE = re.compile(r"!\[.*?\]\(\)", re.DOTALL)  # an image's markdown line: its alt text describes, it is not shown
IGNORED = re.compile(r"[\s#*_`>|\[\]()\-\\$^{}~]")


def normalise(text: str) -> str:
    return IGNORED.sub("", unicodedata.normalize("NFKC", text).lower())


def as_symbols(text: str) -> str:
    """The text with each formula (`\\(...\\)`, `\\[...\\]`) as the symbols it draws (pylatexenc: `\\frac{\\pi}{a}` ->
    `π/a`): tesseract reads glyphs, so LaTeX's command names would count as errors on a page that shows the formula."""
    return MATH_SPAN.sub(lambda m: LatexNodes2Text().latex_to_text(m.group(1) or m.group(2)), text)


def prose_missed(text: str, reading: str) -> float:
    """The share of the page's prose (its text less formulas and pictures' alt text) that the reading does not hold.
    What tesseract makes of a typeset formula is not counted against the page; a prose word the image does not show
    still is: the measure of "no text the image does not show" on a maths page, where the formulas' LaTeX comes from
    the document's own TeX or MathML and tesseract cannot read maths back."""
    prose = normalise(MATH_SPAN.sub(" ", PICTURE.sub(" ", text)))
    blocks = difflib.SequenceMatcher(None, prose, reading, autojunk=False).get_matching_blocks()
    return 1 - sum(b.size for b in blocks) / max(1, len(prose))


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
    """(key, text, first image bytes, meta) of every sample of the category that has an image, in shard order: a
    `vlcorpus/2` sample is one msgpack member (`sample.mp`, images inline, meta as JSON text), a `vlcorpus/1` one a
    json member beside its image members."""
    tars = sorted(glob.glob(os.path.join(corpus, category, "*.tar")))
    if not tars:
        sys.exit(f"no shards under {os.path.join(corpus, category)}: give a corpus folder and one of its categories")
    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False):  # raw bytes: nothing decoded for us
        if "sample.mp" in sample:
            record = msgpack.unpackb(sample["sample.mp"], raw=False)
            segments, meta = record["segments"], json.loads(record["meta"])
            images = [s["bytes"] for s in segments if s["image"]]
        else:
            record = json.loads(sample["json"])
            segments, meta = record["segments"], record.get("meta", {})
            images = [sample[s["image"]] for s in segments if "image" in s]
        if images:
            yield sample["__key__"], "".join(s.get("text", "") for s in segments), images[0], meta


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
    maths: list[tuple[float, float, float]] = []  # pages with a LaTeX formula: CER as written, as symbols; prose missed
    for key, text, image, _ in page_pairs(args.corpus, args.category):
        if key in chosen and len(text.strip()) >= 40:
            languages = tesseract_languages(text)
            reading = normalise(read_back(image, languages))
            rates.setdefault(languages, []).append(cer(normalise(text), reading))
            if MATH_SPAN.search(text):
                maths.append((rates[languages][-1], cer(normalise(as_symbols(text)), reading), prose_missed(text, reading)))
    for languages, r in sorted(rates.items()):
        r.sort()
        print(f"{args.category} [{languages}]: median CER {statistics.median(r):.3f}, p90 {r[int(0.9 * len(r))]:.3f} "
              f"over {len(r)} pages")
    if maths:
        for i, name in enumerate(("CER as written", "CER with formulas as their symbols", "prose the image lacks")):
            r = sorted(m[i] for m in maths)
            print(f"{args.category} [pages with LaTeX formulas, {name}]: median {statistics.median(r):.3f}, "
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
