"""Importers for caption, interleaved, table_chart, scene_ocr and text records: real files in the formats the
datasets are published in, bad records among them, run as Ray jobs and read back with the webdataset library."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from renderers.images import BadImage, ImageLimits, check_image, load_ref
from renderers.records import scene_ocr
from renderers.records.discovery import jsonl_pieces, record_inputs
from renderers.records.json_stream import TOO_LARGE, JsonStream
from renderers.records.reader import read_records
from tests.helpers import sample_view
from vlcorpus.cli import main as cli
from vlcorpus.ledger import Ledger
from vlcorpus.shards import shard_paths

ROOT = Path(__file__).resolve().parents[1]


def png(color=(200, 30, 30), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(color=(30, 30, 200), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def read_back(out: Path, category: str) -> list[dict]:
    """Every sample of a category, read with the webdataset library itself."""
    urls = [str(p) for p in shard_paths(out / category)]
    if not urls:
        return []
    return [sample_view(r) for r in wds.WebDataset(urls, shardshuffle=False).decode()]


def ledger_counts(out: Path, source: str) -> Counter:
    total: Counter = Counter()
    for e in Ledger(out, source).latest().values():
        total.update(e.counts)
        total[f"status_{e.status}"] += 1
    return total


def test_check_image_refuses_what_does_not_decode():
    assert check_image(png(), ImageLimits()).ext == "png"
    assert check_image(jpeg(), ImageLimits()).ext == "jpg"
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "green").save(buf, "WEBP")
    image = check_image(buf.getvalue(), ImageLimits())
    assert (image.ext, image.width, image.height) == ("png", 20, 20) and image.data.startswith(b"\x89PNG")
    with pytest.raises(BadImage) as e:
        check_image(jpeg(size=(400, 300))[:300], ImageLimits())
    assert e.value.reason == "image_undecodable"
    with pytest.raises(BadImage) as e:
        check_image(png(size=(300, 300)), ImageLimits(max_pixels=10_000))
    assert e.value.reason == "image_too_many_pixels"


def test_load_ref_stays_inside_the_image_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    with pytest.raises(BadImage) as e:
        load_ref("../secret.png", tmp_path / "root")
    assert e.value.reason == "image_outside_root"
    with pytest.raises(BadImage) as e:
        load_ref("https://example.com/a.jpg", tmp_path)
    assert e.value.reason == "image_remote"


def test_jsonl_pieces_cover_every_line_once(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("".join(f'{{"i": {i}}}\n' for i in range(10)) + '{"i": 10}')  # no final newline
    pieces = jsonl_pieces(f, 4)
    assert [p[2] for p in pieces] == [0, 4, 8]
    docs = record_inputs(f, tmp_path / "staging", (".jsonl",), 4)
    seen = [pos for d in docs for pos, _ in read_records(d, Counter())]
    assert seen == list(range(11))


def test_json_files_become_jsonl_pieces_and_broken_ones_fail_in_the_ledger(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.json").write_text(json.dumps({"info": {"v": 1}, "data": [{"i": i} for i in range(5)]}))
    (tmp_path / "in/b.json").write_text('[{"i": 1}, {"i": 2}, ')
    docs = record_inputs(tmp_path / "in", tmp_path / "staging", (".json",), 2)
    assert [d.doc for d in docs] == ["a.json#R0", "a.json#R2", "a.json#R4", "b.json#R0", "b.json"]
    assert [r["i"] for d in docs[:3] for _, r in read_records(d, Counter())] == list(range(5))
    assert [r["i"] for _, r in read_records(docs[3], Counter())] == [1, 2]  # what came before the break is kept
    with pytest.raises(ValueError, match="not a usable records file: b.json: JSON breaks at character 21.*2 records before"):
        list(read_records(docs[4], Counter()))
    folder = Path(docs[0].path).parent
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert [d.doc for d in record_inputs(tmp_path / "in", tmp_path / "staging", (".json",), 2)] == [d.doc for d in docs]
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # an unchanged file is not staged again


def test_gzipped_and_zipped_record_files_are_read_in_place_and_bombs_refused(tmp_path):
    import gzip
    import zipfile

    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(3))))
    (data / "b.json.gz").write_bytes(gzip.compress(json.dumps({"data": [{"i": 3}, {"i": 4}]}).encode()))
    (data / "bomb.jsonl.gz").write_bytes(gzip.compress(bytes(200 * 1024**2)))
    with zipfile.ZipFile(data / "c.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner/c.jsonl", json.dumps({"i": 5}) + "\n")
        z.writestr("readme.txt", "not records")
        z.writestr("zeros.jsonl", bytes(20 * 1024**2))
    docs = {d.doc: d for d in record_inputs(data, tmp_path / "staging", (".jsonl", ".json"), 2000)}
    assert sorted(docs) == ["a.jsonl.gz#L0", "b.json.gz#R0", "bomb.jsonl.gz", "c.zip:inner/c.jsonl#L0", "c.zip:zeros.jsonl"]
    got = sorted(r["i"] for k, d in docs.items() if "#" in k for _, r in read_records(d, Counter()))
    assert got == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="decompresses to more than 100x its size"):
        list(read_records(docs["bomb.jsonl.gz"], Counter()))
    assert "zip bomb" in docs["c.zip:zeros.jsonl"].related["refused"]


def test_json_stream_reads_values_one_at_a_time_and_skips_what_is_too_large():
    big = "x" * 5000
    text = json.dumps({"skip": {"deep": [[1, {"s": 'a"b\\'}], "\u00e9" * 3]}, "records": [{"i": 1}, {"t": big}, 2.5, {"i": 3}]})
    s = JsonStream(io.BytesIO(text.encode()), max_chars=1000, block=64)
    got = []
    for key in s.members():
        if key == "records":
            got = list(s.array())
        else:
            s.skip()
    assert got == [{"i": 1}, TOO_LARGE, 2.5, {"i": 3}] and s.at_end()


def test_caption_folder_jsonl_with_bad_records(tmp_path, ray_local):
    data = tmp_path / "in"
    (data / "img").mkdir(parents=True)
    (data / "img/a.jpg").write_bytes(jpeg())
    (data / "img/b.png").write_bytes(png())
    (data / "img/broken.jpg").write_bytes(jpeg(size=(200, 200))[:200])
    lines = [
        json.dumps({"image": "img/a.jpg", "caption": "a blue square"}),
        '{"image": "img/b.png", "caption": ',  # broken JSON line
        json.dumps({"image": "img/b.png", "caption": "a red rectangle"}),
        json.dumps({"image": "img/missing.jpg", "caption": "gone"}),
        json.dumps({"image": "img/broken.jpg", "caption": "truncated file"}),
        json.dumps({"image": "img/a.jpg", "caption": ""}),
    ]
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (data / "more.csv").write_text("file_name,text\nimg/a.jpg,a blue square from csv\n")
    out = tmp_path / "corpus"
    assert cli(["import", "caption", str(data), "--out", str(out), "--lines-per-doc", "2"]) == 0
    rows = read_back(out, "caption")
    assert sorted(r["json"]["segments"][1]["text"] for r in rows) == ["a blue square", "a blue square from csv", "a red rectangle"]
    assert all(r["json"]["segments"][0] == {"image": "0.jpg"} or r["json"]["segments"][0] == {"image": "0.png"} for r in rows)
    c = ledger_counts(out, "caption")
    assert (c["bad_json_line"], c["image_missing"], c["image_undecodable"], c["no_caption"]) == (1, 1, 1, 1)
    assert c["status_failed"] == 0
    assert cli(["import", "caption", str(data), "--out", str(out)]) == 0  # a re-run renders nothing again
    assert len(read_back(out, "caption")) == 3


def write_caption_parquet(path: Path, groups: int, rows: int, image_bytes: int) -> None:
    """Row groups of HF-style {"bytes", "path"} image structs with incompressible payloads (PNG text chunks)."""
    import os

    writer = None
    for g in range(groups):
        images, texts = [], []
        for r in range(rows):
            img = Image.new("RGB", (16, 16), (g * 10 % 255, r * 20 % 255, 90))
            buf = io.BytesIO()
            from PIL import PngImagePlugin

            info = PngImagePlugin.PngInfo()
            info.add_text("pad", os.urandom(image_bytes // 2).hex())
            img.save(buf, "PNG", pnginfo=info)
            images.append({"bytes": buf.getvalue(), "path": f"{g}-{r}.png"})
            texts.append(f"square {g}-{r}")
        table = pa.table({"image": images, "caption": texts})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table)
    writer.close()


def test_caption_parquet_is_one_input_per_row_group(tmp_path, ray_local):
    data = tmp_path / "pq"
    data.mkdir()
    write_caption_parquet(data / "train.parquet", groups=3, rows=5, image_bytes=2000)
    docs = record_inputs(data, tmp_path / "staging", (".parquet",))
    assert [d.doc for d in docs] == ["train.parquet#rg0", "train.parquet#rg1", "train.parquet#rg2"]
    out = tmp_path / "corpus"
    assert cli(["import", "caption", str(data), "--out", str(out)]) == 0
    rows = read_back(out, "caption")
    assert len(rows) == 15
    assert {r["json"]["meta"]["record"] for r in rows} == set(range(15))


def test_parquet_reading_is_streamed(tmp_path):
    """A Parquet file of ~24 MB: rendering all its row groups never holds more than a few row groups in Arrow
    memory (peak of pyarrow's allocator, measured in a fresh process), so a 5 GB file stays bounded the same way."""
    path = tmp_path / "big.parquet"
    write_caption_parquet(path, groups=24, rows=40, image_bytes=25_000)
    size = path.stat().st_size
    code = (
        "import pyarrow as pa, sys\nfrom collections import Counter\n"
        "from renderers.records.discovery import record_inputs\nfrom renderers.records import caption\n"
        f"docs = record_inputs(__import__('pathlib').Path({str(path)!r}), None)\n"
        "n = sum(1 for d in docs for _ in caption.render(d, caption.CaptionConfig(), Counter()))\n"
        "print(n, len(docs), pa.default_memory_pool().max_memory())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    n, pieces, peak = map(int, res.stdout.split())
    assert (n, pieces) == (960, 24)
    assert peak < size / 4, f"Arrow peak {peak} bytes for a {size}-byte file: not streamed"


def test_caption_from_webdataset_tars(tmp_path, ray_local):
    data = tmp_path / "wds"
    data.mkdir()
    with wds.TarWriter(str(data / "shard-000.tar")) as w:
        w.write({"__key__": "s0", "jpg": jpeg(), "txt": "a photo from a tar"})
        w.write({"__key__": "s1", "png": png(), "json": json.dumps({"caption": "caption in json"}).encode()})
        w.write({"__key__": "s2", "jpg": b"not a jpeg at all", "txt": "bad image"})
    out = tmp_path / "corpus"
    assert cli(["import", "caption", str(data), "--out", str(out)]) == 0
    texts = sorted(r["json"]["segments"][1]["text"] for r in read_back(out, "caption"))
    assert texts == ["a photo from a tar", "caption in json"]
    assert ledger_counts(out, "caption")["image_undecodable"] == 1


def test_interleaved_mmc4_documents(tmp_path, ray_local):
    data = tmp_path / "mmc4"
    data.mkdir()
    (data / "a.jpg").write_bytes(jpeg())
    import base64

    docs = [
        {"url": "https://example.org/1", "text_list": ["First sentence.", "Second sentence.", "Third."],
         "image_info": [{"image_name": "a.jpg", "matched_text_index": 1},
                        {"image_name": "missing.jpg", "matched_text_index": 0},
                        {"base64": base64.b64encode(png()).decode(), "matched_text_index": 2}]},
        {"url": "https://example.org/2", "text_list": ["Only text."], "image_info": [{"image_name": "nope.jpg", "matched_text_index": 0}]},
    ]
    (data / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "corpus"
    assert cli(["import", "interleaved", str(data), "--out", str(out)]) == 0
    (row,) = read_back(out, "interleaved")
    assert row["json"]["segments"] == [{"text": "First sentence."}, {"image": "0.jpg"}, {"text": "Second sentence."},
                                       {"image": "1.png"}, {"text": "Third."}]
    c = ledger_counts(out, "interleaved")  # in documents: one kept without its missing image, one dropped
    assert (c["records"], c["imported"], c["images_skipped"], c["image_missing"]) == (2, 1, 1, 1)


def test_table_chart_qa_groups_questions_per_image(tmp_path, ray_local):
    data = tmp_path / "chartqa"
    (data / "png").mkdir(parents=True)
    (data / "png/c1.png").write_bytes(png())
    records = [{"imgname": "png/c1.png", "query": "What is the max?", "label": "42"},
               {"imgname": "png/c1.png", "query": "Which bar is red?", "label": "the first"},
               {"imgname": "png/none.png", "query": "?", "label": "1"}]
    (data / "test_human.json").write_text(json.dumps(records))
    out = tmp_path / "corpus"
    assert cli(["import", "table_chart", str(data), "--out", str(out)]) == 0
    (row,) = read_back(out, "table_chart")
    assert row["json"]["segments"][1]["text"] == "Question: What is the max?\nAnswer: 42\n\nQuestion: Which bar is red?\nAnswer: the first"
    assert ledger_counts(out, "table_chart")["image_missing"] == 1


def test_reading_order_groups_lines_then_sorts_left_to_right():
    words = [{"text": "WORLD", "bbox": [60, 12, 40, 20]}, {"text": "HELLO", "bbox": [5, 10, 40, 20]},
             {"text": "second", "bbox": [5, 50, 50, 18]}, {"text": ".", "bbox": [80, 50, 10, 18]},
             {"text": "line", "bbox": [70, 52, 30, 18]}]
    assert scene_ocr.reading_order(words) == [["HELLO", "WORLD"], ["second", "line"]]


def test_scene_ocr_from_textocr_json(tmp_path, ray_local):
    data = tmp_path / "textocr"
    (data / "train").mkdir(parents=True)
    (data / "train/i1.jpg").write_bytes(jpeg(size=(120, 80)))
    (data / "train/i2.jpg").write_bytes(jpeg(size=(120, 80)))
    textocr = {
        "imgs": {"i1": {"file_name": "train/i1.jpg"}, "i2": {"file_name": "train/i2.jpg"}, "i3": {"file_name": "train/i3.jpg"}},
        "anns": {"a1": {"image_id": "i1", "bbox": [50, 5, 30, 10], "utf8_string": "SALE"},
                 "a2": {"image_id": "i1", "bbox": [5, 6, 40, 10], "utf8_string": "BIG"},
                 "a3": {"image_id": "i1", "bbox": [5, 40, 40, 10], "utf8_string": "today"},
                 "a4": {"image_id": "i2", "bbox": [5, 40, 40, 10], "utf8_string": "."},
                 "a5": {"image_id": "i3", "bbox": [5, 40, 40, 10], "utf8_string": "lost"}},
        "imgToAnns": {"i1": ["a1", "a2", "a3"], "i2": ["a4"], "i3": ["a5"]},
    }
    (data / "TextOCR_train.json").write_text(json.dumps(textocr))
    out = tmp_path / "corpus"
    assert cli(["import", "scene_ocr", str(data), "--out", str(out), "--lines-per-doc", "2"]) == 0
    (row,) = read_back(out, "scene_ocr")
    assert row["json"]["segments"][1] == {"text": "BIG SALE\ntoday"}
    c = ledger_counts(out, "scene_ocr")
    assert (c["no_legible_words"], c["image_missing"], c["status_ok"] + c["status_filtered"]) == (1, 1, 2)


def test_text_from_jsonl_and_parquet(tmp_path, ray_local):
    data = tmp_path / "text"
    data.mkdir()
    para = "A paragraph of plain text that is long enough to keep. " * 5
    (data / "a.jsonl").write_text(json.dumps({"text": para}) + "\n{broken\n" + json.dumps({"other": 1}) + "\n")
    pq.write_table(pa.table({"text": [para, "short"]}), data / "b.parquet")
    out = tmp_path / "corpus"
    assert cli(["import", "text", str(data), "--out", str(out)]) == 0
    rows = read_back(out, "text")
    assert len(rows) == 2 and all(r["json"]["meta"]["tokens"] > 50 for r in rows)
    c = ledger_counts(out, "text")
    assert (c["bad_json_line"], c["no_text_field"], c["text_too_short"]) == (1, 1, 1)
