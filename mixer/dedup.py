"""Deduplication before mixing: exact (normalised text + image bytes) always, near-duplicate text on request.

The digests are computed where the samples are read (`mixer.scan`, in parallel); the decisions are taken here, over
a category's samples in one canonical order (corpora as given, shards as indexed, members as stored), so which copy
of a duplicate is kept depends neither on the seed nor on how many tasks read or write.

Exact: a sample whose normalised text and image bytes hash like an earlier one's is dropped (`exact_duplicate`); a
key seen before is dropped as `duplicate_key` when the content is the same, as `key_conflict` when it differs (two
corpora rendered the same document differently: the first one kept, the conflict counted and warned about).
Near: MinHash over word 3-grams with datasketch's LSH index; a sample is dropped when an earlier kept sample has
estimated Jaccard similarity above the threshold AND the same images (two captions that read alike but show
different pictures are not duplicates).
"""

from __future__ import annotations

import unicodedata

import numpy as np
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


class Signer:
    """MinHash signatures of normalised texts (the permutations are drawn once, not per sample)."""

    def __init__(self, num_perm: int):
        from datasketch import MinHash

        self._minhash = MinHash
        self._template = MinHash(num_perm=num_perm)

    def __call__(self, text: str) -> bytes | None:
        grams = shingles(text)
        if not grams:
            return None
        t = self._template
        m = self._minhash(num_perm=t.num_perm, permutations=t.permutations, scheme=t.scheme)
        m.update_batch(grams)
        return m.hashvalues.astype(np.uint64).tobytes()


class Deduper:
    """Remembers what was kept; `check(...)` returns None to keep a sample or the reason to drop it."""

    def __init__(self, near_dup: bool = False, threshold: float = 0.8, num_perm: int = 128):
        self.keys: dict[str, bytes] = {}
        self.hashes: set[bytes] = set()
        self.lsh = None
        if near_dup:
            from datasketch import MinHash, MinHashLSH

            self._minhash = MinHash
            self._template = MinHash(num_perm=num_perm)
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
            self.images_of: dict[str, bytes] = {}

    def check(self, key: str, digest: bytes, images: bytes = b"", signature: bytes | None = None) -> str | None:
        """`digest`: content_hash of the normalised text and images; `images`: image_digest; `signature`: MinHash."""
        if key in self.keys:
            return "duplicate_key" if self.keys[key] == digest else "key_conflict"
        if digest in self.hashes:
            return "exact_duplicate"
        if self.lsh is not None and signature is not None:
            t = self._template
            m = self._minhash(num_perm=t.num_perm, permutations=t.permutations, scheme=t.scheme,
                              hashvalues=np.frombuffer(signature, dtype=np.uint64))
            if any(self.images_of[k] == images for k in self.lsh.query(m)):
                return "near_duplicate"
            self.lsh.insert(key, m)
            self.images_of[key] = images
        self.keys[key] = digest
        self.hashes.add(digest)
        return None
