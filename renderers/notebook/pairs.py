"""Jupyter notebooks -> `web_code` samples: a plot a code cell drew, paired with the code that drew it.

DeepSeek-VL (after MATCHA's plot inverse rendering) collated every diagram in 1.46 M notebooks with its preceding
code and kept instances of a single image with at least 5 lines of code; these are the defaults here.

Per notebook: read it with nbformat (v4 as is, v3 upgraded) after checking the file size; keep only Python kernels
unless told otherwise; for each code cell whose outputs hold an image, decode the image within bounds
(`renderers.images`), clean the cell's code and collate the earlier cells it depends on (`renderers.notebook.code`), apply the
filters and emit `[image, code]`. Every dropped image is counted by reason; a notebook that yields nothing raises
`Filtered` naming the reasons. Job-wide exact-duplicate images are dropped by the pipeline (`meta.image_sha256`),
not here: a renderer sees one notebook.

`part` is the image's position among all image outputs of the notebook (0-based), so keys do not move when the
filters change.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from renderers.images import (
    BadImage,
    CheckedImage,
    ImageLimits,
    check_image,
    decode_base64,
    rasterise_svg,
)
from renderers.notebook.code import (
    CellNames,
    CodeContext,
    cell_names,
    clean_code,
    code_lines,
    collate,
    source_text,
)
from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample

OUTPUT_TYPES = ("execute_result", "display_data", "stream", "error")
# Image representations we can decode, in the order we prefer them when one output carries several.
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
# What a kept image passed (`renderers.images`); the pipeline adds the job-wide duplicate check.
IMAGE_CHECKS = ("encoded_size", "base64", "pixels", "decodes", "min_side", "not_uniform")
_MAX_REASONS = 5  # drop reasons quoted in a Filtered message


class NotebookError(ValueError):
    """A notebook that cannot be read; the message says what is wrong with the file."""


@dataclass
class NotebookConfig:
    max_file_mb: float = 64.0  # larger notebook files are not read at all
    max_image_mb: float = 8.0  # one image output's encoded size (base64 or SVG text), checked before decoding
    max_image_pixels: int = 16_000_000  # checked from the image header, before its pixels are decoded
    min_image_side: int = 32  # smaller images are dropped as tiny
    uniform_tolerance: int = 2  # an image whose channels all vary by at most this is empty/uniform
    svg_max_side: int = 1536  # SVGs are rasterised at their declared size, scaled down to this
    one_image_only: bool = True  # paper filter: the cell's outputs hold exactly one image
    min_cell_lines: int = 5  # paper filter: non-blank lines of the plot cell's own (cleaned) code
    max_code_lines: int = 120  # budget of the collated code: the plot cell plus the cells it depends on
    max_code_chars: int = 8000
    keep_magics: bool = False  # keep %magic / !shell / help? lines in the code
    languages: list[str] = field(default_factory=lambda: ["python"])  # kernel languages kept; [] keeps all

    def __post_init__(self) -> None:
        positive = ("max_file_mb", "max_image_mb", "max_image_pixels", "min_image_side", "svg_max_side",
                    "max_code_lines", "max_code_chars")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.min_cell_lines < 0 or self.uniform_tolerance < 0:
            raise ValueError("min_cell_lines and uniform_tolerance must be >= 0")
        if self.min_cell_lines > self.max_code_lines:
            raise ValueError("min_cell_lines must not exceed max_code_lines")
        self.languages = [lang.lower() for lang in self.languages]

    def limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=int(self.max_image_mb * 1024**2),
            max_pixels=self.max_image_pixels,
            min_side=self.min_image_side,
            uniform_tolerance=self.uniform_tolerance,
            svg_max_side=self.svg_max_side,
        )


def read_notebook(path: Path, max_file_mb: float) -> dict:
    """The notebook as a v4 dict. Raise Filtered for a file over the size limit, NotebookError if unreadable."""
    size = path.stat().st_size
    if size > max_file_mb * 1024**2:
        raise Filtered(f"notebook file is {size / 1024**2:.1f} MB, over the {max_file_mb:g} MB limit (max_file_mb)")
    try:
        nb = json.loads(path.read_bytes())
    except UnicodeDecodeError as e:
        raise NotebookError(f"not UTF-8 JSON: {e}") from None
    except json.JSONDecodeError as e:
        raise NotebookError(f"truncated or invalid JSON: {e}") from None
    except RecursionError:
        raise NotebookError("JSON nested too deeply to read") from None
    if not isinstance(nb, dict):
        raise NotebookError(f"top level is a JSON {type(nb).__name__}, not a notebook object")
    version = nb.get("nbformat")
    if version == 3:
        nb = _upgrade_v3(nb)
    elif version != 4:
        raise NotebookError(f"unsupported nbformat {version!r}: only nbformat 3 and 4 notebooks can be read")
    if not isinstance(nb.get("cells"), list):
        raise NotebookError("nbformat 4 notebook has no 'cells' list")
    return nb


def _upgrade_v3(nb: dict) -> dict:
    """nbformat's v3 reading (rejoin split lines) and v3 -> v4 upgrade, after dropping what they cannot take:
    cells that are not objects with a type, outputs that are not objects with a type."""
    import nbformat
    from nbformat.v3.rwbase import rejoin_lines

    if not isinstance(nb.get("worksheets"), list):
        raise NotebookError("nbformat 3 notebook has no 'worksheets' list")
    try:
        node = nbformat.from_dict(nb)
        node.setdefault("metadata", nbformat.NotebookNode())
        for ws in node.worksheets:
            cells = ws.get("cells") if isinstance(ws.get("cells"), list) else []
            ws["cells"] = [c for c in cells if isinstance(c, dict) and isinstance(c.get("cell_type"), str)]
            for cell in ws["cells"]:
                if cell["cell_type"] == "code":
                    outputs = cell.get("outputs") if isinstance(cell.get("outputs"), list) else []
                    cell["outputs"] = [o for o in outputs if isinstance(o, dict) and "output_type" in o]
        return nbformat.v4.upgrade(rejoin_lines(node), from_version=3, from_minor=nb.get("nbformat_minor", 0) or 0)
    except Exception as e:  # noqa: BLE001 - nbformat's upgrade raises whatever the malformed input provokes
        raise NotebookError(f"nbformat 3 notebook cannot be upgraded to 4 ({type(e).__name__}: {e})") from None


def kernel_language(nb: dict) -> tuple[str | None, str | None]:
    """(language, kernel name) from the kernel spec or language info; (None, None) when the notebook says nothing
    (typical of nbformat 3 IPython notebooks, which were Python)."""
    meta = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    spec = meta.get("kernelspec") if isinstance(meta.get("kernelspec"), dict) else {}
    info = meta.get("language_info") if isinstance(meta.get("language_info"), dict) else {}
    language = spec.get("language") or info.get("name") or meta.get("language")
    name = spec.get("name") or spec.get("display_name")
    if not language and isinstance(name, str) and name.lower().startswith(("python", "ipython")):
        language = "python"
    return (language.lower() if isinstance(language, str) else None), (name if isinstance(name, str) else None)


@dataclass
class _Cell:
    index: int
    code: str
    outputs: list


def _code_cells(nb: dict, keep_magics: bool, stats: Counter) -> list[_Cell]:
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            stats["malformed_cell"] += 1
            continue
        if cell.get("cell_type") != "code":
            continue
        code = clean_code(source_text(cell.get("source")), keep_magics)
        outputs = cell.get("outputs")
        if not isinstance(outputs, list):  # missing or malformed outputs: the cell still defines names
            outputs = []
        if code is None:
            stats["non_python_cell"] += 1
            code = ""
        cells.append(_Cell(index, code, outputs))
    return cells


def _image_outputs(outputs: list, stats: Counter) -> list[tuple[str, object]]:
    """One (mime, value) per output that shows an image, the preferred representation of each."""
    images = []
    for out in outputs:
        if not isinstance(out, dict) or out.get("output_type") not in OUTPUT_TYPES:
            stats["unknown_output"] += 1
            continue
        data = out.get("data")
        if not isinstance(data, dict):
            continue
        shown = [k for k in data if isinstance(k, str) and k.startswith("image/")]
        if not shown:
            continue
        mime = next((m for m in IMAGE_MIMES if m in data), None)
        images.append((mime or shown[0], data[mime] if mime else None))
    return images


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


def decode_output(mime: str, value: object, limits: ImageLimits) -> CheckedImage:
    """One output's image through the image gate; its encoded size is checked before anything is decoded."""
    size = field_length(value)
    if size > limits.max_bytes:
        raise BadImage("image_too_large", f"{size / 1024**2:.1f} MB encoded, over the "
                                          f"{limits.max_bytes / 1024**2:g} MB limit (max_image_mb)")
    text = field_text(value)
    if text is None:
        raise BadImage("image_undecodable", f"a {type(value).__name__}, not a string")
    data = rasterise_svg(text.encode("utf-8"), limits) if mime == "image/svg+xml" else decode_base64(text)
    return check_image(data, limits)


