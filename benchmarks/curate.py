"""Curation: each filter's throughput against the bare library call on the same inputs in one run, then language
accuracy on documents of known language.

    python benchmarks/curate.py TEXT_CORPUS IMAGE_CORPUS [--known FOLDER_LANGS] [--repeat 3]

TEXT_CORPUS's text samples feed the text filters, IMAGE_CORPUS's images the image filters. Ours and the bare call
alternate per input, so both see the same load. "Bare" is the library doing the same work without our wrapper:
py3langid's classify, datatrove's four filters' `filter` in turn, the same regexes substituted without validation
or counting, imagehash's pHash + hashlib, nudenet's detect, datasketch's MinHash over the same shingles. Language
accuracy: a text sample's truth is the first folder of its `doc` (en/, zh/, ja/, ar/; `mixed/` is reported apart).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time
from collections import Counter
from collections.abc import Callable

import imagehash
from PIL import Image

from mixer.dedup import normalise, shingles
from vlcorpus.curate import pii
from vlcorpus.curate.decontam import NUM_PERM, signature
from vlcorpus.curate.images import detector, image_hashes, nsfw_score
from vlcorpus.curate.language import MAX_CHARS, identifier, identify
from vlcorpus.curate.quality import quality
from vlcorpus.shards import read_samples, shard_paths


def pair(ours: Callable, bare: Callable, inputs: list, repeat: int) -> tuple[float, float]:
    """Seconds for ours and bare over every input, `repeat` times, interleaved input by input, after one untimed pass
    of both (spaCy's tokenizer caches what it has seen: whichever met a text first would pay for both)."""
    for x in inputs:
        ours(x)
        bare(x)
    t_ours = t_bare = 0.0
    for _ in range(repeat):
        for x in inputs:
            t0 = time.perf_counter()
            ours(x)
            t1 = time.perf_counter()
            bare(x)
            t_bare += time.perf_counter() - t1
            t_ours += t1 - t0
    return t_ours, t_bare


def uncached(fn: Callable) -> Callable:
    """datatrove keeps the words of its last few texts (`split_into_parts`' lru_cache): whichever of ours and bare ran
    second on a text would reuse the first's tokenisation, so each call starts without it."""
    from datatrove.utils.text import split_into_parts

    def call(x):
        split_into_parts.cache_clear()
        return fn(x)

    return call


def bare_quality(text: str) -> None:
    from datatrove.data import Document

    for _, flt in quality("en").filters:
        r = flt.filter(Document(text=text, id=""))
        if not (r[0] if isinstance(r, tuple) else r):
            return


def bare_pii(text: str) -> None:
    for kind, pattern, _ in pii.PATTERNS:
        text = pattern.sub(pii.PLACEHOLDERS[kind], text)


def bare_minhash(text: str) -> None:
    from datasketch import MinHash

    t = _template()
    m = MinHash(num_perm=NUM_PERM, permutations=t.permutations, scheme=t.scheme)
    m.update_batch(shingles(normalise(text)))


_t = None


def _template():
    global _t
    if _t is None:
        from datasketch import MinHash

        _t = MinHash(num_perm=NUM_PERM)
    return _t


def bare_hashes(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        imagehash.phash(im)
    hashlib.sha256(data).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("text_corpus")
    ap.add_argument("image_corpus")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=60, help="images used at most")
    args = ap.parse_args()
    texts = [s.text for s in read_samples(shard_paths(args.text_corpus))]
    en = [s.text for s in read_samples(shard_paths(args.text_corpus)) if s.meta.get("language") == "en"]
    images = [d for s in read_samples(shard_paths(args.image_corpus)) for d in s.images.values()][: args.images]
    quality("en"), identifier(), detector(), signature("warm up the signer"), _template()  # loaded before timing
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} texts ({mb:.2f} MB, {len(en)} English), {len(images)} images, repeat {args.repeat}")
    rows = [
        ("language (py3langid)", identify, lambda t: identifier().classify(t[:MAX_CHARS]), texts),
        ("quality (datatrove x4, en)", uncached(lambda t: quality("en").verdict(t)), uncached(bare_quality), en),
        ("pii (regex)", pii.redact, bare_pii, texts),
        ("minhash (datasketch)", signature, bare_minhash, texts),
        ("image hashes (imagehash+sha256)", image_hashes, bare_hashes, images),
        ("nsfw (nudenet)", nsfw_score, lambda d: detector().detect(d), images),
    ]
    print("| filter | inputs | ours /s | bare /s | ours/bare time |")
    print("|---|---|---|---|---|")
    for name, ours, bare, inputs in rows:
        t_ours, t_bare = pair(ours, bare, inputs, args.repeat)
        n = len(inputs) * args.repeat
        print(f"| {name} | {len(inputs)} | {n / t_ours:.1f} | {n / t_bare:.1f} | {t_ours / t_bare:.2f}x |")
    tally: Counter = Counter()
    for s in read_samples(shard_paths(args.text_corpus)):
        tally[s.doc.split("/")[0], s.meta["language"]] += 1
    print("language (truth -> identified: samples):", dict(sorted(tally.items())))


if __name__ == "__main__":
    main()
