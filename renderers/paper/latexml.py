"""A LaTeX source tree -> Nougat markdown, through LaTeXML and Nougat's own parser (the route DeepSeek-VL used).

The source is untrusted: it is unpacked with `renderers.paper.sandbox.safe_extract`, every file-reading command is checked
for absolute or `..` targets before LaTeXML runs, and LaTeXML itself runs in bubblewrap (no network, only the
paper's folder and the read-only system) with its own timeout, killed as a process group.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from renderers.paper.sandbox import ArchiveLimits, isolated, run_bounded, safe_extract

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz")
SOURCE_SUFFIXES = (".tex", ".sty", ".cls", ".bbl", ".clo", ".def", ".cfg", ".ltx")
# Our LaTeXML bindings (a stand-in for expl3, see latexml_bindings/expl3.pool.ltxml), searched before LaTeXML's own.
BINDINGS = Path(__file__).resolve().parent / "latexml_bindings"
# What LaTeXML needs of the host besides /usr (TeX's configuration lives in /etc/texmf).
_SYSTEM_READ_ONLY = ("/etc/texmf", "/etc/alternatives", "/etc/ld.so.cache", "/etc/perl", str(BINDINGS))

_COMMENT = re.compile(r"(?<!\\)%.*")
# Commands that open a file, with their target: `\input{x}`, `\input x`, `\openin3=x`, `\includegraphics[..]{x}`.
_FILE_COMMAND = re.compile(
    r"\\(input|include|InputIfFileExists|IfFileExists|openin|openout|includegraphics|lstinputlisting|verbatiminput"
    r"|VerbatimInput|import|subimport|includefrom|subfile|addbibresource|bibliography|includepdf|usepackage"
    r"|RequirePackage|documentclass|LoadClass)(?![A-Za-z@])\*?"
    r"\s*(?:\\?[A-Za-z@]*\d*\s*=?\s*)?(?:\[[^\]]*\]\s*)*(\{[^}]*\}|[^\s{}\\%]+)"
)
_SUBIMPORT = re.compile(r"\\(?:sub)?import\*?\s*\{([^}]*)\}\s*\{([^}]*)\}")


class UnsafeSource(ValueError):
    """A source tree refused before LaTeXML ran; the message names the file and command."""


class MainTexError(ValueError):
    """Several `.tex` files could be the paper and the PDF does not tell which."""


class LatexmlError(RuntimeError):
    """LaTeXML produced no usable document (fatal error, timeout, or nothing parseable)."""


@dataclass(frozen=True)
class LatexmlSettings:
    timeout_s: float
    sandbox: bool
    archive: ArchiveLimits


def escapes(target: str, base: Path, root: Path) -> bool:
    """Whether a file name, as TeX resolves it from `base`, points outside `root` (absolute, `~`, `..` out, a pipe)."""
    t = target.strip().strip('"')
    if not t or t.startswith("\\"):  # a macro: what it expands to is the sandbox's business
        return False
    if t.startswith(("/", "~", "|")) or re.match(r"^[A-Za-z]:", t):
        return True
    resolved = os.path.normpath(base / t)
    return not (resolved == str(root) or resolved.startswith(str(root) + os.sep))


def check_sources(root: Path, base: Path) -> None:
    """Refuse a tree whose TeX files read or write files outside it (`\\input{/etc/passwd}`, `\\openin` of `..`).

    Targets are resolved from `base`, the main file's folder, as TeX does. This is the early, explainable refusal;
    the sandbox LaTeXML runs in is what actually keeps it inside (macros can build a path no scan sees).
    """
    root = Path(os.path.normpath(root))
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(SOURCE_SUFFIXES):
            continue
        text = _strip(path.read_text("utf-8", errors="replace"))
        rel = path.relative_to(root)
        for m in _FILE_COMMAND.finditer(text):
            for target in m.group(2).strip("{}").split(","):
                if escapes(target, base, root):
                    raise UnsafeSource(f"{rel}: \\{m.group(1)} of {target.strip()!r} reaches outside the paper's folder")
        for m in _SUBIMPORT.finditer(text):
            if escapes(m.group(1) + "/" + m.group(2), base, root):
                raise UnsafeSource(f"{rel}: \\import of {m.group(1)}{m.group(2)!r} reaches outside the paper's folder")


def prepare_source(source: Path, workdir: Path, limits: ArchiveLimits) -> Path:
    """A private, writable copy of the source tree under `workdir` (archives checked and unpacked); its root."""
    tree = workdir / "src"
    if source.is_dir():
        _copy_tree(source, tree, limits)
    elif source.name.lower().endswith(ARCHIVE_SUFFIXES):
        files = safe_extract(source, tree, limits)
        if len(files) == 1 and files[0].suffix.lower() != ".tex":  # arXiv's single gzipped .tex has no suffix
            files[0].rename(files[0].with_name(files[0].name + ".tex"))
    elif source.suffix.lower() == ".tex":
        tree.mkdir(parents=True)
        (tree / source.name).write_bytes(source.read_bytes())
    else:
        raise UnsafeSource(f"{source.name}: not a folder, .tex or source archive")
    return tree


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


def _strip(text: str) -> str:
    return _COMMENT.sub("", text)


def main_tex_candidates(tree: Path) -> list[Path]:
    """The `.tex` files with both `\\documentclass` and `\\begin{document}` (comments ignored)."""
    out = []
    for p in sorted(tree.rglob("*.tex")):
        text = _strip(p.read_text("utf-8", errors="replace"))
        if re.search(r"\\documentclass", text) and re.search(r"\\begin\s*\{document\}", text):
            out.append(p)
    return out


def _title_words(tex: Path) -> set[str]:
    m = re.search(r"\\title\s*(?:\[[^\]]*\])?\s*\{(.{0,500}?)\}", _strip(tex.read_text("utf-8", errors="replace")), re.S)
    return set(re.findall(r"[a-z]{3,}", m.group(1).lower())) if m else set()


def pick_main_tex(tree: Path, pdf_stem: str, first_page_text: str) -> Path | None:
    """The main file (None if there is none); among several, the one named like the PDF, else the one whose
    title the PDF's first page shows. Raises MainTexError when that leaves more than one."""
    candidates = main_tex_candidates(tree)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    named = [c for c in candidates if c.stem == pdf_stem]
    if len(named) == 1:
        return named[0]
    page_words = set(re.findall(r"[a-z]{3,}", first_page_text.lower()))
    scores = sorted(((len(w & page_words) / len(w) if w else 0.0, c) for c in candidates for w in [_title_words(c)]),
                    key=lambda sc: sc[0], reverse=True)
    if scores[0][0] >= 0.5 and scores[0][0] > scores[1][0]:
        return scores[0][1]
    names = ", ".join(str(c.relative_to(tree)) for c in candidates)
    raise MainTexError(f"several main .tex candidates ({names}) and none matches the PDF's title")


