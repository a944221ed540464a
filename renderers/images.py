"""Images from published datasets: resolve a reference (path, data: URL, bytes), check it decodes, keep JPEG/PNG.

The check is bounded: the header gives the size before any pixel is decoded, so a decompression bomb is refused
unread; a JPEG is then decoded at 1/8 scale (DCT scaling), which walks the whole stream at a fraction of the cost.
"""

from __future__ import annotations

import base64
import binascii
import io
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


@dataclass
class ImageLimits:
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_bytes: int = 32 * 1024**2


def checked_image(data: bytes, limits: ImageLimits) -> tuple[str, bytes, int, int]:
    """(extension, bytes, width, height) of an image that decodes; JPEG/PNG are kept as they are, others -> PNG."""
    if len(data) > limits.max_bytes:
        raise BadImage("image_too_large", f"image of {len(data)} bytes is over {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_pixels:
                raise BadImage("image_too_large", f"image of {w}x{h} pixels is over {limits.max_pixels}")
            if min(w, h) < limits.min_side:
                raise BadImage("image_too_small", f"image of {w}x{h} pixels has a side under {limits.min_side}")
            fmt = img.format
            if fmt == "JPEG":
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("image_undecodable", f"image does not decode: {e}") from None
    if fmt in _KEEP:
        return _KEEP[fmt], data, w, h
    img = Image.open(io.BytesIO(data))
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode in ("P", "PA") else "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "png", buf.getvalue(), w, h


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
        ext, data, _, _ = checked_image(load_ref(ref, root), limits)
    except BadImage as e:
        stats[e.reason] += 1
        return None
    return ext, data
