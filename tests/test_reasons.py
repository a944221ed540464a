"""Every count name the code writes to a ledger is declared in `vlcorpus/reasons.py`, and docs/reasons.md is the
table generated from it.

The code is read with `ast`: string literals used as the key of a counter (`stats[...]`, `counts[...]`, `failed[...]`),
the reason given to `BadImage(...)`, `Dropped(...)`, `drop(...)`, `Unique(reason=...)`, a `{"reason": ...}` or
`{DROP: ...}` record, and a `reason, message = "...", ...` assignment; an f-string key (`stats[f"derived_{leaf}"]`)
must start like a declared name."""

from __future__ import annotations

import ast
from pathlib import Path

from vlcorpus.reasons import BY_NAME, DOC, NOT_DROP_PREFIXES, is_declared, markdown

ROOT = Path(__file__).resolve().parent.parent
CODE = ("vlcorpus", "pipelines", "renderers", "mixer", "trainer", "reports", "chain")
COUNTERS = {"stats", "counts", "failed"}
REASON_CALLS = {"BadImage", "Dropped", "drop"}


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _key_literals(node: ast.AST) -> list[str]:
    """The names a counter key can be: its literal, both arms of `a if c else b`, the default of `x.get(k, default)`,
    an f-string's literal start followed by `*`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return [f"{first.value}*"] if isinstance(first, ast.Constant) else []
    if isinstance(node, ast.IfExp):
        return _key_literals(node.body) + _key_literals(node.orelse)
    if isinstance(node, ast.Call) and _name(node.func) == "get" and len(node.args) == 2:
        return _key_literals(node.args[1])
    return []


def written_names(source: str) -> list[tuple[str, int]]:
    """(name, line) of every count name `source` writes, as far as literals show it."""
    found = []
    for n in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(n, ast.Subscript) and _name(n.value) in COUNTERS:
            names = _key_literals(n.slice)
        elif isinstance(n, ast.Call) and _name(n.func) in REASON_CALLS and n.args:
            names = _key_literals(n.args[0])
        elif isinstance(n, ast.keyword) and n.arg == "reason":
            names = _key_literals(n.value)
        elif isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values):
                if isinstance(k, ast.Constant) and k.value == "reason" or isinstance(k, ast.Name) and k.id == "DROP":
                    names += _key_literals(v)
        elif isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple) and isinstance(n.value, ast.Tuple):
            names = [v.value for t, v in zip(n.targets[0].elts, n.value.elts)
                     if isinstance(t, ast.Name) and t.id == "reason" and isinstance(v, ast.Constant)]
        found += [(name, n.lineno) for name in names]
    return found


def declared(name: str) -> bool:
    if name.endswith("*"):
        prefix = name[:-1]
        return prefix.startswith(NOT_DROP_PREFIXES) or any(n.startswith(prefix) for n in BY_NAME)
    return is_declared(name)


def test_every_count_name_the_code_writes_is_declared():
    undeclared, seen = [], set()
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, line in written_names(path.read_text("utf-8")):
                seen.add(name)
                if not declared(name):
                    undeclared.append(f"{name!r} (written at {path.relative_to(ROOT)}:{line})")
    assert not undeclared, (
        "count names written to the ledger but not declared: add a Reason(name, family, meaning[, drop=False]) for "
        "each to REASONS in vlcorpus/reasons.py, then run `python -m vlcorpus.reasons` to regenerate docs/reasons.md:\n  "
        + "\n  ".join(undeclared))
    # the scan reads every kind of place a name is written from (else it would pass by finding nothing)
    for name in ("compile_failed", "image_remote", "bad_turn", "not_one_image", "duplicate_image", "record_too_large",
                 "page_unverified", "split_failed", "no_images", "image_missing", "text_from_*", "derived_*"):
        assert name in seen, name


def test_names_the_reports_and_warnings_group_by_are_declared():
    from pipelines.job import HINTS
    from reports.paper_routes import BIBLIOGRAPHY, PAGE_REFUSED, REFERENCES, ROUTE_LOST

    named = [*ROUTE_LOST, *PAGE_REFUSED, *BIBLIOGRAPHY, *REFERENCES, *(k for k in HINTS if ":" not in k)]
    assert [n for n in named if not is_declared(n)] == []


def test_the_scan_catches_an_undeclared_name():
    source = 'stats["no_such_reason"] += 1\nraise BadImage("image_missing", "m")\nstats[f"text_from_{x}"] += 1\n'
    assert written_names(source) == [("no_such_reason", 1), ("image_missing", 2), ("text_from_*", 3)]
    assert [declared(n) for n, _ in written_names(source)] == [False, True, True]


def test_docs_reasons_md_is_generated_from_the_module():
    assert DOC.read_text("utf-8") == markdown(), "docs/reasons.md is stale: run `python -m vlcorpus.reasons`"
    assert all(f"`{name}`" in markdown() for name in BY_NAME)