def latexml_to_html(main: Path, tree: Path, settings: LatexmlSettings) -> Path:
    """Run latexmlc on `main` inside `tree`; return the HTML file. Raises LatexmlError or ToolTimeout."""
    rel = main.relative_to(tree)
    html = main.parent / "_latexml" / (main.stem + ".html")
    cmd = ["latexmlc", "--nocomments", "--nodefaultresources", "--nographicimages", "--nopictureimages", f"--path={BINDINGS}",
           f"--timeout={int(settings.timeout_s)}", f"--dest=_latexml/{html.name}", str(rel)]
    if settings.sandbox:
        cmd = isolated(cmd, tree, cwd=str(rel.parent), read_only=_SYSTEM_READ_ONLY)
    log = tree.parent / "latexml.log"
    code = run_bounded(cmd, cwd=main.parent, timeout_s=settings.timeout_s + 10, log=log)
    if code != 0 or not html.exists():
        text = log.read_text("utf-8", errors="replace")
        fatal = re.findall(r"^Fatal:.*$", text, re.M)
        raise LatexmlError(f"latexmlc exited with {code}: {fatal[0] if fatal else text[-400:].strip()}")
    return html


def html_to_markdown(html: Path) -> tuple[str, dict[str, str]]:
    """Nougat's html2md step: minify, `parse_latexml`, `format_document(keep_refs=True)` -> (markdown, figures)."""
    import htmlmin
    from bs4 import BeautifulSoup

    from renderers.paper.nougat_tools import format_document, parse_latexml

    raw = html.read_text("utf-8", errors="replace").replace("\xa0", " ")
    soup = BeautifulSoup(htmlmin.minify(raw, remove_all_empty_space=1), features="html.parser")
    try:
        doc = parse_latexml(soup)
    except ValueError as e:  # Nougat's own quality gate, e.g. "missing reference detected": it skips such papers
        raise LatexmlError(f"Nougat's LaTeXML parser refused the paper: {e}") from None
    if doc is None:
        raise LatexmlError("LaTeXML's HTML has no <article> element")
    text, figures = format_document(doc, keep_refs=True)
    if not text.strip():
        raise LatexmlError("LaTeXML's HTML holds no text")
    return text, figures
