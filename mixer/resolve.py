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


def category_shards(corpora: list[Path], category: str) -> list[InputShard]:
    """The shards of `category` in every corpus that has it, checked against `index.json` without reading them."""
    shards: list[InputShard] = []
    problems: list[str] = []
    for corpus in corpora:
        folder = corpus / category
        if not folder.is_dir():
            continue
        try:
            index = read_index(folder)
        except FileNotFoundError as e:
            raise MixError(f"{e}; run the pipeline again (it rewrites the index) or remove the folder") from None
        for entry in index.get("shards", []):
            try:
                path = shard_under(folder, entry["shard"])
            except ValueError as e:
                problems.append(f"{folder / 'index.json'}: {e}")
                continue
            if not path.exists():
                problems.append(f"{path}: listed in index.json but missing")
            elif not sidecar_path(path).exists():
                problems.append(f"{path}: its sidecar {sidecar_path(path).name} is missing")
            elif path.stat().st_size != entry["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes on disk, index.json says {entry['bytes']}")
            else:
                shards.append(InputShard(str(path), entry["samples"], entry["text_tokens"], entry["bytes"],
                                          ShardInfo.from_json(entry).checksum, entry.get("images", 0)))
    if problems:
        raise MixError(f"category {category}: {len(problems)} bad shard(s):\n  " + "\n  ".join(problems))
    return shards


def check_corpora(corpora: list[Path]) -> None:
    if not corpora:
        raise MixError("no corpus folder given")
    for corpus in corpora:
        if not corpus.is_dir():
            raise MixError(f"{corpus}: no such corpus folder")
        present = [c for c in CATEGORIES if (corpus / c).is_dir()]
        if not present:
            raise MixError(f"{corpus}: no category folder ({', '.join(CATEGORIES)}); is this a corpus folder?")
        unindexed = [c for c in present if not (corpus / c / "index.json").exists()]
        if unindexed:
            raise MixError(
                f"{corpus}: category folder(s) {', '.join(unindexed)} have no index.json (a pipeline never finished "
                "there); run it again, which rewrites the index, or remove the folder"
            )


def preflight(corpora: list[Path], cfg: MixtureConfig) -> dict[str, list[InputShard]]:
    """Each category's input shards (file order), after the checks that need no tar to be read."""
    check_corpora(corpora)
    return {name: category_shards(corpora, name) for name in cfg.categories}


def inputs_hash(inputs: dict[str, list[InputShard]]) -> str:
    """What went in, independent of where it lies: category, shard name and checksum of every input shard."""
    h = hashlib.sha256()
    for category, shards in inputs.items():
        for s in shards:
            h.update(f"{category}/{Path(s.path).name}:{s.checksum}\n".encode())
    return h.hexdigest()
