"""Input containment: a job reads nothing outside its input root.

Discovery walks the root without following symlinked folders and reports every entry it would read with
`input_problem`; `gate` checks every input again (whoever discovered it) and gives a `failed` ledger line,
`UnsafeInput` with the reason, to each one it refuses: a symlink whose real path leaves the root, a broken or
looping link, a FIFO, socket or device. Such an input is never opened.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from vlcorpus import storage
from vlcorpus.document import DocInput
from vlcorpus.ledger import Entry, Ledger

REFUSED = "refused"  # DocInput.related key: why discovery refused this input (it is never read)
SKIPPED = "file_skipped"  # ledger counter: a file in the input folder that is in no format the command reads


def input_root(path: Path) -> Path:
    """The folder a job may read: the input folder, or the folder of an input file (symlinks resolved)."""
    path = path.resolve()
    return path if path.is_dir() else path.parent


def input_problem(path: Path, roots: Sequence[Path]) -> str | None:
    """Why `path` must not be read as an input, or None: its real path (every symlink resolved) leaves the `roots`,
    it is a broken or looping link, or it is neither a regular file nor a folder (a FIFO would block a reader)."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(r)) for r in roots):
        return f"its real path {real} is outside the input root {roots[0]}; not read"
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        what = "a symlink loop" if e.errno == errno.ELOOP else "a broken symlink" if e.errno == errno.ENOENT else e.strerror
        return f"it cannot be resolved ({what}); not read"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "it is not a regular file (a FIFO, socket or device); not read"
    return None


def walk_inputs(root: Path, wanted: Callable[[Path], bool]) -> Iterator[tuple[Path, str | None]]:
    """Every file under `root` that `wanted` accepts, with why it must not be read (`input_problem`) or None, in
    sorted order. Symlinked folders are not descended (what they hold inside the root is found where it really
    is); one that leads outside the root is reported, so nothing is left out silently. A file given as the root is
    the one input, bounded by its folder."""
    if root.is_file():
        if wanted(root):
            yield root.resolve(), None  # the file the user named, symlinks resolved like its root (`input_root`)
        return
    root = root.resolve()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        for name in list(dirs):
            p = here / name
            if p.is_symlink():
                dirs.remove(name)
                if (problem := input_problem(p, [root])) is not None:
                    yield p, f"symlinked folder: {problem}"
        for name in sorted(files):
            p = here / name
            if wanted(p):
                yield p, input_problem(p, [root])


def refused(doc: str, origin: str, path: Path, reason: str) -> DocInput:
    """An input discovery refuses: `run_job` gives it a `failed` ledger line and never reads it."""
    return DocInput(doc=doc, origin=origin, path=str(path), related={REFUSED: reason})


def discover(root: storage.Location, suffixes: tuple[str, ...]) -> list[DocInput]:
    """Every file under `root` (or `root` itself, a file) with one of `suffixes`, its path relative to the input
    folder as both id and origin; the ones that must not be read come back `refused`. Under a store prefix: every
    object, its URL as the path (a worker stages it, `driver.staged`)."""
    if storage.is_remote(root):
        return [DocInput(doc=u[len(root) + 1:], origin=u[len(root) + 1:], path=u)
                for u in storage.find(root) if storage.name(u).lower().endswith(suffixes)]
    docs = []
    for p, problem in walk_inputs(root, lambda p: p.name.lower().endswith(suffixes)):
        rel = str(p.relative_to(input_root(root)))
        docs.append(refused(rel, rel, p, problem) if problem else DocInput(doc=rel, origin=rel, path=str(p)))
    return docs


def skipped_files(root: Path, inputs: Sequence[DocInput], reads: str, run: str) -> list[Entry]:
    """A `filtered` ledger entry (counter `file_skipped`) for each file under `root` that no input covers (its origin,
    or the file a piece `<origin>#<n>` / zip member `<origin>:<member>` comes from): a file the command does not
    read, e.g. `README.md.gz` in a text folder, is in the ledger like every other input, never left out silently."""
    covered = set()
    for d in inputs:
        origin = d.origin.partition("#")[0]
        covered |= {origin, origin.partition(":")[0]}
    root = root.resolve()
    return [Entry(doc=rel, origin=rel, status="filtered", counts={SKIPPED: 1}, run=run,
                  error=f"skipped: not a format this command reads ({reads})")
            for p, _ in walk_inputs(root, lambda p: True) if (rel := str(p.relative_to(root))) not in covered]


def gate(inputs: Iterable[DocInput], roots: Sequence[Path], run: str) -> tuple[list[DocInput], list[Entry]]:
    """The inputs that may be read, and a `failed` ledger entry for each one that may not (refused at discovery, or
    whose path leaves `roots`)."""
    safe, entries = [], []
    for d in inputs:
        if storage.is_remote(d.path) and REFUSED not in d.related:
            safe.append(d)  # an object is read by its key: no link to follow out of the prefix
            continue
        reason = d.related.get(REFUSED) or input_problem(Path(d.path), roots)
        if reason is None:
            safe.append(d)
        else:
            entries.append(Entry(doc=d.doc, origin=d.origin, status="failed", error_class="UnsafeInput",
                                 error=f"{d.origin}: {reason}", run=run))
    return safe, entries


def record_refusals(out: storage.Location, source: str, entries: list[Entry]) -> None:
    """Append the refusals the ledger does not already say (a re-run writes nothing twice)."""
    with Ledger(out, source) as ledger:
        latest = ledger.latest()
        ledger.append([e for e in entries if (old := latest.get(e.doc)) is None or (old.status, old.error) != (e.status, e.error)])
