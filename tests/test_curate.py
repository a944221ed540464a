"""Curation: language and provenance on every rendered sample, and `vlcorpus curate` over a real corpus (prose rules,
personal data, image duplicates across categories, benchmark 13-grams, held-out near duplicates), read back with
the webdataset library."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from pipelines.curate import SUMMARY
from tests.helpers import sample_view
from vlcorpus.cli import main
from vlcorpus.curate.language import identify
from vlcorpus.curate.pii import redact
from vlcorpus.curate.provenance import provenance, spdx
from vlcorpus.ledger import Ledger
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, read_samples, shard_paths, write_index

DATA = Path(__file__).parent / "data" / "curate"
EN = (DATA / "scarlet_letter_en.txt").read_text().split("\n\n")  # Hawthorne, public domain: six paragraphs
MIT = "MIT License\n\nCopyright (c) 2024 A\n\nPermission is hereby granted, free of charge, to any person obtaining a copy"


def test_pii_is_replaced_by_typed_placeholders_and_lookalikes_stay():
    text = ("Write to hester.prynne@example.org or call +1 415-555-0132 / (617) 555-0199. Card 4111 1111 1111 1111; "
            "host 93.184.216.34 and 2606:4700::6810:85e5. AWS AKIAIOSFODNN7EXAMPLE, token ghp_R2d2C3poX9wQ7zLk4Vb8Nm1Tq6Ys0Uj5Hf3G.\n"
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n")
    keep = ("Version 3.10.4 shipped on 2023-10-15 at 12:30:45 from 127.0.0.1 and 192.168.1.20; "
            "4111 1111 1111 1112 fails Luhn; the values 1000 2000 3000 "
            "and the digest e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 stay, as does a[1::2].")
    out, found = redact(text + keep)
    assert dict(found) == {"email": 1, "phone": 2, "card_number": 1, "ip_address": 2, "aws_key": 1, "secret_token": 1,
                           "private_key": 1}
    assert out.endswith(keep) and "<EMAIL>" in out and "<PRIVATE_KEY>" in out and "AKIA" not in out


def test_language_is_identified_from_real_text_and_garbage_is_undetermined():
    assert identify(" ".join(EN[:2]))[0] == "en"
    assert identify((DATA / "chuci_zh.txt").read_text())[0] == "zh"
    assert identify((DATA / "mushikuizan_ja.txt").read_text())[0] == "ja"
    assert identify("") == ("und", 0.0) and identify("§§ 12 ++ // 3.14") == ("und", 0.0)
    code, score = identify(bytes(range(256)).decode("latin-1") * 20)  # binary garbage: an answer, never a crash
    assert isinstance(code, str) and 0.0 <= score <= 1.0
    mixed, mixed_score = identify(EN[0][:400] + " " + (DATA / "mushikuizan_ja.txt").read_text()[:150])
    assert mixed in ("en", "ja") and mixed_score <= 1.0


def _epub(path: Path, rights: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip")
        z.writestr("META-INF/container.xml", '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                   '<rootfiles><rootfile full-path="OEBPS/c.opf"/></rootfiles></container>')
        z.writestr("OEBPS/c.opf", '<package xmlns="http://www.idpf.org/2007/opf" xmlns:dc="http://purl.org/dc/elements/1.1/">'
                   f"<metadata><dc:rights>{rights}</dc:rights></metadata></package>")


def test_provenance_reads_the_licence_the_source_states(tmp_path):
    root = tmp_path / "in"
    (root / "repo" / "docs").mkdir(parents=True)
    (root / "repo" / "LICENSE").write_text(MIT)
    (root / "repo" / "docs" / "a.txt").write_text("x")
    (root / "ds").mkdir()
    (root / "ds" / "README.md").write_text("---\nlicense: cc-by-sa-4.0\npretty_name: t\n---\n# card\n")
    (root / "ds" / "rows.jsonl").write_text("{}\n")
    _epub(root / "b.epub", "This work is licensed under https://creativecommons.org/licenses/by/4.0/")
    (root / "loose").mkdir()
    (root / "loose" / "LICENSE").symlink_to(root / "repo" / "LICENSE")  # a link is never followed
    (root / "loose" / "c.txt").write_text("y")
    p = provenance("repo/docs/a.txt", str(root / "repo/docs/a.txt"), str(root))
    assert p["license"] == "MIT License" and p["license_spdx"] == "MIT" and p["license_file"] == "repo/LICENSE"
    assert p["path"] == "repo/docs/a.txt" and len(p["sha256"]) == 64
    assert provenance("ds/rows.jsonl", str(root / "ds/rows.jsonl"), str(root))["license_spdx"] == "CC-BY-SA-4.0"
    assert provenance("b.epub", str(root / "b.epub"), str(root))["license_spdx"] == "CC-BY-4.0"
    assert provenance("loose/c.txt", str(root / "loose/c.txt"), str(root))["license"] is None
    assert spdx("http://arxiv.org/licenses/nonexclusive-distrib/1.0/") is None and spdx("Apache-2.0") == "Apache-2.0"


def _photo(seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # blocky picture: survives re-encoding perceptually
    buf = io.BytesIO()
    Image.fromarray(small).resize((128, 128), Image.BILINEAR).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _pair(category: str, doc: str, image: bytes, text: str) -> Sample:
    return Sample(category=category, source="test", doc=doc, part=0, origin=doc, images={"0.jpg": image},
                  segments=[{"image": "0.jpg"}, {"text": text}], meta={"language": "en"})


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_import_annotates_and_curate_judges_the_corpus(tmp_path):
    src, corpus = tmp_path / "src", tmp_path / "corpus"
    (src / "book").mkdir(parents=True)
    (src / "LICENSE").write_text(MIT)
    (src / "book" / "a.txt").write_text("\n\n".join(EN[0:2]))
    (src / "book" / "b.txt").write_text("\n\n".join(EN[2:4]) + "\n\nWrite to hester@example.org; key AKIAIOSFODNN7EXAMPLE.")
    (src / "book" / "c.txt").write_text("\n\n".join(EN[4:6]))
    (src / "spam.txt").write_text("\n".join(["BUY CHEAP WATCHES NOW click here"] * 300))
    (src / "zh.txt").write_text((DATA / "chuci_zh.txt").read_text())
    assert main(["import", "text", str(src), "--out", str(corpus), "--num-cpus", "1"]) == 0
    texts = {s.doc: s for s in read_samples(shard_paths(corpus / "text"))}
    assert {d: s.meta["language"] for d, s in texts.items()} == {
        "book/a.txt": "en", "book/b.txt": "en", "book/c.txt": "en", "spam.txt": "en", "zh.txt": "zh"}
    prov = texts["book/a.txt"].meta["provenance"]
    assert prov["path"] == "book/a.txt" and prov["license_spdx"] == "MIT" and prov["license_file"] == "LICENSE"

    with ShardWriter(corpus / "caption", "t") as w:  # before doc_ocr in the corpus order: its images are kept first
        w.write(_pair("caption", "cap-a", _photo(1), "A red and blue mosaic."))
        w.write(_pair("caption", "cap-a-again", _photo(1, quality=60), "The same mosaic, compressed harder."))
        w.write(_pair("caption", "cap-b", _photo(2), "Another mosaic."))
        w.write(_pair("caption", "cap-torn", _photo(4)[:200], "A JPEG cut short: its header passes, decoding fails."))
    with ShardWriter(corpus / "doc_ocr", "t") as w:
        w.write(_pair("doc_ocr", "page-email", _photo(3), "Contact hester@example.org for the manuscript."))
        w.write(_pair("doc_ocr", "page-copy", _photo(2), "A page that shows the mosaic again."))
    for cat in ("caption", "doc_ocr"):
        write_index(corpus / cat)
    bench = tmp_path / "bench"
    bench.mkdir()
    words = EN[5].split()[10:30]  # 20 words of c.txt inside a benchmark question
    (bench / "qa.jsonl").write_text(json.dumps({"question": "Who wrote: " + " ".join(words) + "?", "answer": "A"}) + "\n")
    held = tmp_path / "held"
    with ShardWriter(held / "text", "h") as w:
        w.write(Sample(category="text", source="test", doc="held-a", part=0, origin="held-a",
                       segments=[{"text": "\n\n".join(EN[0:2]).replace("autobiographical", "personal")}]))
    write_index(held / "text")

    out = tmp_path / "curated"
    assert main(["curate", str(corpus), "--out", str(out), "--benchmarks", str(bench), "--heldout", str(held),
                 "--num-cpus", "1"]) == 0
    kept = {}
    for url in shard_paths(out / "text") + shard_paths(out / "caption") + shard_paths(out / "doc_ocr"):
        for s in wds.WebDataset(str(url), shardshuffle=False):
            kept[sample_view(s)["json"]["doc"]] = sample_view(s)["json"]
    assert set(kept) == {"book/b.txt", "zh.txt", "cap-a", "cap-b"}
    b = kept["book/b.txt"]["segments"][0]["text"]
    assert "<EMAIL>" in b and "<AWS_KEY>" in b and "hester@" not in b
    summary = json.loads((out / SUMMARY).read_text())["categories"]
    assert summary["text"]["in"] == 5 and summary["text"]["out"] == 2
    assert summary["text"]["dropped"]["benchmark"] == 1 and summary["text"]["dropped"]["heldout"] == 1
    assert summary["text"]["dropped"]["quality"] == 1 and summary["text"]["redacted"] == {"email": 1, "aws_key": 1}
    assert summary["caption"]["reasons"] == {"image_near_duplicate": 1, "image_undecodable": 1}
    assert summary["doc_ocr"]["reasons"] == {"pii_in_image_pair": 1, "image_duplicate": 1}
    led = Ledger(out, "curate").latest()
    assert led["spam.txt"].status == "filtered" and next(iter(led["spam.txt"].counts)).startswith("quality_")
    assert led["book/c.txt"].counts == {"benchmark_ngram_overlap": 1}
    assert led["book/a.txt"].counts == {"heldout_near_duplicate": 1}
    assert led["book/b.txt"].counts == {"pii_redacted_email": 1, "pii_redacted_aws_key": 1}
    removed = {s.doc: s.meta["removed_by"] for s in read_samples(shard_paths(out / "_removed"))}
    assert removed["page-copy"] == "image_duplicate" and removed["cap-a-again"] == "image_near_duplicate"
    assert (out / "_ledger" / "text.jsonl").exists()  # the producers' ledgers travel with the curated corpus

    assert main(["report", str(out)]) == 0
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["language"] == ["en", "zh"] and header["size_categories"] == ["n<1K"]
    assert header["license"] == ["mit", "unknown"] and "text-generation" in header["task_categories"]
    assert "| text | 5 | 0 | 0 | 1 | 0 | 0 | 1 | 1 | 0 | 2 | aws_key 1, email 1 |" in card
    page = (out / "report" / "index.html").read_text()
    assert "curation funnel" in page and page.count("class='sample removed'") == 7
    assert "data-reason='pii_in_image_pair'" in page and "data-reason='benchmark_ngram_overlap'" in page


def test_a_mixture_selects_by_language_and_licence(tmp_path):
    from mix_corpus import make_sample, write_category

    from mixer.config import load_mixture
    from mixer.mix import run_mix

    samples = []
    for i in range(12):
        s = make_sample("text", "synth", i)
        s.meta.update(language=["en", "zh", "ja"][i % 3], provenance={
            "path": f"{i}.txt", "sha256": None, "license": ["MIT License", "All rights reserved", None][i // 4 % 3],
            "license_spdx": ["MIT", None, None][i // 4 % 3]})
        samples.append(s)
    write_category(tmp_path / "corpus", "text", samples)
    (tmp_path / "mix.yaml").write_text(
        "stage: sel\nunit: samples\ncategories:\n  text: {ratio: 1.0, languages: [en, ja], exclude_licenses: [unknown]}\n")
    mix = run_mix([tmp_path / "corpus"], load_mixture(tmp_path / "mix.yaml"), tmp_path / "mix", local=True)
    got = [Sample.from_wds(m) for m in wds.WebDataset(str(next((tmp_path / "mix" / "sel" / "text").glob("*.tar"))),
                                                      shardshuffle=False)]
    assert sorted(s.meta["n"] for s in got) == [0, 2, 3, 5, 6]  # en/ja of the MIT and the "all rights reserved" ones
    assert mix["categories"]["text"]["dropped"] == {"language_not_selected": 4, "license_not_selected": 3}
