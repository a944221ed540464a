"""The image half of a notebook plot/code pair: one output's image, decoded within bounds and checked.

Memory stays bounded because every size is checked before the work it would cost: the encoded field's length
before base64 decoding, the image's dimensions (read from its header) before its pixels are decoded, and an
SVG's declared size before it is rasterised (scaled down to `max_side`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import types
import warnings
from dataclasses import dataclass

from PIL import Image

# Image representations we can decode, in the order we prefer them when one output carries several.
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


class ImageDropped(Exception):
    """One output's image is unusable: `reason` is its counter name, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_encoded_bytes: int
    max_pixels: int
    min_side: int
    uniform_tolerance: int
    svg_max_side: int


@dataclass
class PlotImage:
    data: bytes
    ext: str  # "png" or "jpg"
    width: int
    height: int
    mime: str  # the representation it came from
    sha256: str


def field_text(value: object) -> str | None:
    """A mime bundle value: a string, or a list of strings (nbformat's multiline form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def field_length(value: object) -> int:
    """Length of a mime bundle value without joining it (the join is what a huge field must not cost)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, str))
    return 0


def decode_image(mime: str, value: object, limits: ImageLimits) -> PlotImage:
    """Decode, bound and check one image representation; raise ImageDropped with the reason otherwise."""
    size = field_length(value)
    if size > limits.max_encoded_bytes:
        raise ImageDropped("image_too_large", f"{mime} output is {size / 1024**2:.1f} MB encoded, over the "
                                              f"{limits.max_encoded_bytes / 1024**2:g} MB limit (max_image_mb)")
    text = field_text(value)
    if text is None:
        raise ImageDropped("undecodable_image", f"{mime} output is a {type(value).__name__}, not a string")
    if mime == "image/svg+xml":
        data = rasterise_svg(text.encode("utf-8"), limits)
    else:
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageDropped("invalid_base64", f"{mime} output is not valid base64 ({e})") from None
    return check_raster(data, mime, limits)


def check_raster(data: bytes, mime: str, limits: ImageLimits) -> PlotImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageDropped("image_too_many_pixels", f"{mime} output is a decompression bomb ({e})") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise ImageDropped("undecodable_image", f"{mime} output is not a readable image ({e})") from None
    with im:
        width, height = im.size
        if width * height > limits.max_pixels:
            raise ImageDropped("image_too_many_pixels", f"{mime} output is {width}x{height} = {width * height:,} "
                                                        f"pixels, over max_image_pixels={limits.max_pixels:,}")
        if im.format not in ("PNG", "JPEG"):
            raise ImageDropped("undecodable_image", f"{mime} output holds a {im.format} image")
        try:
            im.load()
        except Exception as e:  # noqa: BLE001
            raise ImageDropped("undecodable_image", f"{mime} output is a corrupt {im.format} ({e})") from None
        if min(width, height) < limits.min_side:
            raise ImageDropped("tiny_image",
                               f"{mime} output is {width}x{height}, under min_image_side={limits.min_side}")
        opaque = _opaque(im)
        rgb = im if im.mode in ("RGB", "L") else im.convert("RGB") if opaque else _on_white(im)
        spread = max(hi - lo for lo, hi in rgb.getextrema())
        if spread <= limits.uniform_tolerance:
            raise ImageDropped("uniform_image", f"{mime} output is a uniform {width}x{height} image (empty plot)")
        ext = "jpg" if im.format == "JPEG" else "png"
        if not opaque:  # flatten transparency onto white so every consumer sees the same picture
            out = io.BytesIO()
            rgb.save(out, format="PNG", compress_level=3)  # level 6 costs ~50% more time for ~7% smaller plots
            data, ext = out.getvalue(), "png"
    return PlotImage(data, ext, width, height, mime, hashlib.sha256(data).hexdigest())


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


def svg_size(svg: bytes) -> tuple[float, float]:
    """The SVG's declared size in CSS pixels (width/height attributes, else its viewBox), as cairosvg reads it."""
    from cairosvg.helpers import node_format
    from cairosvg.parser import Tree

    tree = Tree(bytestring=svg)
    # node_format only reads dpi, font size and the (absent) parent size from its surface argument
    surface = types.SimpleNamespace(dpi=96, font_size=16.0, context_width=None, context_height=None)
    width, height, _ = node_format(surface, tree, reference=False)
    return width, height


def rasterise_svg(svg: bytes, limits: ImageLimits) -> bytes:
    import cairosvg

    try:
        width, height = svg_size(svg)
    except Exception as e:  # noqa: BLE001 - XML errors, entity refusals, odd units
        raise ImageDropped("undecodable_image", f"image/svg+xml output cannot be parsed ({e})") from None
    if width <= 0 or height <= 0:
        raise ImageDropped("undecodable_image", "image/svg+xml output declares no size (width/height/viewBox)")
    scale = min(1.0, limits.svg_max_side / max(width, height))
    try:  # cairosvg's default safe mode: no XML entities, no external files or URLs (only data: URLs)
        return cairosvg.svg2png(bytestring=svg, output_width=max(1, round(width * scale)),
                                output_height=max(1, round(height * scale)), background_color="white")
    except Exception as e:  # noqa: BLE001
        raise ImageDropped("undecodable_image", f"image/svg+xml output cannot be rendered ({e})") from None
