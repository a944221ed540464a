"""Deduplication before mixing: exact (normalised text + image bytes) always, near-duplicate text on request.

Exact: a sample whose normalised text and image bytes hash like an earlier one's, or whose key was already
taken (the same sample reached through two corpora), is dropped. Near: MinHash over word 3-grams with
datasketch's LSH index; a sample is dropped when an earlier kept sample has estimated Jaccard similarity above
the threshold AND the same images (two captions that read alike but show different pictures are not duplicates).
"""

from __future__ import annotations

import unicodedata

import xxhash

from vlcorpus.sample import Sample


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: formatting differences do not make a sample new."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def image_digest(sample: Sample) -> bytes:
    """128-bit xxh3 of the images in segment order: dedup needs no cryptographic hash, and xxh3 runs at memory speed."""
    h = xxhash.xxh3_128()
    for seg in sample.segments:
        if "image" in seg:
            data = sample.images[seg["image"]]
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.digest()


def content_hash(text: str, images: bytes) -> bytes:
    return xxhash.xxh3_128_digest(text.encode("utf-8") + b"\0" + images)


def shingles(text: str) -> list[bytes]:
    words = text.split()
    if len(words) < 3:
        return [text.encode("utf-8")] if text else []
    return [" ".join(words[i : i + 3]).encode("utf-8") for i in range(len(words) - 2)]


class Deduper:
    """Remembers what was kept; `check(sample)` returns None to keep it or the reason to drop it."""

    def __init__(self, near_dup: bool = False, threshold: float = 0.8, num_perm: int = 128):
        self.keys: set[str] = set()
        self.hashes: set[bytes] = set()
        self.lsh = None
        if near_dup:
            from datasketch import MinHash, MinHashLSH

            self._minhash = MinHash
            self._template = MinHash(num_perm=num_perm)
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
            self.images_of: dict[str, bytes] = {}

    def check(self, sample: Sample) -> str | None:
        key = sample.key
        if key in self.keys:
            return "duplicate_key"
        text = normalise(sample.text)
        images = image_digest(sample)
        digest = content_hash(text, images)
        if digest in self.hashes:
            return "exact_duplicate"
        if self.lsh is not None and (grams := shingles(text)):
            t = self._template
            m = self._minhash(num_perm=t.num_perm, permutations=t.permutations, scheme=t.scheme)
            m.update_batch(grams)
            if any(self.images_of[k] == images for k in self.lsh.query(m)):
                return "near_duplicate"
            self.lsh.insert(key, m)
            self.images_of[key] = images
        self.keys.add(key)
        self.hashes.add(digest)
        return None
