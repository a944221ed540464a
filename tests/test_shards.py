import io
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from tests.helpers import doc_sample
from vlcorpus.sample import Sample
from vlcorpus.shards import (
    DEFAULT_MAX_BYTES,
    ChecksumError,
    ShardWriter,
    clean_partial,
    read_index,
    read_samples,
    read_shard,
    read_sidecar,
    shard_paths,
    verify_shard,
    write_index,
)


def write_samples(folder: Path, n: int, **kw) -> list:
    with ShardWriter(folder, "arxiv-run1-00000", **kw) as w:
        for i in range(n):
            w.write(doc_sample(doc=f"d{i // 3}", part=i % 3, text=f"text {i} " * 20))
    return w.finished


def test_rolls_by_samples_and_bytes_with_sidecars(tmp_path):
    infos = write_samples(tmp_path, 10, max_samples=4)
    assert [i.samples for i in infos] == [4, 4, 2]
    assert [p.name for p in shard_paths(tmp_path)] == [i.shard for i in infos]
    side = read_sidecar(tmp_path / infos[0].shard)
    assert side.docs == ["d0", "d1"] and side.images == 4 and side.text_tokens > 0
    assert side.bytes == (tmp_path / infos[0].shard).stat().st_size
    by_bytes = write_samples(tmp_path / "b", 10, max_bytes=1500)
    assert len(by_bytes) > 2 and sum(i.samples for i in by_bytes) == 10


def test_same_samples_give_byte_identical_shards(tmp_path):
    a = write_samples(tmp_path / "a", 5)
    b = write_samples(tmp_path / "b", 5)
    assert a[0].checksum == b[0].checksum and a[0].checksum.startswith("xxh3_128:")


def test_plain_webdataset_reads_our_tars(tmp_path):
    write_samples(tmp_path, 6)
    urls = [str(p) for p in shard_paths(tmp_path)]
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(rows) == 6
    first = rows[0]
    assert {k for k in first if not k.startswith("__")} == {"sample.mp"}
    record = first["sample.mp"]
    assert record["category"] == "doc_ocr" and record["segments"][0]["image"] == "0.jpg"
    assert Image.open(io.BytesIO(record["segments"][0]["bytes"])).size == (32, 24)
    assert [r["__key__"] for r in rows] == [s.key for s in read_shard(urls[0])]


def test_reader_yields_samples_and_verifies_checksums(tmp_path):
    infos = write_samples(tmp_path, 3)
    shard = tmp_path / infos[0].shard
    samples = list(read_shard(shard, verify=True))
    assert [s.part for s in samples] == [0, 1, 2] and isinstance(samples[0], Sample)
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum"):
        list(read_shard(shard, verify=True))
    shard.unlink()
    with pytest.raises(ChecksumError, match="missing"):
        verify_shard(shard)


def test_index_lists_shards_and_totals(tmp_path):
    write_samples(tmp_path, 7, max_samples=3)
    write_index(tmp_path)
    index = read_index(tmp_path)
    assert index["samples"] == 7 and len(index["shards"]) == 3
    assert json.loads((tmp_path / "index.json").read_text())["images"] == 7


def test_writer_refuses_dotted_prefix(tmp_path):
    with pytest.raises(ValueError, match="prefix"):
        ShardWriter(tmp_path, "a.b")


def _write_forever(folder: str) -> None:
    with ShardWriter(folder, "arxiv-crash-00000", max_samples=5) as w:
        i = 0
        while True:
            w.write(doc_sample(doc=f"d{i}", text="x" * 5000))
            i += 1


