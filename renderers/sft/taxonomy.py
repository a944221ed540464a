"""The SFT use-case taxonomy (DeepSeek-VL Table 3) as data: load, validate, resolve labels to leaf paths.

The default lives in `renderers/sft/taxonomy.yaml`; a user file with the same shape replaces it (`--taxonomy`).
A leaf is a node without children; its path (2 or 3 names) is what samples carry in `taxonomy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_PATH = Path(__file__).with_name("taxonomy.yaml")
_LEAF_KEYS = {"name", "prompts", "eval_prompts", "keywords"}


def _norm(label: str) -> str:
    return re.sub(r"\s*([/>])\s*", r"\1", label.strip().lower())


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the node."""


class UnknownLabel(KeyError):
    """A conversation's label that names no leaf of the taxonomy."""


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass
class Taxonomy:
    name: str
    others: str  # the label of conversations no leaf fits
    descriptions: dict[str, str]  # main category -> description
    leaves: dict[tuple[str, ...], Leaf] = field(default_factory=dict)

    def resolve(self, label: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """A leaf path from a label: a path (a list, or names joined by '/' or '>'), or a leaf name unique in the tree."""
        text = label if isinstance(label, str) else "/".join(str(p) for p in label)
        wanted = _norm(text)
        if wanted == _norm(self.others):
            return (self.others,)
        hits = [p for p in self.leaves if wanted in (_norm("/".join(p)), _norm(">".join(p)))]
        if not hits:
            hits = [p for p in self.leaves if _norm(p[-1]) == wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UnknownLabel(f"label {label!r} is ambiguous ({len(hits)} leaves have that name); give the full path")
        raise UnknownLabel(f"label {label!r} is not a leaf of taxonomy {self.name!r}")

    def leaf(self, path: tuple[str, ...]) -> Leaf:
        try:
            return self.leaves[tuple(path)]
        except KeyError:
            raise UnknownLabel(f"{' / '.join(path)!r} is not a leaf of taxonomy {self.name!r}") from None


def _strings(value: object, where: str, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise TaxonomyError(f"{where}: must be a non-empty list of non-empty strings")
    return tuple(v.strip() for v in value)


def _walk(node: dict, trail: tuple[str, ...], tax: Taxonomy, depth: int) -> None:
    where = " / ".join(trail) or "taxonomy"
    if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not node["name"].strip():
        raise TaxonomyError(f"{where}: every node needs a non-empty 'name'")
    path = trail + (node["name"].strip(),)
    where = " / ".join(path)
    children = node.get("children")
    if children is None:
        if depth == 1:
            raise TaxonomyError(f"{where}: a main category needs children")
        unknown = set(node) - _LEAF_KEYS
        if unknown:
            raise TaxonomyError(f"{where}: unknown keys {sorted(unknown)} (a leaf has {sorted(_LEAF_KEYS)})")
        leaf = Leaf(
            path=path,
            prompts=_strings(node.get("prompts"), f"{where}.prompts", required=True),
            eval_prompts=_strings(node.get("eval_prompts"), f"{where}.eval_prompts", required=False),
            keywords=tuple(k.lower() for k in _strings(node.get("keywords"), f"{where}.keywords", required=False)),
        )
        shared = set(leaf.prompts) & set(leaf.eval_prompts)
        if shared:
            raise TaxonomyError(f"{where}: prompts {sorted(shared)} are in both the training and the eval pool")
        tax.leaves[path] = leaf
        return
    if depth >= 3:
        raise TaxonomyError(f"{where}: the taxonomy has at most three levels")
    if not isinstance(children, list) or not children:
        raise TaxonomyError(f"{where}: 'children' must be a non-empty list")
    names = [c.get("name") for c in children if isinstance(c, dict)]
    if len(set(names)) != len(names):
        raise TaxonomyError(f"{where}: children names repeat")
    if depth == 1:
        desc = node.get("description")
        if not isinstance(desc, str) or not desc.strip():
            raise TaxonomyError(f"{where}: a main category needs a 'description'")
        tax.descriptions[path[0]] = desc.strip()
    for child in children:
        _walk(child, path, tax, depth + 1)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy file (the DeepSeek-VL default when `path` is None)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TaxonomyError(f"{path}: cannot read the taxonomy ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not data["categories"]:
        raise TaxonomyError(f"{path}: needs a non-empty 'categories' list")
    tax = Taxonomy(name=str(data.get("name", path.stem)), others=str(data.get("others", "Others")), descriptions={})
    mains = [c.get("name") for c in data["categories"] if isinstance(c, dict)]
    if len(set(mains)) != len(mains):
        raise TaxonomyError(f"{path}: main category names repeat")
    for main in data["categories"]:
        _walk(main, (), tax, 1)
    if tax.others in tax.descriptions:
        raise TaxonomyError(f"{path}: 'others' ({tax.others!r}) must not be a main category name")
    return tax
