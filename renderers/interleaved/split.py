"""Long documents -> parts under a token and image budget, cut only between paragraphs.

An image travels with the paragraph that introduces it (the text right before it) and with the captions that
follow it: that run is one atom, never cut. Atoms are packed greedily in reading order; a part is closed when the
next atom would take it past `max_tokens` (text tokens plus `image_tokens` per image, DeepSeek-VL's 576 placeholder
tokens) or `max_images`. An atom over the budget on its own is a part of its own, whole. The packing streams: only
the part being filled is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from renderers.interleaved.blocks import Text
from renderers.interleaved.rules import Kept
from vlcorpus.sample import estimate_tokens

Item = Text | Kept


@dataclass(frozen=True)
class Budget:
    max_tokens: int = 4096  # DeepSeek-VL's sequence length
    image_tokens: int = 576
    max_images: int = 30  # OBELICS's images per document

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.image_tokens < 0 or self.max_tokens <= self.image_tokens:
            raise ValueError("budget: max_images >= 1 and max_tokens above image_tokens")

    def tokens(self, item: Item) -> int:
        return self.image_tokens if isinstance(item, Kept) else estimate_tokens(item.text)


def atoms(items: Iterable[Item], max_images: int) -> Iterator[list[Item]]:
    """Runs that stay together: [paragraph, image, ..., caption, ...] around each image, else single paragraphs. A
    gallery of more than `max_images` images in a row is cut between images (the first run keeps the paragraph)."""
    atom: list[Item] = []
    for item in items:
        shown = sum(isinstance(i, Kept) for i in atom)
        if isinstance(item, Kept) and shown >= max_images:
            yield atom
            atom = []
        joins = isinstance(item, Kept) or (item.caption and shown > 0)
        if joins:
            atom.append(item)
            continue
        if any(isinstance(i, Kept) for i in atom):  # the run around an image ends here
            yield atom
            atom = []
        yield from ([atom[0]],) if atom else ()
        atom = [item]
    if atom:
        yield atom


def parts(items: Iterable[Item], budget: Budget) -> Iterator[list[Item]]:
    part: list[Item] = []
    tokens = images = 0
    for atom in atoms(items, budget.max_images):
        t = sum(budget.tokens(i) for i in atom)
        n = sum(isinstance(i, Kept) for i in atom)
        if part and (tokens + t > budget.max_tokens or images + n > budget.max_images):
            yield part
            part, tokens, images = [], 0, 0
        part += atom
        tokens += t
        images += n
    if part:
        yield part
