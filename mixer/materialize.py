"""Writing one output stream of one category (one Ray task, or in-process with --local).

A stream is told exactly which samples to write, in which order, in which copy pass (`mixer.plan`): it reads each one
from its input shard by byte range, checks it is the sample the plan named, tags it with `meta.mix` and writes it
through the core `ShardWriter`. Each copy pass starts a new shard, so a key never appears twice in one tar. Its
shards are `<category>-<stream:04d>-<NNNNNN>.tar`, so streams never write the same file, and a retried task first
removes what an earlier attempt of the same stream left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mixer.scan import read_range
from vlcorpus import storage
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, sidecar_path

OPEN_FILES = 64  # input shards a writer keeps open at once


@dataclass
class Pass:
    """One copy pass of one stream, in write order: where each sample lies and which key it must have."""

    shard_idx: np.ndarray  # index into StreamJob.inputs
    starts: np.ndarray
    ends: np.ndarray
    keys: list[str]


@dataclass
class StreamJob:
    category: str
    stream: int
    streams: int
    folder: str  # the category's output folder
    tag: dict[str, Any]  # meta.mix without `repeat`
    inputs: list[str]  # input shard paths
    passes: list[Pass]  # copy 0, 1, ... (possibly empty for this stream)
    max_shard_bytes: int
    max_shard_samples: int

    @property
    def prefix(self) -> str:
        return f"{self.category}-{self.stream:04d}"


class _Inputs:
    """Input shards opened on demand, at most OPEN_FILES at a time."""

    def __init__(self, paths: list[str]):
        self.paths, self.open = paths, {}

    def __getitem__(self, i: int) -> BinaryIO:
        f = self.open.get(i)
        if f is None:
            if len(self.open) >= OPEN_FILES:
                self.open.pop(next(iter(self.open))).close()
            f = self.open[i] = storage.open_ranges(self.paths[i])
        return f

    def close(self) -> None:
        for f in self.open.values():
            f.close()


def write_stream(job: StreamJob) -> dict[str, Any]:
    """Write the stream's samples; return its counts and the shards it wrote (ShardEntry fields). A folder on a store:
    the shards are written in a scratch folder, then uploaded (each shard before its sidecar)."""
    if not storage.is_remote(job.folder):
        return _write_stream(job, Path(job.folder))
    with storage.scratch(job.prefix) as out:
        result = _write_stream(job, out)
        tars = sorted(out.glob(f"{job.prefix}-*.tar"))
        for files in (tars, [sidecar_path(t) for t in tars]):
            storage.put_files(files, [f"{job.folder}/{f.name}" for f in files])
    return result


def _write_stream(job: StreamJob, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(f"{job.prefix}-*"), *out.glob(f".{job.prefix}-*")]:
        stale.unlink()
    inputs = _Inputs(job.inputs)
    tokens = images = 0
    try:
        with ShardWriter(out, job.prefix, job.max_shard_bytes, job.max_shard_samples) as writer:
            for copy, p in enumerate(job.passes):
                writer.close()  # every copy pass starts a new shard
                for i, key in enumerate(p.keys):
                    sample = Sample.from_wds(read_range(inputs[int(p.shard_idx[i])], int(p.starts[i]), int(p.ends[i])))
                    if sample.key != key:
                        raise ValueError(f"{job.inputs[p.shard_idx[i]]}: expected {key} at byte {p.starts[i]}, found "
                                         f"{sample.key} (the shard changed after it was verified)")
                    sample.meta["mix"] = {**job.tag, "repeat": copy}
                    writer.write(sample)
                    tokens += sample.text_tokens
                    images += len(sample.images)
            infos = writer.close()
    finally:
        inputs.close()
    return {
        "category": job.category,
        "stream": job.stream,
        "samples": sum(i.samples for i in infos),
        "text_tokens": tokens,
        "images": images,
        "bytes": sum(i.bytes for i in infos),
        "shards": [{k: v for k, v in asdict(i).items() if k != "docs"} | {"shard": f"{job.category}/{i.shard}",
                                                                         "stream": job.stream} for i in infos],
    }
