"""Small notebooks built in the test itself: real PNG/JPEG/SVG outputs, v3 and v4 layouts, and broken ones."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

PLOT_CODE = """fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(xs, ys, "b-")
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_title("line")
plt.show()"""


def plot_png(seed: int = 0, size: tuple[int, int] = (160, 120), fmt: str = "PNG", mode: str = "RGB",
             background: str | tuple = "white") -> bytes:
    """A small line plot; `seed` moves the line, so different seeds give different images."""
    im = Image.new(mode, size, background)
    d = ImageDraw.Draw(im)
    d.rectangle([10, 10, size[0] - 10, size[1] - 10], outline="black")
    d.line([15, size[1] - 15, size[0] - 15, 15 + seed % (size[1] - 30)], fill="blue", width=2)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def code_cell(source, outputs=None, **extra) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "source": source, **extra}
    if outputs is not None:
        cell["outputs"] = outputs
    return cell


def image_output(data: dict, output_type: str = "display_data") -> dict:
    return {"output_type": output_type, "metadata": {}, "data": {**data, "text/plain": "<Figure>"}}


def png_output(png: bytes) -> dict:
    return image_output({"image/png": b64(png)})


def notebook(cells: list[dict], language: str = "python") -> dict:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": f"{language}3", "display_name": language, "language": language},
                     "language_info": {"name": language}},
        "cells": cells,
    }


def plot_notebook(seed: int = 0) -> dict:
    """Imports, data, an unrelated cell, then a plot cell that needs the imports and the data."""
    return notebook([
        {"cell_type": "markdown", "metadata": {}, "source": "# A plot"},
        code_cell(["import numpy as np\n", "import matplotlib.pyplot as plt\n"], []),
        code_cell("xs = np.linspace(0, 1, 50)\nys = xs ** 2\n", []),
        code_cell("unrelated = 42\nprint(unrelated)", [{"output_type": "stream", "name": "stdout", "text": "42\n"}]),
        code_cell(PLOT_CODE, [png_output(plot_png(seed))]),
    ])


def write(path: Path, nb: dict | str) -> Path:
    path.write_text(nb if isinstance(nb, str) else json.dumps(nb), "utf-8")
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of the given size whose all-zero pixels compress to almost nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    c = zlib.compressobj(9)
    idat = b"".join(c.compress(row) for _ in range(height)) + c.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_huge_output_notebook(path: Path, megabytes: int) -> Path:
    """A notebook whose one image output is `megabytes` MB of base64, written in pieces (never held in memory)."""
    head = json.dumps(notebook([code_cell(PLOT_CODE, [png_output(b"")])]))
    before, after = head.split('"image/png": ""')
    piece = "A" * (1024**2)
    with open(path, "w", encoding="ascii") as f:
        f.write(before + '"image/png": "')
        for _ in range(megabytes):
            f.write(piece)
        f.write('"' + after)
    return path
