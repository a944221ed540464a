"""A paper whose source comes without its PDF: compile it, in the sandbox, time-bounded (`latexmk -pdf`, which runs
pdflatex and bibtex or biber as often as the paper needs). latexmk runs with `-norc`: a paper's `latexmkrc` is
Perl, and never runs."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from renderers.paper.sandbox import MAX_TREE_BYTES, ToolTimeout, read_in_tree, run_tool
from renderers.paper.sources import check_sources, main_tex_candidates
from vlcorpus.document import Filtered

# Main files that are not the paper: supplements, rebuttals, a class's own sample document.
_NOT_THE_PAPER = re.compile(r"supp|appendix|response|rebuttal|reply|review|cover|letter|sample|template|poster|slides", re.I)


@dataclass(frozen=True)
class CompileSettings:
    timeout_s: float
    sandbox: bool
    max_tree_bytes: int = MAX_TREE_BYTES


def main_to_compile(tree: Path) -> Path:
    """The one main file to compile; Filtered when there is none or no clear one."""
    candidates = main_tex_candidates(tree)
    if len(candidates) > 1:
        candidates = [c for c in candidates if not _NOT_THE_PAPER.search(c.stem)] or candidates
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(str(c.relative_to(tree)) for c in candidates) or "no .tex with \\documentclass and \\begin{document}"
    raise Filtered(f"no PDF of the paper in the source, and no single main file to compile ({names})")


def compile_pdf(tree: Path, settings: CompileSettings, stats: Counter) -> Path:
    """Compile the paper's main file; its PDF, or Filtered saying why there is none."""
    main = main_to_compile(tree)
    check_sources(tree, main.parent)
    log = tree.parent / "compile.log"
    cmd = ["latexmk", "-norc", "-pdf", "-interaction=nonstopmode", "-f", "-silent", main.name]
    try:
        code = run_tool(cmd, tree=tree, cwd=main.parent, timeout_s=settings.timeout_s, log=log, sandbox=settings.sandbox,
                        max_bytes=settings.max_tree_bytes)
    except ToolTimeout as e:
        stats["compile_timeout"] += 1
        raise Filtered(f"no PDF of the paper in the source, and compiling {main.name} timed out: {e}") from None
    pdf = main.with_suffix(".pdf")
    if not pdf.is_file():
        stats["compile_failed"] += 1
        tex_log = main.with_suffix(".log")
        text = read_in_tree(tex_log) if tex_log.is_file() else log.read_text("utf-8", errors="replace")
        errors = [e for e in re.findall(r"^!.*$", text, re.M)
                  if not re.match(r"^!\s*(Emergency stop|==> Fatal error)", e)]  # the error that stopped it, not the stop
        raise Filtered(f"no PDF of the paper in the source, and compiling {main.name} made none "
                       f"(latexmk exited with {code}: {errors[-1] if errors else 'no TeX error shown'})")
    stats["pdf_compiled"] += 1
    return pdf
