"""Which images of a document are content: the shared image rules of every input kind.

OBELICS's rules are the reference (huggingface/OBELICS, config_filter_web_documents.yaml): a side of at least 150
px, at most 30 images per document (here per part: a long document is split instead of dropped). Its aspect-ratio
cutoff of 2 drops the wide plots and diagrams of textbooks, so ours is 3 (`max_aspect`). Every image passes the
project's one image gate first (`renderers.images.check_image`: bytes, pixels, decodability), and an SVG is
rasterised there (cairosvg, no external files or URLs). Each dropped image is counted under one reason:

- the reader's own: `image_remote` (a URL: never fetched), `image_missing`, `image_outside_root`, `image_unreadable`
- `image_repeated`: shown in `max_repeats` or more documents of one input (pages of a site, chapters of a book, pages
  of a PDF or of a WARC): logos, icons, ornaments
- `image_duplicate`: an image the document already showed (the first place it stands keeps it)
- `image_pixel`: both sides at most 4 px (tracking pixels, spacers)
- `image_icon`: both sides under `min_side` (icons, buttons, badges)
- `image_small_side`: one side under `min_side` (rules, thin banners)
- `image_aspect`: longer side over `max_aspect` times the shorter
- `image_shown_small`: the page displays it with a side under `min_side` (`<img width height>`; OBELICS's rendered
  size rule): an avatar or thumbnail, whatever its file's size
- `image_uniform`: one colour, nothing drawn
- the gate's: `image_too_large`, `image_too_many_pixels`, `image_undecodable`
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from PIL import Image

from renderers.images import BadImage, ImageLimits, check_image, rasterise_svg
from renderers.interleaved.blocks import Block, Picture, Text

PIXEL_SIDE = 4


@dataclass(frozen=True)
class ImageRules:
    min_side: int = 150  # OBELICS: 150 px
    max_aspect: float = 3.0  # OBELICS: 2 (see the module docstring)
    max_repeats: int = 3
    limits: ImageLimits = field(default_factory=lambda: ImageLimits(min_side=1, uniform_tolerance=0))

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_aspect < 1 or self.max_repeats < 2:
            raise ValueError("image rules: min_side >= 1, max_aspect >= 1 and max_repeats >= 2")


@dataclass(slots=True)
class Kept:
    """An image that passed the rules: its bytes as the sample stores them."""

    ext: str
    data: bytes
    width: int
    height: int
    ref: str
    alt: str


def repeated_refs(refs_per_document: Iterable[Iterable[str]], max_repeats: int) -> set[str]:
    """The refs shown in `max_repeats` or more documents."""
    docs: Counter = Counter()
    for refs in refs_per_document:
        docs.update(set(refs))
    return {r for r, n in docs.items() if n >= max_repeats}


def header_size(data: bytes) -> tuple[int, int]:
    """The image's size from its header (nothing decoded); the gate reports an image without a readable one."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - PIL raises many types; check_image names the reason
        check_image(data, ImageLimits(min_side=1))
        raise BadImage("image_undecodable", "image header cannot be read") from None


def judge(pic: Picture, rules: ImageRules) -> Kept:
    """The picture as kept, or BadImage with the reason it is not content."""
    if pic.failure:
        raise BadImage(pic.failure, pic.ref)
    if pic.shown is not None and 0 < min(pic.shown) < rules.min_side:
        raise BadImage("image_shown_small", f"shown at {pic.shown[0]}x{pic.shown[1]}")
    try:
        data = pic.load()
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - a reader's loader (zip, PDF, WARC) failing on this one image
        raise BadImage("image_undecodable", f"{pic.ref[:200]}: {e}") from None
    if pic.svg or data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096]:
        data = rasterise_svg(data, rules.limits)
    w, h = header_size(data)
    if max(w, h) <= PIXEL_SIDE:
        raise BadImage("image_pixel", f"{w}x{h}")
    if max(w, h) < rules.min_side:
        raise BadImage("image_icon", f"{w}x{h}")
    if min(w, h) < rules.min_side:
        raise BadImage("image_small_side", f"{w}x{h}")
    if max(w, h) > rules.max_aspect * min(w, h):
        raise BadImage("image_aspect", f"{w}x{h}")
    image = check_image(data, rules.limits)
    return Kept(image.ext, image.data, image.width, image.height, pic.ref, pic.alt)


def content(blocks: Iterable[Block], rules: ImageRules, repeated: set[str], stats: Counter) -> Iterator[Text | Kept]:
    """The blocks with every image judged: kept ones as `Kept`, the others counted and left out (a paragraph that
    only they cut is whole again); empty text dropped."""
    held: Text | None = None  # the last paragraph, until we know whether the next block continues it
    shown: set[str] = set()
    for block in blocks:
        if isinstance(block, Text):
            if not block.text.strip():
                continue
            if held is not None and block.cont:
                held = Text(f"{held.text} {block.text}", held.caption)
                continue
            if held is not None:
                yield held
            held = block
            continue
        try:
            if block.ref in repeated:
                raise BadImage("image_repeated", block.ref)
            if block.ref in shown:
                raise BadImage("image_duplicate", block.ref)
            shown.add(block.ref)
            kept = judge(block, rules)
        except BadImage as e:
            stats[e.reason] += 1
            continue
        if held is not None:
            yield held
            held = None
        yield kept
    if held is not None:
        yield held
