"""Configs are dataclasses of plain values; files and `key=value` overrides may set only fields that exist.

nanoGPT's configurator, made strict: an unknown key or a value of the wrong type stops at once and says what to fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used as written."""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(name, value, opt)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} is not a {annotation}")
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{name}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(annotation) or (Any, Any)
        return {_coerce(name, k, kt): _coerce(f"{name}.{k}", v, vt) for k, v in value.items()}
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{name}: expected {annotation.__name__}, got {value!r}")
        return value
    if annotation is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["a=1", "b.c=x"]` -> nested dict; values are parsed as YAML scalars (1 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = safe_yaml(raw, f"override {pair!r}")
    return out


def safe_yaml(text: str, where: str) -> Any:
    """Plain YAML values; a file that does not parse, or that asks for Python objects (`!!python/...`, which
    `safe_load` never builds), stops with a ConfigError naming `where` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError) and "python/" in str(e.problem):
            raise ConfigError(f"{where}{at}: a YAML tag that builds a Python object ({e.problem.split()[-1]}) is "
                              "refused; write plain values (strings, numbers, lists, mappings)") from None
        raise ConfigError(f"{where}{at}: not valid YAML: {getattr(e, 'problem', None) or e}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = safe_yaml(path.read_text("utf-8"), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data = loaded
    return from_dict(cls, _merge(data, parse_overrides(overrides or [])))
