"""Merging a run's small shards (one per browser batch) into byte-sized shards: every sample once, the ledger names the
merged shards, and a crash on either side of the ledger's append leaves one committed copy (no Ray: the driver's own
functions on real shards)."""

from __future__ import annotations

import io
import random

import pytest
import webdataset as wds
from PIL import Image

from tests.helpers import sample_view
from vlcorpus.driver import Options, merge_small_shards, reconcile
from vlcorpus.ledger import Entry, Ledger
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, read_sidecar

RUN = "20260101000000abcd"


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("L", (40, 40), bytes(rng.randrange(256) for _ in range(1600)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _job(out, docs: int = 6, pages: int = 3) -> None:
    """What a browser job leaves: one batch (one shard) per document, each committed by an `ok` ledger line."""
    entries = []
    for d in range(docs):
        with ShardWriter(out / "doc_ocr", f"epub-{RUN}-{d:05d}") as w:
            names = {w.write(Sample(category="doc_ocr", source="epub", doc=f"book{d}", part=p, origin=f"book{d}.epub",
                                    segments=[{"image": "0.png"}, {"text": f"book {d} page {p}"}],
                                    images={"0.png": _png(d * 10 + p)}))
                     for p in range(pages)}
        entries.append(Entry(doc=f"book{d}", origin=f"book{d}.epub", status="ok", samples=pages, run=RUN,
                             shards=[f"doc_ocr/{n}" for n in sorted(names)]))
    with Ledger(out, "epub") as ledger:
        ledger.append(entries)


def _texts(out) -> list[str]:
    tars = sorted(str(p) for p in (out / "doc_ocr").glob("*.tar"))
    return sorted(sample_view(r)["json"]["segments"][1]["text"] for r in wds.WebDataset(tars, shardshuffle=False))


EXPECTED = sorted(f"book {d} page {p}" for d in range(6) for p in range(3))


def test_small_shards_merge_by_bytes_and_the_ledger_follows(tmp_path):
    _job(tmp_path)
    one = read_sidecar(next((tmp_path / "doc_ocr").glob("*.tar"))).bytes
    opts = Options(out=tmp_path, run_id=RUN, max_shard_bytes=3 * one, max_shard_samples=8)  # 8 pages a shard
    with Ledger(tmp_path, "epub") as ledger:
        assert merge_small_shards(opts, "epub", ledger) == 6
        latest = reconcile(tmp_path, "epub", ledger)  # what the next run sees: nothing to remove, nothing to redo
    tars = sorted((tmp_path / "doc_ocr").glob("*.tar"))
    assert [t.name for t in tars] == [f"epub-{RUN}-merged-{i:06d}.tar" for i in range(3)]
    assert [read_sidecar(t).samples for t in tars] == [8, 8, 2]
    assert [read_sidecar(t).docs for t in tars] == [[f"book{d}" for d in ds] for ds in ([0, 1, 2], [2, 3, 4, 5], [5])]
    assert _texts(tmp_path) == EXPECTED
    assert all(e.status == "ok" and e.shards and all((tmp_path / s).exists() for s in e.shards) for e in latest.values())
    assert len(latest) == 6


@pytest.mark.parametrize("crash", ["before_append", "after_append"])
def test_a_crash_while_merging_leaves_one_committed_copy(tmp_path, monkeypatch, crash):
    _job(tmp_path)
    opts = Options(out=tmp_path, run_id=RUN, max_shard_bytes=3 * read_sidecar(next((tmp_path / "doc_ocr").glob("*.tar"))).bytes)
    if crash == "before_append":
        monkeypatch.setattr(Ledger, "append", lambda self, entries: (_ for _ in ()).throw(OSError("power cut")))
        with Ledger(tmp_path, "epub") as ledger, pytest.raises(OSError):
            merge_small_shards(opts, "epub", ledger)
    else:  # the append went through, the small shards were not yet removed
        monkeypatch.setattr("pathlib.Path.unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(OSError("power cut")))
        with Ledger(tmp_path, "epub") as ledger, pytest.raises(OSError):
            merge_small_shards(opts, "epub", ledger)
    monkeypatch.undo()
    assert len(list((tmp_path / "doc_ocr").glob("*.tar"))) > 6  # both copies on disk
    with Ledger(tmp_path, "epub") as ledger:
        latest = reconcile(tmp_path, "epub", ledger)
    assert _texts(tmp_path) == EXPECTED  # one copy of every sample
    names = {t.name for t in (tmp_path / "doc_ocr").glob("*.tar")}
    assert all("-merged-" in n for n in names) == (crash == "after_append")
    assert {s.split("/")[1] for e in latest.values() for s in e.shards} == names
