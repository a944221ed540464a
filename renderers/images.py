"""The one image gate: every image a renderer keeps from a dataset or a notebook passes `check_image`.

Memory stays bounded because every size is checked before the work it would cost: the encoded length before
decoding, the image's dimensions (read from its header) before its pixels are decoded, an SVG's declared size before
it is rasterised (scaled down to `svg_max_side`). A JPEG is decoded at 1/8 scale (DCT scaling), which walks the whole
stream at a fraction of the cost. JPEG and opaque PNG are kept byte for byte; other formats become PNG, and an image
with transparency is flattened onto white, so every consumer sees the same picture.

A refused image raises `BadImage`, whose `reason` is the drop counter every ledger uses (README, "Drop reasons"):
`image_missing`, `image_outside_root`, `image_remote`, `image_too_large` (encoded bytes),
`image_too_many_pixels`, `image_too_small`, `image_undecodable`, `image_uniform`.
"""

from __future__ import annotations

import base64
import binascii
import io
import types
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

_KEEP = {"JPEG": "jpg", "PNG": "png"}


class BadImage(ValueError):
    """An image that is missing, does not decode or is out of bounds; `reason` is the stats counter name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * 1024**2  # encoded size (file bytes, base64 text, SVG text)
    max_pixels: int = 40_000_000
    min_side: int = 8
    uniform_tolerance: int | None = None  # drop images whose channels all vary by at most this (None: keep them)
    svg_max_side: int = 1536  # SVGs are rasterised at their declared size, scaled down to this


@dataclass(frozen=True)
class CheckedImage:
    ext: str  # "jpg" or "png"
    data: bytes
    width: int
    height: int


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """The image, decoded within `limits` and checked; JPEG/opaque PNG bytes kept as they are, the rest -> PNG."""
    if len(data) > limits.max_bytes:
        raise BadImage("image_too_large", f"image of {len(data):,} bytes is over {limits.max_bytes:,}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_pixels:
                raise BadImage("image_too_many_pixels", f"image of {w}x{h} = {w * h:,} pixels is over {limits.max_pixels:,}")
            if min(w, h) < limits.min_side:
                raise BadImage("image_too_small", f"image of {w}x{h} pixels has a side under {limits.min_side}")
            fmt = img.format
            if fmt == "JPEG":
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage("image_too_many_pixels", f"image is a decompression bomb ({e})") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise BadImage("image_undecodable", f"image does not decode: {e}") from None
    opaque = _opaque(img)
    if limits.uniform_tolerance is not None:
        shown = img if img.mode in ("RGB", "L") else img.convert("RGB") if opaque else _on_white(img)
        if max(hi - lo for lo, hi in shown.getextrema()) <= limits.uniform_tolerance:
            raise BadImage("image_uniform", f"image is a uniform {w}x{h} picture (nothing drawn)")
    if fmt in _KEEP and opaque:
        return CheckedImage(_KEEP[fmt], data, w, h)
    if not opaque:
        img = _on_white(img)
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=3)  # level 6 costs ~50% more time for ~7% smaller pictures
    return CheckedImage("png", buf.getvalue(), w, h)


def _opaque(im: Image.Image) -> bool:
    """True when the image shows the same picture whatever it is composited onto (matplotlib's RGBA plots
    usually are), so its original bytes can be kept."""
    if "transparency" in im.info:
        return False
    if "A" in im.mode:
        return im.getchannel("A").getextrema()[0] == 255
    return True


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage("image_undecodable", f"image data is not valid base64 ({e})") from None


def rasterise_svg(svg: bytes, limits: ImageLimits) -> bytes:
    """PNG bytes of an SVG at its declared size, scaled down to `svg_max_side`; no external files or URLs."""
    import cairosvg

    if len(svg) > limits.max_bytes:
        raise BadImage("image_too_large", f"SVG of {len(svg):,} bytes is over {limits.max_bytes:,}")
    try:
        width, height = svg_size(svg)
    except Exception as e:  # noqa: BLE001 - XML errors, entity refusals, odd units
        raise BadImage("image_undecodable", f"SVG cannot be parsed ({e})") from None
    if width <= 0 or height <= 0:
        raise BadImage("image_undecodable", "SVG declares no size (width/height/viewBox)")
    scale = min(1.0, limits.svg_max_side / max(width, height))
    try:  # cairosvg's default safe mode: no XML entities, no external files or URLs (only data: URLs)
        return cairosvg.svg2png(bytestring=svg, output_width=max(1, round(width * scale)),
                                output_height=max(1, round(height * scale)), background_color="white")
    except Exception as e:  # noqa: BLE001
        raise BadImage("image_undecodable", f"SVG cannot be rendered ({e})") from None


def svg_size(svg: bytes) -> tuple[float, float]:
    """The SVG's declared size in CSS pixels (width/height attributes, else its viewBox), as cairosvg reads it."""
    from cairosvg.helpers import node_format
    from cairosvg.parser import Tree

    tree = Tree(bytestring=svg)
    # node_format only reads dpi, font size and the (absent) parent size from its surface argument
    surface = types.SimpleNamespace(dpi=96, font_size=16.0, context_width=None, context_height=None)
    width, height, _ = node_format(surface, tree, reference=False)
    return width, height


def load_ref(ref: object, root: Path | None) -> bytes:
    """Bytes of an image reference: raw bytes, a `data:` URL, a HF-style {"bytes", "path"} dict, or a path under `root`.

    Paths may not leave `root` (a dataset cannot make us read /etc); remote URLs are not fetched.
    """
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path") or ref.get("url")
    if not isinstance(ref, str) or not ref:
        raise BadImage("image_missing", f"no usable image reference in {str(ref)[:80]!r}")
    if ref.startswith("data:"):
        try:
            return base64.b64decode(ref.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as e:
            raise BadImage("image_undecodable", f"data: URL is not base64 ({e})") from None
    if ref.startswith(("http://", "https://")):
        raise BadImage("image_remote", f"remote image {ref[:80]} is not fetched; download the images first")
    if root is None:
        raise BadImage("image_missing", f"image path {ref!r} given but no image root")
    root = root.resolve()
    path = (root / ref.removeprefix("file://")).resolve()
    if not path.is_relative_to(root):
        raise BadImage("image_outside_root", f"image path {ref!r} leaves the image root {root}")
    try:
        return path.read_bytes()
    except OSError:
        raise BadImage("image_missing", f"image {ref!r} does not exist under {root}") from None


def image_or_count(ref: object, root: Path | None, limits: ImageLimits, stats: Counter) -> tuple[str, bytes] | None:
    """A checked (extension, bytes), or None after counting why not (the caller skips the record)."""
    try:
        image = check_image(load_ref(ref, root), limits)
    except BadImage as e:
        stats[e.reason] += 1
        return None
    return image.ext, image.data