def render(doc: DocInput, cfg: NotebookConfig, stats: Counter) -> Iterator[Sample]:
    nb = read_notebook(Path(doc.path), cfg.max_file_mb)
    language, kernel = kernel_language(nb)
    if cfg.languages and (language or "python") not in cfg.languages:
        raise Filtered(f"kernel language {language!r} is not one of {cfg.languages} (--all-kernels keeps every kernel)")
    python = language in (None, "python")
    cells = _code_cells(nb, cfg.keep_magics, stats)
    codes = {c.index: c.code for c in cells}
    names: dict[int, CellNames] = {}  # cells up to the latest plot cell that passed the filters; later ones unread
    limits = cfg.limits()
    reasons: list[str] = []
    ordinal = 0
    written = 0

    def drop(reason: str, cell: int, message: str) -> None:
        stats[reason] += 1
        if len(reasons) < _MAX_REASONS:
            reasons.append(f"cell {cell}: {message}")

    for position, cell in enumerate(cells):
        images = _image_outputs(cell.outputs, stats)
        first, ordinal = ordinal, ordinal + len(images)
        if not images:
            continue
        stats["images"] += len(images)
        if cfg.one_image_only and len(images) != 1:
            drop("not_one_image", cell.index, f"{len(images)} images in the outputs (one_image_only)")
            continue
        own_lines = code_lines(cell.code)
        if own_lines < cfg.min_cell_lines:
            drop("code_too_short", cell.index, f"{own_lines} line(s) of code, under min_cell_lines={cfg.min_cell_lines}")
            continue
        if own_lines > cfg.max_code_lines or len(cell.code) > cfg.max_code_chars:
            drop("code_over_budget", cell.index, f"{own_lines} lines / {len(cell.code)} chars of code, over the "
                                                 f"max_code_lines/max_code_chars budget")
            continue
        for c in cells[len(names) : position + 1]:  # a plot cell depends on earlier cells only
            names[c.index] = cell_names(c.code, python)
        context = collate(cell.index, codes, names, cfg.max_code_lines, cfg.max_code_chars)
        for k, (mime, value) in enumerate(images):
            if mime not in IMAGE_MIMES:
                drop("image_unsupported", cell.index, f"{mime} output is not a supported image type")
                continue
            try:
                image = decode_output(mime, value, limits)
            except BadImage as e:
                drop(e.reason, cell.index, f"{mime} output: {e}")
                continue
            written += 1
            filters = {"images_in_cell": len(images), "one_image_only": cfg.one_image_only,
                       "cell_code_lines": own_lines, "min_cell_lines": cfg.min_cell_lines,
                       "image_checks": list(IMAGE_CHECKS)}
            yield _sample(doc, first + k, cell.index, image, mime, context, language, kernel, filters)
    if not written:
        if not reasons:
            raise Filtered("no plot/code pair kept: no code cell has an image output")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
        raise Filtered(f"no plot/code pair kept ({counts}): {'; '.join(reasons)}")
    stats["pairs"] += written


def _sample(doc: DocInput, part: int, cell: int, image: CheckedImage, mime: str, context: CodeContext,
            language: str | None, kernel: str | None, filters: dict) -> Sample:
    name = f"0.{image.ext}"
    return Sample(
        category="web_code",
        source="notebook",
        doc=doc.doc,
        part=part,
        origin=doc.origin,
        segments=[{"image": name}, {"text": context.code}],
        images={name: image.data},
        meta={
            "notebook": doc.origin,
            "cell": cell,
            "kernel": {"language": language, "name": kernel},
            "image": {"width": image.width, "height": image.height, "mime": mime},
            "image_sha256": hashlib.sha256(image.data).hexdigest(),
            "code": {"cells": context.cells, "omitted_cells": context.omitted, "analysis": context.analysis,
                     "lines": code_lines(context.code), "chars": len(context.code)},
            "filters": filters,
        },
    )
