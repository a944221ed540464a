"""Reading a category's input shards once, in parallel, before anything is written: per sample its key, byte range,
text tokens and dedup digests (one Ray task per group of shards, or in-process with --local).

Each shard is first checked against its sidecar (`vlcorpus.shards.verify_shard`), then read member by member: every
sample is parsed and checked against the contract (`Sample.from_wds`), so an off-contract sample is known, and
recorded, before the plan counts it. What comes back is small (a few hundred bytes per sample, plus the MinHash signature
with near_dup), so the plan can be made over the whole category and the writers can read each chosen sample
directly by its byte range.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from mixer.dedup import Signer, content_hash, image_digest, normalise
from vlcorpus import storage
from vlcorpus.sample import Sample
from vlcorpus.shards import ChecksumError, verify_shard

TASK_BYTES = 64 * 1024**2  # input read by one scan task (whole shards; at least one)


@dataclass
class ShardScan:
    """One input shard, column by column (index i is the shard's i-th valid sample)."""

    shard: str
    checksum_error: str = ""  # the shard does not match its sidecar: nothing of it is used, the mix stops
    keys: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # byte range of the sample's tar members in the shard
    ends: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # estimated text tokens
    images: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)  # exact dedup: xxh3-128 of normalised text + images
    image_digests: list[bytes] = field(default_factory=list)  # near dup only
    signatures: list[bytes | None] = field(default_factory=list)  # near dup only: MinHash of the text
    languages: list[str] = field(default_factory=list)  # meta.language ("" when the sample has none)
    licenses: list[tuple[str, ...]] = field(default_factory=list)  # (SPDX id, statement) known, else ("unknown",)
    failures: list[dict[str, str]] = field(default_factory=list)  # ledger lines for what could not be used


BLOCK = 512


def _number(field: bytes) -> int:
    """A tar header number: octal text, or base-256 when the first byte has its high bit set (GNU)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header ("<length> <key>=<value>\\n" each)."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return out


def iter_ranges(f: BinaryIO) -> Iterator[tuple[dict, int, int]]:
    """Samples of a tar as webdataset groups them (consecutive members sharing the name before the first dot of the
    basename, as `vlcorpus.shards.iter_members`), each with the byte range its members (headers included) occupy.

    Reads the headers itself (ustar, with pax and GNU long-name extensions), checksum included: `tarfile`'s pure
    Python header parsing costs more than the rest of the scan, and the writers read each sample on its own."""
    current: dict = {}
    start = end = pos = 0
    ext: dict[str, str] = {}
    ext_start: int | None = None
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK):
            if header.strip(b"\0"):
                raise ValueError(f"truncated tar header at byte {pos}")
            break
        if _number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ValueError(f"tar header checksum mismatch at byte {pos}")
        kind = header[156:157]
        size = int(ext["size"]) if "size" in ext else _number(header[124:136])
        data = f.read(size)
        if len(data) < size or len(f.read(-size % BLOCK)) < -size % BLOCK:
            raise ValueError(f"tar member at byte {pos} is cut short")
        member_start = pos if ext_start is None else ext_start
        pos += BLOCK + size + (-size % BLOCK)
        if kind in (b"x", b"L"):  # a pax header or a GNU long name for the next member
            ext_start = member_start if ext_start is None else ext_start
            ext |= _pax(data) if kind == b"x" else {"path": data.rstrip(b"\0").decode("utf-8")}
            continue
        name = ext.get("path")
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = f"{prefix.decode('utf-8')}/{name}"
        ext, ext_start = {}, None
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global headers: not sample members
            continue
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot < 0:
            continue
        key, suffix = name[:dot], name[dot + 1 :]
        if current and key != current["__key__"]:
            yield current, start, end
            current = {}
        if not current:
            current, start = {"__key__": key}, member_start
        current[suffix] = data
        end = pos
    if current:
        yield current, start, end


def read_range(f: BinaryIO, start: int, end: int) -> dict:
    """The members of the one sample stored at [start, end) of an open shard."""
    if isinstance(f, io.BufferedReader):
        data = os.pread(f.fileno(), end - start, start)
    else:  # an object on a store: one ranged GET
        f.seek(start)
        data = f.read(end - start)
    samples = list(iter_ranges(io.BytesIO(data)))
    if len(samples) != 1:
        raise ValueError(f"bytes {start}..{end} hold {len(samples)} samples, not one (the shard changed since it was read)")
    return samples[0][0]


def licence(provenance: dict | None) -> tuple[str, ...]:
    """A sample's licence as the mixture selects by it: its SPDX id and statement, or ("unknown",)."""
    known = tuple(v for v in ((provenance or {}).get(k) for k in ("license_spdx", "license")) if v)
    return known or ("unknown",)


def scan_shard(shard: str, near_dup: bool, num_perm: int) -> ShardScan:
    out = ShardScan(shard)
    try:
        verify_shard(shard)
    except ChecksumError as e:
        out.checksum_error = str(e)
        return out
    sign = Signer(num_perm) if near_dup else None
    try:
        with storage.open_read(shard) as f:
            for members, start, end in iter_ranges(f):
                try:
                    sample = Sample.from_wds(members)
                except ValueError as e:  # ContractError, or a json member that is not UTF-8
                    out.failures.append({"doc": f"{shard}#{members['__key__']}", "origin": shard,
                                         "error_class": type(e).__name__, "error": str(e)})
                    continue
                text, images = normalise(sample.text), image_digest(sample)
                out.keys.append(sample.key)
                out.starts.append(start)
                out.ends.append(end)
                out.tokens.append(sample.text_tokens)
                out.images.append(len(sample.images))
                out.digests.append(content_hash(text, images))
                out.languages.append(sample.meta.get("language") or "")
                out.licenses.append(licence(sample.meta.get("provenance")))
                if sign is not None:
                    out.image_digests.append(images)
                    out.signatures.append(sign(text))
    except (OSError, ValueError) as e:
        out.failures.append({"doc": shard, "origin": shard, "error_class": type(e).__name__,
                             "error": f"shard unreadable, rest of it skipped: {e}"})
    return out


def scan_shards(shards: list[str], near_dup: bool, num_perm: int) -> list[ShardScan]:
    """One scan task's work: its shards in order."""
    return [scan_shard(s, near_dup, num_perm) for s in shards]


def task_groups(shards: list[tuple[str, int]]) -> list[list[str]]:
    """Consecutive shards `(path, bytes)` grouped into tasks of about TASK_BYTES each."""
    groups: list[list[str]] = []
    size = TASK_BYTES
    for path, nbytes in shards:
        if size >= TASK_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += nbytes
    return groups
