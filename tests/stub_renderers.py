"""Renderers with known behaviour for driver tests: they succeed, raise, hang, hog memory or break the contract,
decided by the document's id. Module-level so that spawned children and Ray workers can import them."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from vlcorpus.document import DocInput, Filtered
from vlcorpus.sample import Sample


class TwoArgError(Exception):
    """Like tarfile's FilterError: pickles, but does not unpickle (its __init__ takes two arguments)."""

    def __init__(self, member: str, reason: str):
        super().__init__(f"{member}: {reason}")


def render(doc: DocInput, cfg: dict, stats: Counter):
    name = doc.doc
    if cfg.get("child_pid_dir"):
        Path(cfg["child_pid_dir"], str(os.getpid())).touch()
    if name.startswith("raise"):
        raise ValueError(f"cannot parse {name}")
    if name.startswith("twoarg"):
        raise TwoArgError(name, "link outside the archive")
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if name.startswith("hang"):
        while True:
            time.sleep(1)
    if name.startswith("hog"):
        hoard = []
        while True:
            hoard.append(bytearray(64 * 1024**2))
    if name.startswith("filter"):
        stats["pages_without_text"] += 3
        raise Filtered("scanned document without a text layer")
    if name.startswith("offcontract"):
        yield Sample(category="doc_ocr", source="stub", doc=name, part=0, origin=doc.origin, segments=[{"image": "0.jpg"}])
        return
    if cfg.get("pid_dir"):
        Path(cfg["pid_dir"], f"{os.getppid()}.pid").write_text(name)
    time.sleep(cfg.get("sleep", 0))
    for part in range(cfg.get("parts", 2)):
        stats["pages"] += 1
        yield Sample(category="text", source="stub", doc=name, part=part, origin=doc.origin,
                     segments=[{"text": f"{name} part {part} " * 10}])
