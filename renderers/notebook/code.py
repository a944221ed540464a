"""The code half of a notebook plot/code pair: cleaning a cell's source and finding the earlier cells it needs.

Dependency rule (why: a plot cell alone often uses data and helpers defined cells earlier, while the whole notebook
prefix is mostly unrelated): a cell *needs* the module-level names it reads before binding them itself; a cell
*binds* the names it assigns, imports, defines with `def`/`class`, or mutates through `name[...] =` /
`name.attr =`. Names a function body reads are looked up when it is called, so they are resolved before the plot
cell rather than before the cell defining the function. For each needed name we take the nearest earlier cell
that binds it (notebook order, not execution counts, which are often missing or stale), and then, transitively,
what that cell needs. A name no earlier cell binds falls back to the nearest earlier `from x import *` cell;
builtins and unknown names are ignored. The search is breadth-first, so the cells the plot reads from directly
(typically its imports and data) come before indirect ones when the budget is short. Cells that do not parse as
Python (syntax errors, other kernels) are analysed by a text fallback: identifiers read; `name =`, `name <-`,
`def`/`class`/`function name` and the last name of an import line bound.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from dataclasses import dataclass

_PROMPT_RE = re.compile(r"^(?:>>> ?|\.\.\. ?|In \[\d*\]: ?|\s+\.\.\.: ?)")
_PROMPTED_CELL_RE = re.compile(r"^(?:>>>|In \[\d*\]:)", re.M)
_HELP_RE = re.compile(r"^(?:\?{1,2}[\w.*]+|[\w.*]+\?{1,2})$")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEXT_BIND_RE = re.compile(
    r"^\s*(?:(?:def|class|function)\s+([A-Za-z_]\w*)"
    r"|([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:<-|=(?!=))"
    r"|(?:import|library|require|using)\b.*?([A-Za-z_]\w*)\W*$)",
    re.M,
)
# Cell magics whose body is Python: only the magic line goes; any other cell magic makes the cell non-Python.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug", "matplotlib"})
_BUILTINS = frozenset(dir(builtins)) | {"get_ipython", "display", "In", "Out"}
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp,
           ast.GeneratorExp)


def source_text(source: object) -> str:
    """A cell's source as one string: nbformat allows a string or a list of lines; anything else is no code."""
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    return ""


def is_magic(line: str) -> bool:
    """A line magic, shell escape or help request (`obj?`, `??obj`): IPython syntax, not Python."""
    s = line.strip()
    return s.startswith(("%", "!")) or bool(_HELP_RE.match(s))


def clean_code(source: str, keep_magics: bool) -> str | None:
    """Strip IPython/doctest prompts (and, in a prompted cell, the output lines between them) and, unless
    `keep_magics`, magic/shell/help lines. None for a cell whose body is not Python (e.g. `%%bash`)."""
    lines = source.replace("\r\n", "\n").split("\n")
    if _PROMPTED_CELL_RE.search(source):
        lines = [_PROMPT_RE.sub("", ln, count=1) for ln in lines if _PROMPT_RE.match(ln)]
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.startswith("%%") and not keep_magics:
        name = first[2:].split(maxsplit=1)[0] if len(first) > 2 else ""
        if name not in PYTHON_CELL_MAGICS:
            return None
    if not keep_magics:
        lines = [ln for ln in lines if not is_magic(ln)]
    return "\n".join(lines).strip("\n")


def code_lines(code: str) -> int:
    return sum(1 for ln in code.split("\n") if ln.strip())


@dataclass(frozen=True)
class CellNames:
    needs: frozenset[str]  # read when the cell runs
    deferred: frozenset[str]  # read by functions it defines, when they are called
    binds: frozenset[str]
    star_import: bool
    parsed: bool  # False: the text fallback made these


def _free_names(scope: ast.AST) -> set[str]:
    """Names a function, lambda, class or comprehension reads from the module (approximately: loads minus every
    name bound anywhere inside it)."""
    loads, bound = set(), set()
    for n in ast.walk(scope):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not scope:
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
    return loads - bound


