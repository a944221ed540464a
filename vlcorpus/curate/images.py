"""Images: exact (sha256) and perceptual (imagehash's 64-bit pHash) duplicates across the whole corpus, and an
NSFW score from nudenet, whose detector weights (320n.onnx) ship inside its wheel and run on onnxruntime's CPU."""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

EXPOSED = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED",
           "ANUS_EXPOSED")


def image_hashes(data: bytes) -> tuple[str, int]:
    """(sha256 of the bytes, 64-bit pHash of the decoded image)."""
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        ph = imagehash.phash(im)
    return hashlib.sha256(data).hexdigest(), int(str(ph), 16)


@lru_cache(maxsize=1)
def detector():
    from nudenet import NudeDetector

    return NudeDetector(providers=["CPUExecutionProvider"])


def nsfw_score(data: bytes) -> float:
    """The highest score nudenet gives an exposed-body class in the image (0.0 when it finds none)."""
    return max((d["score"] for d in detector().detect(data) if d["class"] in EXPOSED), default=0.0)


class ImageIndex:
    """The images kept so far. Near lookups use multi-index hashing: split the 64 bits into `distance + 1` blocks;
    two hashes within `distance` bits agree exactly on at least one block (pigeonhole), so only hashes that share a
    block are compared."""

    def __init__(self, distance: int):
        self.distance = distance
        self.exact: set[str] = set()
        self.widths = [64 // (distance + 1) + (i < 64 % (distance + 1)) for i in range(distance + 1)]
        self.blocks: dict[tuple[int, int], list[int]] = {}

    def _blocks(self, ph: int):
        shift = 0
        for i, w in enumerate(self.widths):
            yield i, (ph >> shift) & ((1 << w) - 1)
            shift += w

    def seen(self, sha: str, ph: int, near: bool) -> str | None:
        """'exact' or 'near' when a kept image matches, else None."""
        if sha in self.exact:
            return "exact"
        if near:
            for block in self._blocks(ph):
                if any((ph ^ other).bit_count() <= self.distance for other in self.blocks.get(block, ())):
                    return "near"
        return None

    def add(self, sha: str, ph: int) -> None:
        self.exact.add(sha)
        for block in self._blocks(ph):
            self.blocks.setdefault(block, []).append(ph)
