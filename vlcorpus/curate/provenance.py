"""`meta.provenance`: where a sample came from and under what licence, read from the source itself.

`path` is relative to the input root; `sha256` is of the source file (of a source folder: over its files' names and
hashes); `license` is what the source states, found in this order: an EPUB's `dc:rights`, a `metadata.json` beside
the input or above it with a `license` field (arXiv's API metadata is such a file), a dataset card (`README.md`
whose YAML header has `license:`), a LICENSE/LICENCE/COPYING file beside the input or in a folder above it up to the
input root. `license_spdx` is the SPDX id when the statement is recognised, else None. Links are never followed and
only regular files are read: the input tree is untrusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import zipfile
from functools import lru_cache
from pathlib import Path
from xml.etree import ElementTree

import yaml

LICENSE_NAMES = ("license", "licence", "copying")
MAX_READ = 1 << 20  # bytes of a licence file, card or OPF read at most

SPDX_IDS = ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "GPL-2.0", "GPL-3.0", "LGPL-2.1", "LGPL-3.0",
            "AGPL-3.0", "MPL-2.0", "ISC", "Unlicense", "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0",
            "CC-BY-NC-SA-4.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "CC-BY-3.0", "CC-BY-SA-3.0", "ODC-By-1.0",
            "ODbL-1.0", "PDDL-1.0", "OFL-1.1")
# (phrase in a licence text, SPDX id): the first found wins, so the more specific come first
SIGNATURES = (
    ("attribution-noncommercial-sharealike 4.0", "CC-BY-NC-SA-4.0"),
    ("attribution-noncommercial-noderivatives 4.0", "CC-BY-NC-ND-4.0"),
    ("attribution-noncommercial 4.0", "CC-BY-NC-4.0"),
    ("attribution-noderivatives 4.0", "CC-BY-ND-4.0"),
    ("attribution-sharealike 4.0", "CC-BY-SA-4.0"),
    ("attribution 4.0 international", "CC-BY-4.0"),
    ("cc0 1.0 universal", "CC0-1.0"),
    ("gnu affero general public license", "AGPL-3.0"),
    ("gnu lesser general public license", "LGPL-3.0"),
    ("gnu general public license\nversion 3", "GPL-3.0"),
    ("gnu general public license version 3", "GPL-3.0"),
    ("gnu general public license\nversion 2", "GPL-2.0"),
    ("apache license\nversion 2.0", "Apache-2.0"),
    ("apache license, version 2.0", "Apache-2.0"),
    ("apache license version 2.0", "Apache-2.0"),
    ("mozilla public license version 2.0", "MPL-2.0"),
    ("permission is hereby granted, free of charge", "MIT"),
    ("this is free and unencumbered software", "Unlicense"),
    ("sil open font license", "OFL-1.1"),
    ("neither the name", "BSD-3-Clause"),
    ("redistribution and use in source and binary forms", "BSD-2-Clause"),
    ("permission to use, copy, modify, and/or distribute", "ISC"),
)
CC_URL = re.compile(r"creativecommons\.org/(?:licenses/([a-z-]+)/(\d\.\d)|publicdomain/zero/1\.0)")


def spdx(statement: str | None) -> str | None:
    """The SPDX id of a licence statement (an id, a Creative Commons URL, a licence text), or None."""
    if not statement:
        return None
    s = statement.strip()
    low = " ".join(s.lower().split())
    for known in SPDX_IDS:
        if low == known.lower() or low == known.lower().replace("-", " "):
            return known
    if (m := CC_URL.search(low)) is not None:
        if m.group(1) is None:
            return "CC0-1.0"
        candidate = f"CC-{m.group(1).upper()}-{m.group(2)}"
        return candidate if candidate in SPDX_IDS else None
    text = "\n".join(line.strip() for line in s.lower().splitlines())[:20_000]
    flat = " ".join(text.split())
    for phrase, found in SIGNATURES:
        if phrase in text or phrase in flat:
            return found
    return None


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_READ).decode("utf-8", "replace")


def sha256_of(path: Path) -> str:
    """sha256 of a regular file, or of a folder: over `<relative name>\\0<sha256>\\n` of its regular files, sorted."""
    st = os.lstat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    p = Path(path)
    if stat.S_ISDIR(os.lstat(p).st_mode):
        h = hashlib.sha256()
        for folder, dirs, files in os.walk(p):  # os.walk does not descend symlinked folders
            dirs.sort()
            for name in sorted(files):
                f = Path(folder) / name
                if _regular(f):
                    h.update(f"{f.relative_to(p)}\0{sha256_of(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def epub_rights(path: Path) -> str | None:
    """The `dc:rights` of an EPUB's package document, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            container = ElementTree.fromstring(z.read("META-INF/container.xml")[:MAX_READ])
            rootfile = next((e.get("full-path") for e in container.iter() if e.tag.endswith("rootfile")), None)
            if not rootfile:
                return None
            with z.open(rootfile) as f:
                opf = ElementTree.fromstring(f.read(MAX_READ))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError):
        return None
    rights = [e.text.strip() for e in opf.iter("{http://purl.org/dc/elements/1.1/}rights") if e.text and e.text.strip()]
    return "; ".join(rights) or None


