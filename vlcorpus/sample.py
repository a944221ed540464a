"""The sample contract (docs/samples.md): one WebDataset sample per key `K`.

`Sample` is the unit every producer emits and every consumer reads. `Sample.validate()` is the one place the
contract is enforced; writers call it, so an off-contract sample never reaches a tar.

On disk (schema `vlcorpus/2`) a sample is one member, `K.sample.mp`: a msgpack map whose every field has the same
type in every sample, so readers that infer one schema from the first rows (Hugging Face `datasets`' webdataset
builder, Ray Data's `read_webdataset`) lose nothing: `segments` is a list of `{role, text, image, bytes}` with `""`
(or `b""`) for what a segment lacks and the image's encoded bytes inline, `taxonomy` and `meta` are JSON text
(`""` when there is no taxonomy). Every member set is the same, whatever the category, image count or format.
The project's readers also take `vlcorpus/1` (`K.json` + one `K.<n>.jpg|png` per image), which `from_wds` accepts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

SCHEMA = "vlcorpus/2"
SCHEMA_V1 = "vlcorpus/1"
MEMBER = "sample.mp"  # the one member of a vlcorpus/2 sample

PRETRAIN_CATEGORIES = ("interleaved", "caption", "table_chart", "web_code", "scene_ocr", "doc_ocr", "text")
SFT_CATEGORIES = ("sft_taxonomy", "sft_general", "sft_table_chart", "sft_web_code", "sft_text")
CATEGORIES = PRETRAIN_CATEGORIES + SFT_CATEGORIES
TEXT_ONLY_CATEGORIES = ("text", "sft_text")
ROLES = ("user", "assistant", "system")

_SOURCE_RE = re.compile(r"^[a-z0-9_]+$")
_IMAGE_NAME_RE = re.compile(r"^(\d+)\.(jpg|png)$")
_KEY_RE = re.compile(r"^[a-z0-9_]+-[0-9a-f]{16}-\d{5,}$")
_MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


class ContractError(ValueError):
    """A sample that breaks the contract; the message names the field."""


def make_key(source: str, doc: str, part: int) -> str:
    """`<source>-<16 hex of sha1(doc)>-<part, 5 digits>`: the same document and part give the same key on every run."""
    return f"{source}-{hashlib.sha1(doc.encode('utf-8')).hexdigest()[:16]}-{part:05d}"


def estimate_tokens(text: str) -> int:
    """Text tokens as a byte-level BPE sees them, roughly: one per 4 UTF-8 bytes (about 0.75 per CJK character)."""
    return (len(text.encode("utf-8")) + 3) // 4


@dataclass(slots=True)
class Sample:
    category: str
    source: str
    doc: str
    part: int
    origin: str
    segments: list[dict[str, str]]
    images: dict[str, bytes] = field(default_factory=dict)
    taxonomy: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return make_key(self.source, self.doc, self.part)

    @property
    def text(self) -> str:
        """All text segments joined by blank lines (what token counts and dedup look at)."""
        return "\n\n".join(s["text"] for s in self.segments if "text" in s)

    @property
    def text_tokens(self) -> int:
        return estimate_tokens(self.text)

    def validate(self) -> Sample:
        """Raise ContractError naming the first field that is off-contract; return self when all is well."""
        if self.category not in CATEGORIES:
            raise ContractError(f"category: {self.category!r} is not one of {', '.join(CATEGORIES)}")
        if not isinstance(self.source, str) or not _SOURCE_RE.match(self.source):
            raise ContractError(f"source: {self.source!r} must match [a-z0-9_]+ (it is part of the key)")
        if not isinstance(self.doc, str) or not self.doc:
            raise ContractError("doc: must be a non-empty string")
        if not isinstance(self.part, int) or isinstance(self.part, bool) or self.part < 0:
            raise ContractError(f"part: {self.part!r} must be an integer >= 0")
        if not isinstance(self.origin, str) or not self.origin:
            raise ContractError("origin: must be a non-empty string")
        self._validate_segments()
        if self.taxonomy is not None:
            if not isinstance(self.taxonomy, list) or not self.taxonomy or not all(
                isinstance(t, str) and t for t in self.taxonomy
            ):
                raise ContractError(f"taxonomy: {self.taxonomy!r} must be a non-empty list of non-empty strings")
        elif self.category == "sft_taxonomy":
            raise ContractError("taxonomy: required for category sft_taxonomy")
        if not isinstance(self.meta, dict):
            raise ContractError("meta: must be a dict")
        try:
            json.dumps(self.meta, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ContractError(f"meta: not JSON-serialisable ({e})") from None
        return self

    def _validate_segments(self) -> None:
        if not isinstance(self.segments, list) or not self.segments:
            raise ContractError("segments: must be a non-empty list")
        named: list[str] = []
        with_role = 0
        for i, seg in enumerate(self.segments):
            where = f"segments[{i}]"
            if not isinstance(seg, dict):
                raise ContractError(f"{where}: must be a dict")
            content = [k for k in ("text", "image") if k in seg]
            extra = set(seg) - {"text", "image", "role"}
            if len(content) != 1 or extra:
                raise ContractError(f"{where}: needs exactly one of 'text'/'image' (and optionally 'role'), got {sorted(seg)}")
            if "text" in seg and not isinstance(seg["text"], str):
                raise ContractError(f"{where}.text: must be a string")
            if "image" in seg:
                name = seg["image"]
                if not isinstance(name, str) or not _IMAGE_NAME_RE.match(name):
                    raise ContractError(f"{where}.image: {name!r} must be '<n>.jpg' or '<n>.png'")
                if name not in self.images:
                    raise ContractError(f"{where}.image: {name!r} is not among the sample's images {sorted(self.images)}")
                named.append(name)
            if "role" in seg:
                with_role += 1
                if seg["role"] not in ROLES:
                    raise ContractError(f"{where}.role: {seg['role']!r} is not one of {', '.join(ROLES)}")
        if with_role not in (0, len(self.segments)):
            raise ContractError("segments: roles must be on every segment or on none")
        if self.category.startswith("sft_") and not with_role:
            raise ContractError(f"segments: category {self.category} is a conversation and needs a role on every segment")
        if len(set(named)) != len(named):
            raise ContractError("images: an image is named by more than one segment")
        unused = set(self.images) - set(named)
        if unused:
            raise ContractError(f"images: {sorted(unused)} are not named by any segment")
        for name, data in self.images.items():
            ext = name.rsplit(".", 1)[1]
            if not isinstance(data, bytes) or not data.startswith(_MAGIC[ext]):
                raise ContractError(f"images[{name!r}]: bytes are not a {ext.upper()} file")
        if self.category in TEXT_ONLY_CATEGORIES and self.images:
            raise ContractError(f"images: category {self.category} is text-only")

    def to_record(self) -> dict[str, Any]:
        """The `vlcorpus/2` map: the same fields and types in every sample (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "category": self.category,
            "source": self.source,
            "doc": self.doc,
            "part": self.part,
            "origin": self.origin,
            "segments": [
                {"role": s.get("role", ""), "text": s.get("text", ""), "image": s.get("image", ""),
                 "bytes": self.images[s["image"]] if "image" in s else b""}
                for s in self.segments
            ],
            "taxonomy": "" if self.taxonomy is None else json.dumps(self.taxonomy, ensure_ascii=False),
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
        }

    def to_wds(self) -> dict[str, Any]:
        """WebDataset members: `__key__` and `sample.mp`, the msgpack of `to_record()`."""
        self.validate()
        return {"__key__": self.key, MEMBER: msgpack.packb(self.to_record(), use_bin_type=True)}

    @classmethod
    def from_wds(cls, members: dict[str, Any]) -> Sample:
        """Inverse of `to_wds`, for `vlcorpus/2` and `vlcorpus/1` members (raw bytes, or as a reader decoded them);
        checks the key the members came under against the one the sample implies."""
        key = members.get("__key__")
        if MEMBER in members:
            sample = cls._from_record(members[MEMBER], key)
        elif "json" in members:
            sample = cls._from_v1(members, key)
        else:
            raise ContractError(f"{MEMBER}: sample {key!r} has neither a {MEMBER} member nor a {SCHEMA_V1} json member")
        sample.validate()
        if key is not None and key != sample.key:
            raise ContractError(f"__key__: {key!r} does not match the key of its sample ({sample.key!r})")
        return sample

    @classmethod
    def _from_record(cls, raw: Any, key: str | None) -> Sample:
        try:
            d = msgpack.unpackb(raw, raw=False) if isinstance(raw, bytes) else raw
            taxonomy = json.loads(d["taxonomy"]) if d.get("taxonomy") else None
            meta = json.loads(d["meta"])
            segments, images = [], {}
            for seg in d["segments"]:
                out = {"role": seg["role"]} if seg["role"] else {}
                if seg["image"]:
                    out["image"] = seg["image"]
                    images[seg["image"]] = seg["bytes"]
                else:
                    out["text"] = seg["text"]
                segments.append(out)
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as e:
            raise ContractError(f"{MEMBER}: sample {key!r} is not a {SCHEMA} record ({type(e).__name__}: {e})") from None
        if d.get("schema") != SCHEMA:
            raise ContractError(f"schema: {d.get('schema')!r} is not {SCHEMA!r}")
        return cls(category=d.get("category"), source=d.get("source"), doc=d.get("doc"), part=d.get("part"),
                   origin=d.get("origin"), segments=segments, images=images, taxonomy=taxonomy, meta=meta)

    @classmethod
    def _from_v1(cls, members: dict[str, Any], key: str | None) -> Sample:
        raw = members["json"]
        try:
            d = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        except json.JSONDecodeError as e:
            raise ContractError(f"json: sample {key!r} is not valid JSON ({e})") from None
        if d.get("schema") != SCHEMA_V1:
            raise ContractError(f"schema: {d.get('schema')!r} is not {SCHEMA_V1!r}")
        return cls(category=d.get("category"), source=d.get("source"), doc=d.get("doc"), part=d.get("part"),
                   origin=d.get("origin"), segments=d.get("segments"),
                   images={k: v for k, v in members.items() if _IMAGE_NAME_RE.match(k)},
                   taxonomy=d.get("taxonomy"), meta=d.get("meta", {}))


def is_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))