def _statement_names(stmt: ast.stmt) -> tuple[set[str], set[str], set[str], bool]:
    """(names read now, names read when its functions are called, names bound, star import) of one statement."""
    reads: set[str] = set()
    deferred: set[str] = set()
    binds: set[str] = set()
    star = False
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, _SCOPES):
            free = _free_names(node)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                binds.add(node.name)
                free.discard(node.name)  # recursion reads the name being defined
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                deferred |= free
                for part in [*getattr(node, "decorator_list", []), *node.args.defaults, *node.args.kw_defaults]:
                    if part is not None:  # decorators and defaults run at definition time
                        todo.append(part)
            else:
                reads |= free
            continue
        if isinstance(node, ast.Name):
            (reads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    star = True
                else:
                    binds.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, ast.Store):
            base = node.value
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):  # `df["x"] = ...` changes df: this cell is part of df's story
                binds.add(base.id)
        todo.extend(ast.iter_child_nodes(node))
    return reads, deferred, binds, star


def _blank_magics(code: str) -> str:
    return "\n".join("" if is_magic(ln) else ln for ln in code.split("\n"))


def cell_names(code: str, python: bool) -> CellNames:
    """What a cell needs from earlier cells and what it binds for later ones."""
    if python:
        try:
            tree = ast.parse(_blank_magics(code))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            needs: set[str] = set()
            deferred: set[str] = set()
            binds: set[str] = set()
            star = False
            for stmt in tree.body:
                r, d, b, s = _statement_names(stmt)
                needs |= r - binds
                deferred |= d
                binds |= b
                star = star or s
            return CellNames(frozenset(needs - _BUILTINS), frozenset(deferred - binds - _BUILTINS), frozenset(binds),
                             star, True)
    binds = set()
    for m in _TEXT_BIND_RE.finditer(code):
        for group in m.groups():
            if group:
                binds.update(g.strip() for g in group.split(","))
    idents = {w for w in _IDENT_RE.findall(code) if not keyword.iskeyword(w)}
    star = bool(re.search(r"^\s*from\s+\S+\s+import\s+\*", code, re.M))
    return CellNames(frozenset(idents - binds - _BUILTINS), frozenset(), frozenset(binds), star, False)


@dataclass
class CodeContext:
    code: str
    cells: list[int]  # notebook cell indices joined into `code`, in notebook order
    omitted: list[int]  # dependency cells left out because they did not fit the budget
    analysis: str  # "ast" or "text" (the plot cell's own analysis)


def dependencies(target: int, names: dict[int, CellNames]) -> list[int]:
    """Earlier cells (keys of `names`, notebook cell indices) that `target` needs, transitively: breadth-first,
    nearest first within each level."""
    earlier = sorted((i for i in names if i < target), reverse=True)

    def provider(name: str, before: int) -> int | None:
        bound = next((j for j in earlier if j < before and name in names[j].binds), None)
        return bound if bound is not None else next((j for j in earlier if j < before and names[j].star_import), None)

    order: list[int] = []
    wanted = [(n, target) for n in sorted(names[target].needs | names[target].deferred)]
    while wanted:
        found = sorted({j for n, before in wanted if (j := provider(n, before)) is not None} - set(order), reverse=True)
        order.extend(found)
        wanted = [(n, j) for j in found for n in sorted(names[j].needs)]
        wanted += [(n, target) for j in found for n in sorted(names[j].deferred)]
    return order


def collate(target: int, codes: dict[int, str], names: dict[int, CellNames], max_lines: int,
            max_chars: int) -> CodeContext:
    """The target cell's code preceded by the cells it depends on, in `dependencies` order while they fit the budget
    (a cell that does not fit is skipped and listed as omitted), joined in notebook order."""
    lines, chars = code_lines(codes[target]), len(codes[target])
    taken, omitted = [], []
    for j in dependencies(target, names):
        extra_lines, extra_chars = code_lines(codes[j]), len(codes[j]) + 2
        if lines + extra_lines <= max_lines and chars + extra_chars <= max_chars:
            taken.append(j)
            lines, chars = lines + extra_lines, chars + extra_chars
        else:
            omitted.append(j)
    cells = sorted(taken) + [target]
    return CodeContext(
        code="\n\n".join(codes[j] for j in cells),
        cells=cells,
        omitted=sorted(omitted),
        analysis="ast" if names[target].parsed else "text",
    )