def card_license(path: Path) -> str | None:
    """`license` from a Hugging Face dataset card's YAML header."""
    text = _read(path)
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    try:
        header = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return None
    value = header.get("license") if isinstance(header, dict) else None
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    return str(value) if value else None


def metadata_license(path: Path) -> str | None:
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError:
        return None
    value = data.get("license") if isinstance(data, dict) else None
    return str(value) if value else None


@lru_cache(maxsize=4096)
def folder_license(folder: str, root: str) -> tuple[str | None, str | None, str | None]:
    """(licence statement, its SPDX id, the file it came from relative to the root) from `folder` or the nearest
    folder above it, up to the root. A licence file states its licence in its first line; its SPDX id comes from
    its whole text."""
    here, top = Path(folder), Path(root)
    while True:
        try:
            names = sorted(os.listdir(here))
        except OSError:
            names = []
        for name in names:
            p, low = here / name, name.lower()
            if not _regular(p):
                continue
            statement, text = None, None
            if low == "metadata.json":
                statement = metadata_license(p)
            elif low == "readme.md":
                statement = card_license(p)
            elif low.startswith(LICENSE_NAMES):  # LICENSE, LICENSE.md, LICENSE-MIT, COPYING.txt
                text = _read(p)
                statement = next((line.strip()[:200] for line in text.splitlines() if line.strip()), None)
            if statement:
                return statement, spdx(text or statement), str(p.relative_to(top))
        if here == top or top not in here.parents:
            return None, None, None
        here = here.parent


def source_path(origin: str, path: str, root: str) -> Path:
    """The source file of an input: `<root>/<origin>` (a zip member's origin `<file>:<member>` names the file), or
    the input's own path when that is not a regular file or folder inside the root."""
    if root:
        top = Path(root)
        for candidate in (origin, origin.split(":", 1)[0]):
            p = top / candidate
            if ".." not in Path(candidate).parts and not os.path.islink(p) and (p.is_file() or p.is_dir()):
                return p
    return Path(path)


def provenance(origin: str, path: str, root: str) -> dict:
    """`{path, sha256, license, license_spdx, license_file}` of one input."""
    src = source_path(origin, path, root)
    statement = spdx_id = license_file = None
    if src.suffix.lower() == ".epub" and _regular(src):
        statement = epub_rights(src)
        spdx_id, license_file = spdx(statement), (origin.split(":", 1)[0] if statement else None)
    if statement is None and root and (Path(root) == src or Path(root) in src.parents):
        statement, spdx_id, license_file = folder_license(str(src if src.is_dir() else src.parent), root)
    return {"path": origin, "sha256": sha256_of(src) if src.exists() else None, "license": statement,
            "license_spdx": spdx_id, "license_file": license_file}
