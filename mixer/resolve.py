"""Preflight: from corpus folders and a mixture file to the input shards of each category, reading only
`index.json` and the filesystem (no tar is opened).

So every error a corpus can show without reading its data (no index, a missing shard or sidecar, a size that does
not match, an empty required category) stops the mix before anything is read or written.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from mixer.config import MixtureConfig
from vlcorpus import storage
from vlcorpus.sample import CATEGORIES
from vlcorpus.shards import ShardInfo, read_index, shard_under, sidecar_path

log = logging.getLogger("vlcorpus.mixer")


class MixError(ValueError):
    """A mixture that cannot be built from these inputs; the message says what to fix."""


@dataclass
class InputShard:
    path: str
    samples: int
    text_tokens: int
    bytes: int
    checksum: str
    images: int


def _listing(folder: storage.Location) -> dict[str, int] | None:
    """Name -> size of the files in a category folder (one LIST on a store), or None when there is no such folder."""
    if not storage.is_remote(folder):
        folder = Path(folder)
        return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()} if folder.is_dir() else None
    fs, path = storage.filesystem(folder)
    fs.invalidate_cache()
    try:
        listed = fs.ls(path, detail=True)
    except FileNotFoundError:
        return None
    return {storage.name(e["name"]): int(e["size"]) for e in listed if e["type"] == "file"} or None


def category_shards(corpora: list[storage.Location], category: str) -> list[InputShard]:
    """The shards of `category` in every corpus that has it, checked against `index.json` without reading them."""
    shards: list[InputShard] = []
    problems: list[str] = []
    for corpus in corpora:
        folder = storage.join(corpus, category)
        files = _listing(folder)
        if files is None:
            continue
        try:
            index = read_index(folder)
        except FileNotFoundError as e:
            raise MixError(f"{e}; run the pipeline again (it rewrites the index) or remove the folder") from None
        for entry in index.get("shards", []):
            try:
                path = shard_under(folder, entry["shard"])
            except ValueError as e:
                problems.append(f"{storage.join(folder, 'index.json')}: {e}")
                continue
            side = storage.name(sidecar_path(entry["shard"]))
            if entry["shard"] not in files:
                problems.append(f"{path}: listed in index.json but missing")
            elif side not in files:
                problems.append(f"{path}: its sidecar {side} is missing")
            elif files[entry["shard"]] != entry["bytes"]:
                problems.append(f"{path}: {files[entry['shard']]} bytes on disk, index.json says {entry['bytes']}")
            else:
                shards.append(InputShard(str(path), entry["samples"], entry["text_tokens"], entry["bytes"],
                                          ShardInfo.from_json(entry).checksum, entry.get("images", 0)))
    if problems:
        raise MixError(f"category {category}: {len(problems)} bad shard(s):\n  " + "\n  ".join(problems))
    return shards


def check_corpora(corpora: list[storage.Location]) -> None:
    if not corpora:
        raise MixError("no corpus folder given")
    for corpus in corpora:
        if storage.is_remote(corpus):
            storage.check_store(corpus, what="corpus")
            folders = {storage.name(f) for f in storage.folders(corpus)}
        elif not corpus.is_dir():
            raise MixError(f"{corpus}: no such corpus folder")
        else:
            folders = {p.name for p in corpus.iterdir() if p.is_dir()}
        present = [c for c in CATEGORIES if c in folders]
        if not present:
            raise MixError(f"{corpus}: no category folder ({', '.join(CATEGORIES)}); is this a corpus folder?")
        unindexed = [c for c in present if not storage.exists(storage.join(corpus, c, "index.json"))]
        if unindexed:
            raise MixError(
                f"{corpus}: category folder(s) {', '.join(unindexed)} have no index.json (a pipeline never finished "
                "there); run it again, which rewrites the index, or remove the folder"
            )


def preflight(corpora: list[storage.Location], cfg: MixtureConfig) -> dict[str, list[InputShard]]:
    """Each category's input shards (file order), after the checks that need no tar to be read."""
    check_corpora(corpora)
    return {name: category_shards(corpora, name) for name in cfg.categories}


def inputs_hash(inputs: dict[str, list[InputShard]]) -> str:
    """What went in, independent of where it lies: category, shard name and checksum of every input shard."""
    h = hashlib.sha256()
    for category, shards in inputs.items():
        for s in shards:
            h.update(f"{category}/{storage.name(s.path)}:{s.checksum}\n".encode())
    return h.hexdigest()