def test_killed_writer_leaves_no_partial_tar_nor_dangling_sidecar(tmp_path):
    proc = multiprocessing.get_context("spawn").Process(target=_write_forever, args=(str(tmp_path),))
    proc.start()
    deadline = time.time() + 60
    while len(list(tmp_path.glob("*.tar"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    for tar in tmp_path.glob("*.tar"):  # every visible shard is complete and verified (or has no sidecar yet)
        if tar.with_suffix(".json").exists():
            assert len(list(read_shard(tar, verify=True))) == 5
    for side in tmp_path.glob("*.json"):
        assert side.with_suffix(".tar").exists()
    leftovers = clean_partial(tmp_path)
    assert all(p.name.startswith(".") for p in leftovers)
    assert not list(tmp_path.glob(".*.tmp"))


def test_shards_are_byte_identical_to_webdataset_tarwriter(tmp_path):
    import io

    # members of every length modulo 512 (a 512-multiple included), a long key, and shard ends at every record offset
    samples = [doc_sample(doc=f"d{i}" + "x" * (i % 3) * 60, part=i % 2, text="w" * (37 * i + (i % 5) * 512)) for i in range(40)]
    with ShardWriter(tmp_path, "arxiv-run1-00000") as w:
        for s in samples:
            w.write(s)
    buf = io.BytesIO()
    plain = wds.TarWriter(buf, encoder=False, mtime=0)
    for s in samples:
        plain.write(s.to_wds())
    plain.close()
    assert shard_paths(tmp_path)[0].read_bytes() == buf.getvalue()
    for n in range(1, 9):  # the end padding to whole 10 KB records, for archives ending at different offsets
        with ShardWriter(tmp_path / f"n{n}", "arxiv-run1-00000") as w:
            for s in samples[:n]:
                w.write(s)
        buf = io.BytesIO()
        with wds.TarWriter(buf, encoder=False, mtime=0) as plain:
            for s in samples[:n]:
                plain.write(s.to_wds())
        assert shard_paths(tmp_path / f"n{n}")[0].read_bytes() == buf.getvalue(), n


def test_member_headers_are_tarfiles_own():
    """The writer builds ustar blocks itself; they must be the bytes tarfile writes, and names or sizes a ustar block
    cannot hold (long, non-ASCII, 8 GiB) must get tarfile's PAX headers."""
    import tarfile

    from vlcorpus.shards import member_header

    for name in ["a.json", "notebook-0123456789abcdef-00001.0.png", "x" * 100, "x" * 101, "é.json", "k." + "y" * 98]:
        for size in [0, 1, 511, 512, 10**6, 8**11 - 1, 8**11]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "bigdata", "bigdata"
            assert member_header(name, size) == info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def test_sidecars_from_before_the_checksum_change_still_verify(tmp_path):
    """Readers accept both checksums during the change: a sidecar with the old `sha256` field verifies and is indexed."""
    import hashlib

    infos = write_samples(tmp_path, 3)
    shard = tmp_path / infos[0].shard
    old = json.loads(shard.with_suffix(".json").read_text())
    del old["checksum"]
    old["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    shard.with_suffix(".json").write_text(json.dumps(old))
    assert verify_shard(shard).checksum == f"sha256:{old['sha256']}"
    write_index(tmp_path)
    assert read_index(tmp_path)["shards"][0]["checksum"] == f"sha256:{old['sha256']}"
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        verify_shard(shard)


def _write_then_die(folder: str, conn) -> None:
    w = ShardWriter(folder, "arxiv-run1-00000", max_samples=4)
    for i in range(6):  # one finished shard of 4, two samples in the open one
        w.write(doc_sample(doc=f"d{i}", text=f"kept {i} " * 40))
    conn.send(w.checkpoint())
    for i in range(6, 11):  # finishes the open shard and starts a third: all of it after the checkpoint
        w.write(doc_sample(doc=f"d{i}", text=f"lost {i} " * 40))
    w._file.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def test_writer_resumes_from_a_checkpoint_after_its_process_was_killed(tmp_path):
    """What a bounded child does when its predecessor died mid-document: cut back to the last checkpoint."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_write_then_die, args=(str(tmp_path), theirs))
    proc.start()
    state = mine.recv()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert len(list(tmp_path.glob("*.tar"))) == 2  # the shard open at the checkpoint was finished after it
    w = ShardWriter.resume(tmp_path, "arxiv-run1-00000", DEFAULT_MAX_BYTES, 4, state)
    for i in range(11, 14):
        w.write(doc_sample(doc=f"d{i}", text=f"after {i} " * 40))
    w.close()
    shards = shard_paths(tmp_path)
    assert [verify_shard(p).samples for p in shards] == [4, 4, 1]
    assert [s.doc for s in read_samples(shards)] == [f"d{i}" for i in (0, 1, 2, 3, 4, 5, 11, 12, 13)]
    assert not clean_partial(tmp_path)
