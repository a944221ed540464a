"""The taxonomy, conversation readers, derived tasks and the balanced/eval-split SFT build, run as Ray jobs on
small fixture corpora (doc_ocr from arxiv/epub/html pages, web_code from notebooks/HTML) written with ShardWriter."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image, ImageDraw

from renderers.sft.classify import (
    EmbeddingClassifier,
    KeywordClassifier,
    verified_model_dir,
)
from renderers.sft.conversations import SftConfig
from renderers.sft.split import Item, plan
from renderers.sft.taxonomy import TaxonomyError, UnknownLabel, load_taxonomy
from tests.helpers import sample_view
from vlcorpus.cli import main as cli
from vlcorpus.ledger import Ledger
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, shard_paths

TAX = load_taxonomy()
OCR = ["Recognition", "OCR and Transcription", "Printed Text Transcription"]


def image(label: str, fmt: str = "PNG") -> bytes:
    """A distinct small image per label (so image hashes differ)."""
    h = hashlib.sha1(label.encode()).digest()
    img = Image.new("RGB", (64, 48), tuple(h[:3]))
    ImageDraw.Draw(img).text((4, 4), label[:10], fill=tuple(h[3:6]))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def read_back(root: Path, category: str) -> list[dict]:
    urls = [str(p) for p in shard_paths(root / category)] if (root / category).exists() else []
    return [sample_view(r) for r in wds.WebDataset(urls, shardshuffle=False).decode()] if urls else []


# --- taxonomy ---------------------------------------------------------------------------------------------------

def test_default_taxonomy_is_table_3():
    assert list(TAX.descriptions) == ["Recognition", "Conversion", "Analysis", "Commonsense Reasoning",
                                      "Logical Reasoning", "Evaluation", "Multi-graph", "Safety"]
    assert all(len(d) > 40 for d in TAX.descriptions.values())
    assert tuple(OCR) in TAX.leaves and ("Conversion", "Image to Code", "UI to Code") in TAX.leaves
    # Table 3's "-": Safety and Evaluation have no secondary level, Humor Reasoning no tertiary items
    assert [p for p in TAX.leaves if p[0] == "Safety"] == [
        ("Safety", "Suggestive Questioning"), ("Safety", "Counterfactual Questioning"), ("Safety", "Prompt Injection")]
    assert sum(1 for p in TAX.leaves if p[0] == "Evaluation" and len(p) == 2) == 5
    assert ("Commonsense Reasoning", "Humor Reasoning") in TAX.leaves
    assert not any(p[:2] == ("Commonsense Reasoning", "Humor Reasoning") and len(p) == 3 for p in TAX.leaves)
    assert len(TAX.leaves) == 89
    assert sum(1 for p in TAX.leaves if p[0] == "Analysis" and p[1] == "Professional Chart Analysis") == 7
    assert all(leaf.prompts for leaf in TAX.leaves.values())
    assert TAX.resolve("Counting") == ("Recognition", "Local Description", "Counting")
    assert TAX.resolve("conversion / image to code / chart to code") == ("Conversion", "Image to Code", "Chart to Code")
    assert TAX.resolve(["Recognition", "Global Description", "Event/Behavior Description"])[-1] == "Event/Behavior Description"
    with pytest.raises(UnknownLabel, match="ambiguous"):
        TAX.resolve("Attribute Comparison")
    with pytest.raises(UnknownLabel):
        TAX.resolve("Telepathy")


@pytest.mark.parametrize("body, message", [
    ("categories:\n  - name: A\n    children:\n      - {name: L, prompts: [p]}\n", "description"),
    ("categories:\n  - name: A\n    description: d\n    children:\n      - {name: L, prompts: [p], eval_prompts: [p]}\n", "both"),
    ("categories:\n  - name: A\n    description: d\n    children:\n      - {name: L}\n", "prompts"),
    ("categories:\n  - name: A\n    description: d\n    children:\n      - name: B\n        children:\n          - name: C\n"
     "            children: [{name: D, prompts: [p]}]\n", "three levels"),
    ("categories:\n  - name: A\n    description: d\n    children:\n      - {name: L, prompts: [p], colour: red}\n", "unknown keys"),
])
def test_bad_taxonomy_files_are_refused(tmp_path, body, message):
    f = tmp_path / "t.yaml"
    f.write_text(body)
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(f)


def test_keyword_classifier_is_transparent():
    c = KeywordClassifier(TAX)
    (path, conf), (other, zero) = c.classify(["How many birds can you count here?", "hello there"])
    assert path == ("Recognition", "Local Description", "Counting") and conf > 0.5
    assert zero == 0.0


@pytest.mark.slow
def test_embedding_classifier_from_the_offline_package():
    model_dir = verified_model_dir()
    if model_dir is None:
        pytest.skip("the `classifier` extra is not installed (make test installs it)")
    c = EmbeddingClassifier(TAX, model_dir)
    results = c.classify(["Please transcribe every word printed in this scan", "Why is this meme so funny?",
                          "Rewrite this screenshot of a website as HTML and CSS"])
    assert [p[-1] for p, _ in results] == ["Printed Text Transcription", "Humor Reasoning", "UI to Code"]
    assert all(conf > 0.5 for _, conf in results)


# --- plan -------------------------------------------------------------------------------------------------------

def item(key: str, leaf=tuple(OCR), images=None, prompt=None, derived=False) -> Item:
    return Item(key=key, category="sft_taxonomy", leaf=tuple(leaf), images=(images or f"img-{key}",),
                prompt=prompt or f"prompt {key}", answer=f"answer {key}", derived=derived)


def test_plan_caps_upsamples_and_keeps_eval_apart():
    counting = ("Recognition", "Local Description", "Counting")
    items = [item(f"a{i}") for i in range(40)]  # a big leaf
    items += [item(f"b{i}", leaf=counting) for i in range(3)]  # a small one
    items += [item("c0", leaf=counting, images="shared"), item("c1", leaf=counting, images="shared")]
    items += [item("d0", leaf=counting, prompt="same"), item("d1", leaf=counting, prompt="same")]
    items += [item("a0-dup", images="img-a0", prompt="prompt a0")]  # exact duplicate of a0 (answer differs -> kept)
    items += [Item("e", "sft_taxonomy", tuple(OCR), ("img-a1",), "prompt a1", "answer a1", False)]  # exact dup of a1
    cfg = SftConfig(eval_fraction=0.5, eval_max_per_leaf=5, max_per_leaf=20, target_per_leaf=12, max_upsample=2)
    assign, report = plan(items, cfg)
    rows = {tuple(r["leaf"]): r for r in report["leaves"]}
    big, small = rows[tuple(OCR)], rows[counting]
    assert report["totals"]["duplicates"] == 1
    assert big["eval"] == 5 and big["train_unique"] == 20 and big["capped"] == 41 - 5 - 20 and big["train_written"] == 20
    for key in ("c0", "c1", "d0", "d1"):  # they share an image or a prompt: never eval
        assert assign[key]["split"] == "train"
    assert small["eval"] == 3 and small["train_unique"] == 4
    assert small["train_written"] == 8 == sum(a["copies"] for k, a in assign.items() if k[0] in "bcd" and a["split"] == "train")
    evals = [k for k, a in assign.items() if a["split"] == "eval"]
    train_images = {f"img-{k}" for k, a in assign.items() if a["split"] == "train"}
    assert not any(f"img-{k}" in train_images for k in evals)


# --- the build --------------------------------------------------------------------------------------------------

PAGE_TEXT = "This page of a paper explains how the method works, step by step, with enough words to keep. "


def write_corpus(root: Path) -> None:
    """doc_ocr pages from arxiv/epub/html and web_code pairs from notebooks/html, as the other pipelines write them."""
    with ShardWriter(root / "doc_ocr", "fixture") as w:
        for source in ("arxiv", "epub", "html"):
            for page in range(4):
                text = PAGE_TEXT * 2 if page else "# Title\n\n## Section\n\n- point one\n- point two\n" + PAGE_TEXT
                w.write(Sample(category="doc_ocr", source=source, doc=f"{source}-doc", part=page, origin=f"{source}/x",
                               segments=[{"image": "0.png"}, {"text": text}], images={"0.png": image(f"{source}{page}")}))
    with ShardWriter(root / "web_code", "fixture") as w:
        for source, code in (("notebook", "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"),
                             ("html", "<html><body><h1>Hello</h1><p>A page with a heading.</p></body></html>")):
            for i in range(3):
                w.write(Sample(category="web_code", source=source, doc=f"{source}-{i}", part=0, origin=f"{source}/{i}",
                               segments=[{"image": "0.png"}, {"text": code + f"# variant {i}\n"}],
                               images={"0.png": image(f"{source}-{i}")}, meta={"source": source}))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def write_conversations(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    for name in ("cat", "sign", "dogs", "receipt", "menu"):
        (root / "images" / f"{name}.jpg").write_bytes(image(name, "JPEG"))
    (root / "images" / "broken.jpg").write_bytes(image("broken", "JPEG")[:100])
    def conv(*turns: tuple[str, str]) -> list[dict]:
        return [{"from": f, "value": v} for f, v in turns]

    llava = [
        {"id": "ok-labelled", "image": "images/dogs.jpg", "taxonomy": "Counting",
         "conversations": conv(("human", "<image>\nHow many dogs are there?"), ("gpt", "There are three dogs."))},
        {"id": "ok-unlabelled", "image": "images/sign.jpg",
         "conversations": conv(("human", "<image>\nTranscribe the text on this sign."), ("gpt", "NO PARKING"))},
        {"id": "unknown-label", "image": "images/cat.jpg", "taxonomy": "Telepathy",
         "conversations": conv(("human", "<image>\nWhy is this meme funny?"), ("gpt", "The cat looks surprised."))},
        {"id": "unsure", "image": "images/menu.jpg",
         "conversations": conv(("human", "<image>\nhello there"), ("gpt", "Hello!"))},
        {"id": "mismatch", "image": ["images/cat.jpg", "images/dogs.jpg"],
         "conversations": conv(("human", "<image>\nCompare."), ("gpt", "They differ."))},
        {"id": "ends-with-user", "image": "images/cat.jpg",
         "conversations": conv(("human", "<image>\nWhat is this?"), ("gpt", "A cat."), ("human", "Sure?"))},
        {"id": "missing-image", "image": "images/nowhere.jpg",
         "conversations": conv(("human", "<image>\nWhat is this?"), ("gpt", "Nothing."))},
        {"id": "broken-image", "image": "images/broken.jpg",
         "conversations": conv(("human", "<image>\nWhat is this?"), ("gpt", "Noise."))},
        {"id": "bad-role", "image": "images/cat.jpg",
         "conversations": conv(("narrator", "<image>\nOnce upon a time"), ("gpt", "..."))},
    ]
    (root / "llava.json").write_text(json.dumps(llava))
    (root / "sft_general").mkdir()
    messages = [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image("receipt"))}},
                                                   {"type": "text", "text": "What is the total on this receipt?"}]},
                      {"role": "assistant", "content": "The total is 12.50."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image> What is it?"},
                      {"role": "assistant", "content": "A menu."}], "images": ["images/menu.jpg"]},
    ]
    (root / "sft_general" / "chat.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages) + '{"messages": [\n')
    with ShardWriter(root / "own", "own") as w:
        w.write(Sample(category="sft_taxonomy", source="inhouse", doc="d", part=0, origin="o",
                       segments=[{"role": "user", "text": "Is this photo real?"}, {"role": "user", "image": "0.png"},
                                 {"role": "assistant", "text": "It looks edited."}],
                       images={"0.png": image("own")}, taxonomy=["Evaluation", "Reality Evaluation"]))


def staging_counts(out: Path) -> Counter:
    total: Counter = Counter()
    for e in Ledger(out / "_sft_staging", "sft_in").latest().values():
        total.update(e.counts)
    return total


def user_texts(row: dict) -> str:
    return "\n".join(s["text"] for s in row["json"]["segments"] if s["role"] == "user" and "text" in s).lower()


def image_hashes(row: dict) -> set[str]:
    return {hashlib.sha1(v).hexdigest() for k, v in row.items() if k.endswith((".png", ".jpg"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    base = tmp_path_factory.mktemp("sft")
    write_corpus(base / "corpus")
    write_conversations(base / "conv")
    out = base / "out"
    argv = ["build", "sft", str(base / "conv"), "--out", str(out), "--corpus", str(base / "corpus"),
            "--set", "classifier=keyword", "--set", "eval_fraction=0.34", "--set", f"image_root={base / 'conv'}", "--set", "target_per_leaf=6",
            "--set", "max_upsample=2", "--set", "max_per_leaf=7", "--set", "derived_min_chars=20"]
    assert cli(argv) == 0
    return base, out, argv


def test_bad_conversations_are_counted(built):
    _, out, _ = built
    c = staging_counts(out)
    assert c["image_placeholder_mismatch"] == 1
    assert c["ends_with_user_turn"] == 1
    assert c["image_missing"] == 1 and c["image_undecodable"] == 1
    assert c["unknown_role"] == 1
    assert c["unknown_taxonomy_label"] == 1
    assert c["bad_json_line"] == 1
    assert c["classified_others"] == 1  # "hello there"


def test_train_samples_have_roles_labels_and_balance(built):
    _, out, _ = built
    rows = read_back(out, "sft_taxonomy")
    assert rows and all(all("role" in s for s in r["json"]["segments"]) for r in rows)
    leaves = Counter(tuple(r["json"]["taxonomy"]) for r in rows)
    report = json.loads((out / "sft_coverage.json").read_text())
    for r in report["leaves"]:
        assert leaves.get(tuple(r["leaf"]), 0) == r["train_written"], r
    assert leaves[tuple(OCR)] == 7  # 9 derived pages + 1 classified conversation - 3 eval, capped at 7
    assert leaves[("Recognition", "OCR and Transcription", "Specified Format Transcription")] == 4  # 3 - 1 eval, x2
    assert leaves[("Conversion", "Image to Code", "Chart to Code")] == 4  # 3 pairs - 1 eval, up-sampled x2
    assert leaves[("Conversion", "Image to Code", "UI to Code")] == 4
    assert leaves[("Recognition", "Local Description", "Counting")] == 2  # one conversation, x2
    assert leaves[("Others",)] == 1  # not up-sampled
    assert leaves[("Commonsense Reasoning", "Humor Reasoning")] == 2  # unknown label -> classified
    assert leaves[("Evaluation", "Reality Evaluation")] == 2  # own shard, label kept
    assert len({r["__key__"] for r in rows}) == len(rows)
    general = read_back(out, "sft_general")
    assert sorted(user_texts(r) for r in general) == ["what is it?", "what is the total on this receipt?"]
    assert [s["role"] for s in general[0]["json"]["segments"]][-1] == "assistant"


def test_eval_split_shares_no_image_or_prompt_with_train(built):
    _, out, _ = built
    evals = read_back(out / "_eval", "sft_taxonomy")
    train = [r for c in ("sft_taxonomy", "sft_general") for r in read_back(out, c)]
    assert evals
    eval_leaves = Counter(tuple(r["json"]["taxonomy"]) for r in evals)
    assert eval_leaves[tuple(OCR)] == 3 and eval_leaves[("Conversion", "Image to Code", "Chart to Code")] == 1
    assert sum(eval_leaves.values()) == 6
    train_images = set().union(*(image_hashes(r) for r in train))
    train_prompts = {user_texts(r) for r in train}
    for r in evals:
        assert not image_hashes(r) & train_images
        assert user_texts(r) not in train_prompts
        if r["json"]["meta"]["label_source"] == "derived":
            leaf = TAX.leaf(tuple(r["json"]["taxonomy"]))
            assert user_texts(r) in {p.lower() for p in leaf.eval_prompts}


def test_rebuild_is_idempotent(built):
    _, out, argv = built
    before = {c: len(read_back(out, c)) for c in ("sft_taxonomy", "sft_general")}
    assert cli(argv) == 0
    after = {c: len(read_back(out, c)) for c in ("sft_taxonomy", "sft_general")}
    assert before == after
    assert len(read_back(out / "_eval", "sft_taxonomy")) == json.loads((out / "sft_coverage.json").read_text())["totals"]["eval"]


def test_user_taxonomy_file(tmp_path, ray_local, capsys):
    tax = tmp_path / "mine.yaml"
    tax.write_text("name: mine\ncategories:\n  - name: Pets\n    description: questions about pets\n    children:\n"
                   "      - {name: Dogs, prompts: ['What breed is this dog?'], keywords: [dog, puppy]}\n"
                   "      - {name: Cats, prompts: ['What is the cat doing?'], keywords: [cat, kitten]}\n")
    conv = tmp_path / "conv"
    conv.mkdir()
    recs = [{"messages": [{"role": "user", "content": "Is this puppy a dog of a known breed?"}, {"role": "assistant", "content": "A beagle."}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "taxonomy": "Pets/Cats"}]
    (conv / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    assert cli(["build", "sft", str(conv), "--out", str(out), "--taxonomy", str(tax), "--set", "classifier=keyword"]) == 0
    labels = Counter(tuple(r["json"]["taxonomy"]) for r in read_back(out, "sft_taxonomy"))
    assert labels == {("Pets", "Cats"): 3, ("Pets", "Dogs"): 3}  # each up-sampled x3 (the default max_upsample)
    assert cli(["build", "sft", str(conv), "--out", str(tmp_path / "o2"), "--taxonomy", str(tax), "--corpus", str(tmp_path)]) == 2
    assert "derived tasks need the taxonomy leaves" in capsys.readouterr().err
