"""A paper's LaTeX source tree: a private copy of it, the check of its file references, its main file, its PDF.

The source is untrusted: archives are unpacked with `renderers.paper.sandbox.safe_extract`, folders are copied
without symlinks, and every file-reading command is checked for targets outside the tree before any tool runs.
Which `.tex` is the paper and which PDF shows it are decided from the text itself (the PDF's first page against
the sources), never from file sizes or page counts: a figure PDF or a folder's `reviews.pdf` is not the paper.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pymupdf

from renderers.paper.sandbox import ArchiveLimits, UnsafeArchive, UnsafeSource, check_tree, read_in_tree, safe_extract

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz")
SOURCE_SUFFIXES = (".tex", ".sty", ".cls", ".bbl", ".clo", ".def", ".cfg", ".ltx")
_COMMENT = re.compile(r"(?<!\\)%.*")
# Commands that open a file, with their target: `\input{x}`, `\input x`, `\openin3=x`, `\includegraphics[..]{x}`.
_FILE_COMMAND = re.compile(
    r"\\(input|include|InputIfFileExists|IfFileExists|openin|openout|includegraphics|lstinputlisting|verbatiminput"
    r"|VerbatimInput|import|subimport|includefrom|subfile|addbibresource|bibliography|includepdf|usepackage"
    r"|RequirePackage|documentclass|LoadClass|externaldocument)(?![A-Za-z@])\*?"
    r"\s*(?:\\?[A-Za-z@]*\d*\s*=?\s*)?(?:\[[^\]]*\]\s*)*(\{[^}]*\}|[^\s{}\\%]+)"
)
_SUBIMPORT = re.compile(r"\\(?:sub)?import\*?\s*\{([^}]*)\}\s*\{([^}]*)\}")
# Pictures are never read by our tools (LaTeXML runs with --nographicimages): one outside the folder is counted,
# not refused (sources kept in a repository often take figures from a sibling folder).
_GRAPHICS = ("includegraphics", "includepdf")
_INPUT = re.compile(r"\\(?:input|include|subfile)\s*\{([^}]*)\}|\\input\s+([^\s{}\\%]+)")
_EXPAND_MAX_CHARS = 8 * 1024**2
_WORD = re.compile(r"[a-z]{4,}")
_COMMAND = re.compile(r"\\[A-Za-z@]+")


class MainTexError(ValueError):
    """Several `.tex` files could be the paper and the PDF does not tell which."""


def escapes(target: str, base: Path, root: Path) -> bool:
    """Whether a file name, as TeX resolves it from `base`, points outside `root` (absolute, `~`, `..` out, a pipe)."""
    t = target.strip().strip('"')
    if not t or t.startswith("\\"):  # a macro: what it expands to is the sandbox's business
        return False
    if t.startswith(("/", "~", "|")) or re.match(r"^[A-Za-z]:", t):
        return True
    resolved = os.path.normpath(base / t)
    return not (resolved == str(root) or resolved.startswith(str(root) + os.sep))


def check_sources(root: Path, base: Path) -> list[str]:
    """Refuse a tree whose TeX files read or write files outside it (`\\input{/etc/passwd}`, `\\openin` of `..`).

    Targets are resolved from `base`, the main file's folder, as TeX does. Returns the pictures that lie outside
    (`\\includegraphics{../fig}`: never read, so only reported). This is the early, explainable refusal; the
    sandbox the tools run in is what actually keeps them inside (macros can build a path no scan sees).
    """
    root = Path(os.path.normpath(root))
    outside_pictures = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(SOURCE_SUFFIXES):
            continue
        text = read_tex(path)
        rel = path.relative_to(root)
        for m in _FILE_COMMAND.finditer(text):
            for target in m.group(2).strip("{}").split(","):
                if escapes(target, base, root):
                    if m.group(1) in _GRAPHICS:
                        outside_pictures.append(f"{rel}: {target.strip()}")
                        continue
                    raise UnsafeSource(f"{rel}: \\{m.group(1)} of {target.strip()!r} reaches outside the paper's folder")
        for m in _SUBIMPORT.finditer(text):
            if escapes(m.group(1) + "/" + m.group(2), base, root):
                raise UnsafeSource(f"{rel}: \\import of {m.group(1)}{m.group(2)!r} reaches outside the paper's folder")
    return outside_pictures


def prepare_source(source: Path, workdir: Path, limits: ArchiveLimits) -> Path:
    """A private, writable copy of the source tree under `workdir` (archives checked and unpacked); its root.

    The copy holds only regular files and folders (an archive's links to files become hard links), so a link
    found there later was planted by a tool (`sandbox.check_tree`)."""
    tree = workdir / "src"
    if source.is_dir():
        _copy_tree(source, tree, limits)
    elif source.name.lower().endswith(ARCHIVE_SUFFIXES):
        files = safe_extract(source, tree, limits)
        _links_to_hard_links(tree, source.name)
        if len(files) == 1 and files[0].suffix.lower() != ".tex":  # arXiv's single gzipped .tex has no suffix
            files[0].rename(files[0].with_name(files[0].name + ".tex"))
    elif source.suffix.lower() == ".tex":
        tree.mkdir(parents=True)
        (tree / source.name).write_bytes(source.read_bytes())
    else:
        raise UnsafeSource(f"{source.name}: not a folder, .tex or source archive")
    check_tree(tree, "unpacking")
    return tree


def _links_to_hard_links(tree: Path, label: str) -> None:
    """Replace an unpacked archive's symlinks (checked by `safe_extract` to stay inside) by hard links to their
    files; a link to a folder refuses the archive, a dangling one is dropped."""
    links = [Path(folder, name) for folder, dirs, files in os.walk(tree) for name in dirs + files
             if os.path.islink(os.path.join(folder, name))]
    for link in links:
        target = Path(os.path.realpath(link))
        if target.is_dir():
            raise UnsafeArchive(f"{label}: member {str(link.relative_to(tree))!r} refused: a symlink to a folder")
        link.unlink()
        if target.is_file() and target.is_relative_to(tree.resolve()):
            os.link(target, link)


def _copy_tree(src: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Copy a source folder: regular files only (a symlink could point anywhere; rglob does not follow them)."""
    files = [p for p in sorted(src.rglob("*")) if not p.is_symlink() and p.is_file()]
    if len(files) > limits.max_members:
        raise UnsafeSource(f"source folder has more than {limits.max_members} files")
    if sum(p.stat().st_size for p in files) > limits.max_bytes:
        raise UnsafeSource(f"source folder holds more than {limits.max_bytes} bytes")
    for p in files:
        out = dest / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(p.read_bytes())


def strip_comments(text: str) -> str:
    return _COMMENT.sub("", text)


def read_tex(path: Path) -> str:
    return strip_comments(read_in_tree(path))


def expand_inputs(main: Path, root: Path) -> str:
    """`main`'s text with its `\\input`/`\\include`/`\\subfile` files inlined (inside `root` only, each once,
    at most 8 M characters): what a reader of the compiled paper sees, for titles, citations and matching."""
    seen: set[Path] = set()
    size = 0

    def expand(path: Path, depth: int) -> str:
        nonlocal size
        if depth > 20 or path in seen or size > _EXPAND_MAX_CHARS:
            return ""
        seen.add(path)
        text = read_tex(path)
        size += len(text)

        def inline(m: re.Match) -> str:
            name = (m.group(1) or m.group(2) or "").strip()
            for base in (main.parent, path.parent):
                if escapes(name, base, root):
                    continue
                for cand in (base / name, base / f"{name}.tex"):
                    if cand.is_file():
                        return expand(cand.resolve(), depth + 1)
            return ""

        return _INPUT.sub(inline, text)

    return expand(main.resolve(), 0)[:_EXPAND_MAX_CHARS]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def main_tex_candidates(tree: Path) -> list[Path]:
    """The `.tex` files with both `\\documentclass` and `\\begin{document}` (comments ignored)."""
    out = []
    for p in sorted(tree.rglob("*.tex")):
        text = read_tex(p)
        if re.search(r"\\documentclass", text) and re.search(r"\\begin\s*\{document\}", text):
            out.append(p)
    return out


def _pairs(words_: list[str]) -> set[tuple[str, str]]:
    return set(zip(words_, words_[1:]))


def source_pairs(tex_text: str) -> set[tuple[str, str]]:
    """The pairs of consecutive words (4+ letters) a source's text holds, LaTeX commands left out."""
    return _pairs(words(_COMMAND.sub(" ", tex_text)))


def page_match(page_text: str, pairs: set[tuple[str, str]]) -> float:
    """The share of a PDF page's pairs of consecutive words that a source holds: 0.66-0.94 for the first page of a
    paper against its own source, under 0.1 for a review of it (which uses its words, not its sentences), 0 for a
    figure or another paper."""
    page = words(page_text)
    return sum(p in pairs for p in zip(page, page[1:])) / (len(page) - 1) if len(page) > 1 else 0.0


def pick_main_tex(tree: Path, pdf_stem: str, first_page_text: str) -> Path | None:
    """The main file (None if there is none); among several, the one named like the PDF, else the one whose text
    (with its inputs) holds the PDF's first page best. Raises MainTexError when that leaves no clear choice."""
    candidates = main_tex_candidates(tree)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    named = [c for c in candidates if c.stem == pdf_stem]
    if len(named) == 1:
        return named[0]
    scores = sorted(((page_match(first_page_text, source_pairs(expand_inputs(c, tree))), c) for c in candidates),
                    key=lambda sc: sc[0], reverse=True)
    if scores[0][0] >= 0.5 and scores[0][0] > scores[1][0] + 0.02:
        return scores[0][1]
    names = ", ".join(str(c.relative_to(tree)) for c in candidates)
    shares = ", ".join(f"{c.name} {s:.2f}" for s, c in scores)
    raise MainTexError(f"several main .tex candidates ({names}) and none clearly holds the PDF's first page ({shares})")


def picture_targets(tree: Path) -> set[str]:
    """The files the sources draw as pictures (`\\includegraphics`/`\\includepdf` targets), without extension."""
    out = set()
    for p in tree.rglob("*.tex"):
        for m in _FILE_COMMAND.finditer(read_tex(p)):
            if m.group(1) in _GRAPHICS:
                t = os.path.normpath(m.group(2).strip("{}").strip())
                out.add(os.path.splitext(t)[0] if t.lower().endswith((".pdf", ".eps", ".png", ".jpg", ".ps")) else t)
    return out


def _first_page_text(path: Path) -> str:
    try:
        with pymupdf.open(path, filetype="pdf") as d:
            return d[0].get_text() if d.page_count else ""
    except (pymupdf.FileDataError, RuntimeError, ValueError):
        return ""


def pick_pdf(tree: Path, name: str, min_match: float = 0.5, min_words: int = 50) -> Path | None:
    """The paper's own PDF in a source folder that may also hold figure PDFs and other documents, or None.

    A PDF named like the folder (or `name`) is taken as given. Otherwise a PDF that the sources draw as a picture
    never is; of the rest (named like a `.tex` first), the first whose first page has `min_words` words and whose
    pairs of consecutive words are mostly (`min_match`) in the sources of some main file (`page_match`). None: the
    paper's PDF is not there (compile it).
    """
    pdfs = sorted(p for p in tree.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    named = [p for p in pdfs if p.stem == name]
    if len(named) == 1:
        return named[0]
    pictures = picture_targets(tree)

    def is_picture(p: Path) -> bool:
        rel = os.path.splitext(p.relative_to(tree).as_posix())[0]
        return any(rel == t or rel.endswith("/" + t) or p.stem == Path(t).name for t in pictures)

    tex_stems = {p.stem for p in tree.rglob("*.tex")}
    rest = sorted((p for p in pdfs if not is_picture(p)), key=lambda p: (p.stem not in tex_stems, p.name))
    sources = [source_pairs(expand_inputs(c, tree)) for c in main_tex_candidates(tree)]
    for p in rest:
        text = _first_page_text(p)
        if len(words(text)) >= min_words and any(page_match(text, s) >= min_match for s in sources):
            return p
    return None
