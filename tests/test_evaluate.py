"""Evaluation: items from every multimodal category with same-category and same-document distractors,
MC-PPL and option scoring, Wilson and bootstrap intervals, bits per byte over a byte budget, the `vlcorpus eval`
command and its errors, and a control run showing that a model trained on the pixels beats one trained on noise."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import ModelConfig, RunConfig, load_stage
from trainer.data import Encoder
from trainer.eval_command import check_tokenizer
from trainer.evaluate import (
    EvalConfig,
    Item,
    bits_per_byte,
    bootstrap_ratio,
    build_items,
    evaluate,
    load_eval_set,
    mc_ppl_prompt,
    read_held_out,
    score_item,
    wilson,
)
from trainer.model import build_model, image_processor, image_token_count
from trainer.synthetic import write_stage
from trainer.tokenizer import corpus_texts, load_tokenizer, special_ids, train_tokenizer
from trainer.train import run_stages
from vlcorpus import cli
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, write_index

SCHEDULES = Path(__file__).parents[1] / "trainer" / "schedules"


def jpeg(colour: tuple[int, int, int], seed: int = 0, size: int = 48, noise: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:  # the colour, with a little texture so no two images are the same bytes
        pixels = np.clip(np.array(colour) + rng.integers(-12, 13, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pair(category: str, doc: str, part: int, text: str, image: bytes) -> Sample:
    return Sample(category=category, source="t", doc=doc, part=part, origin=doc,
                  segments=[{"image": "0.jpg"}, {"text": text}], images={"0.jpg": image})


def write(folder, samples: list[Sample]) -> None:
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    for cat, group in by_cat.items():
        with ShardWriter(folder / cat, "t", max_samples=7) as w:
            for s in group:
                w.write(s)
        write_index(folder / cat)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Every multimodal category, two multi-page documents for doc_ocr, interleaved documents, and text."""
    folder = tmp_path_factory.mktemp("heldout")
    samples = []
    for cat in ("caption", "table_chart", "scene_ocr", "web_code"):
        samples += [pair(cat, f"{cat}-doc{i}", 0, f"{cat} text number {i}", jpeg((i * 40, 80, 200), i)) for i in range(6)]
    for paper in range(2):
        samples += [pair("doc_ocr", f"paper{paper}", p, f"paper {paper} page {p}: results and methods", jpeg((90, 90, 90), p))
                    for p in range(5)]
    for d in range(3):
        segs, images = [{"text": f"Document {d} begins."}], {}
        for k in range(3):
            images[f"{k}.jpg"] = jpeg((30 * k, 60 * d, 90), 10 * d + k)
            segs += [{"image": f"{k}.jpg"}, {"text": f"document {d}, the text after picture {k}"}]
        samples.append(Sample(category="interleaved", source="t", doc=f"mmc4-{d}", part=0, origin="x",
                              segments=segs, images=images))
    samples += [Sample(category="text", source="t", doc=f"t{i}", part=0, origin="x",
                       segments=[{"text": f"Plain held-out text {i}, " + "with some words " * (i + 3)}]) for i in range(12)]
    write(folder, samples)
    return folder


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson(30, 100)[1] - wilson(30, 100)[0] > wilson(300, 1000)[1] - wilson(300, 1000)[0]
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    den = rng.integers(50, 150, 400).astype(float)
    num = den * rng.normal(2.0, 0.3, 400)
    lo, hi = bootstrap_ratio(num, den, 500, seed=1)
    assert lo < num.sum() / den.sum() < hi
    lo_small, hi_small = bootstrap_ratio(num[:40], den[:40], 500, seed=1)
    assert hi_small - lo_small > hi - lo
    assert bootstrap_ratio(num, den, 500, seed=1) == (lo, hi)


def test_items_come_from_every_multimodal_category_with_same_category_distractors(heldout):
    samples = read_held_out(heldout, per_category=100, text_bytes=0)
    items, left_out = build_items(samples, EvalConfig(items=50, seed=3))
    assert left_out == {}
    texts = {c: {t for s in group for t in [seg["text"] for seg in s.segments if "text" in seg]} for c, group in samples.items()}
    assert {i.category for i in items} == {"caption", "table_chart", "scene_ocr", "web_code", "doc_ocr", "interleaved"}
    for item in items:
        assert len(item.options) == 4 == len(set(item.options)) and 0 <= item.answer < 4
        assert set(item.options) <= texts[item.category]  # distractors of the item's own category
    assert len([i for i in items if i.category == "caption"]) == 6  # one per pair, capped by what is there
    assert build_items(samples, EvalConfig(items=50, seed=3))[0] == items  # the seed fixes them


def test_hard_negatives_are_the_same_documents_other_pages(heldout):
    samples = read_held_out(heldout, per_category=100, text_bytes=0)
    items, _ = build_items(samples, EvalConfig(items=50, seed=0))
    for item in (i for i in items if i.category == "doc_ocr"):
        paper = item.options[item.answer].split(" page")[0]
        assert item.hard_negatives == 3 and all(o.startswith(paper) for o in item.options)
    for item in (i for i in items if i.category == "interleaved"):  # the image is followed by its own text
        doc = item.options[item.answer].split(",")[0]
        assert item.hard_negatives == 2 and sum(o.startswith(doc) for o in item.options) == 3


def test_a_category_without_items_is_left_out_and_said_why_or_an_error_when_named(tmp_path, caplog):
    write(tmp_path, [pair("caption", f"d{i}", 0, f"caption {i}", jpeg((10, 10, 10), i)) for i in range(6)]
          + [pair("web_code", "nb", i, "the same code", jpeg((9, 9, 9), i)) for i in range(5)])
    with caplog.at_level(logging.WARNING, logger="vlcorpus.trainer"):
        auto = load_eval_set(tmp_path, EvalConfig())
    assert {i.category for i in auto.items} == {"caption"}
    assert auto.left_out == {"web_code": "5 held-out samples, 1 distinct texts with an image, and an item needs 4"}
    assert "evaluation leaves out web_code: 5 held-out samples" in caplog.text
    with pytest.raises(ValueError, match=r"web_code gives no items.*1 distinct texts.*heldout_fraction"):
        load_eval_set(tmp_path, EvalConfig(categories=("caption", "web_code")))
    assert {i.category for i in load_eval_set(tmp_path, EvalConfig(categories=("caption",))).items} == {"caption"}
    with pytest.raises(ValueError, match="no held-out samples of scene_ocr"):
        load_eval_set(tmp_path, EvalConfig(categories=("scene_ocr",)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no held-out shards"):
        load_eval_set(tmp_path / "empty", EvalConfig())


@pytest.fixture(scope="module")
def tiny(heldout, tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    letters = ["Answer: A", "Answer: B", "Answer: C", "Answer: D"] * 20  # so that " A" ... are one token each
    train_tokenizer(itertools.chain(corpus_texts(heldout), letters), 400, tok_dir)
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), tok).eval()
    encoder = Encoder(tok, special_ids(tok), image_token_count(model.config), image_processor(model.config), 256)
    return model, encoder, tok_dir


def test_mc_ppl_lists_every_option_and_scores_the_letters(tiny):
    model, encoder, _ = tiny
    item = Item("caption", "k", jpeg((200, 0, 0)), "Which caption describes this image?",
                ["a red square", "a blue square", "a green square", "a black square"], 0)
    assert mc_ppl_prompt(item) == ("Which caption describes this image?\nA. a red square\nB. a blue square\n"
                                   "C. a green square\nD. a black square\nAnswer:")
    scored = score_item(model, encoder, item)
    assert set(scored) == {"mc_ppl", "option", "option_norm", "option_image"}
    assert all(isinstance(v, bool) for v in scored.values())


def test_evaluate_reports_every_score_with_counts_and_intervals(tiny, heldout):
    model, encoder, _ = tiny
    result = evaluate(model, encoder, heldout, items=50, seed=0, bpb_bytes=400)
    assert result["items"] == sum(e.get("items", 0) for e in result["categories"].values()) > 0
    assert result["chance"] == 0.25
    for entry in [result, *[e for e in result["categories"].values() if "items" in e]]:
        for key in ("mc_ppl_acc", "option_acc", "option_acc_norm", "option_acc_image"):
            lo, hi = entry[f"{key}_ci"]
            assert 0 <= lo <= entry[key] <= hi <= 1
    text = result["categories"]["text"]
    assert 400 <= sum(len(f"Plain held-out text {i}, " + "with some words " * (i + 3)) for i in range(text["bpb_samples"]))
    assert text["bpb_samples"] < 12  # the byte budget stopped it
    assert result["bpb_ci"][0] < result["bpb"] < result["bpb_ci"][1]
    assert result["categories"]["caption"]["bpb"] > 0  # multimodal text is scored with its image in context
    json.dumps(result)  # goes to metrics and eval.jsonl as it is


def test_bits_per_byte_counts_only_the_bytes_it_scored(tiny):
    model, _, tok_dir = tiny
    tok = load_tokenizer(tok_dir)
    encoder = Encoder(tok, special_ids(tok), image_token_count(model.config), image_processor(model.config), 64)
    words = "the model reads every page of the corpus and learns " * 60
    long = Sample(category="text", source="t", doc="long", part=0, origin="x", segments=[{"text": words}])
    kept = tok.decode([t for t in encoder(long).labels.tolist() if t >= 0], skip_special_tokens=True)
    assert len(kept) < len(words) / 4  # the sample really is truncated
    short = Sample(category="text", source="t", doc="short", part=0, origin="x", segments=[{"text": kept}])
    a, b = bits_per_byte(model, encoder, [long]), bits_per_byte(model, encoder, [short])
    assert a["bpb"] == pytest.approx(b["bpb"], rel=0.05) and a["bpb_bytes"] == pytest.approx(len(kept.encode()), abs=2)


def save_model_dir(model, encoder, tok_dir, out):
    model.save_pretrained(str(out))
    load_tokenizer(tok_dir).save_pretrained(str(out))
    image_processor(model.config).save_pretrained(str(out))
    return out


def test_eval_command_prints_the_table_and_writes_json_and_picture(tiny, heldout, tmp_path, capsys):
    model, encoder, tok_dir = tiny
    model_dir = save_model_dir(model, encoder, tok_dir, tmp_path / "final")
    rc = cli.main(["eval", str(model_dir), str(heldout), "--items", "20", "--bpb-bytes", "500", "--out", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert rc == 0 and "doc_ocr" in out and "interleaved" in out and "chance 0.250" in out
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(result["categories"]) >= {"caption", "doc_ocr", "interleaved", "text"}
    assert (tmp_path / "ev" / "eval.png").stat().st_size > 10_000


def test_eval_command_refuses_a_model_without_processor_and_a_foreign_tokenizer(tiny, heldout, tmp_path, capsys):
    model, encoder, tok_dir = tiny
    bare = tmp_path / "bare"
    model.save_pretrained(str(bare))
    load_tokenizer(tok_dir).save_pretrained(str(bare))
    assert cli.main(["eval", str(bare), str(heldout)]) == 2
    assert "no preprocessor_config.json" in capsys.readouterr().err
    other = tmp_path / "other-tok"
    train_tokenizer(iter(["a completely different corpus " * 50, "with other words and merges " * 50] * 20), 900, other)
    full = save_model_dir(model, encoder, tok_dir, tmp_path / "full")
    assert cli.main(["eval", str(full), str(heldout), "--tokenizer", str(other)]) == 2
    assert "not the tokenizer saved with the model" in capsys.readouterr().err
    (full / "tokenizer.json").unlink()
    (full / "tokenizer_config.json").unlink()
    big = tmp_path / "big-tok"
    train_tokenizer(iter([" ".join(f"w{i}x{j}" for j in range(300)) for i in range(300)]), 2000, big)
    assert cli.main(["eval", str(full), str(heldout), "--tokenizer", str(big)]) == 2
    assert "not the tokenizer the model was trained with" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not match the model"):
        swapped = load_tokenizer(tok_dir)
        swapped.add_special_tokens({"bos_token": "<pad>"})
        check_tokenizer(model, swapped, "swapped")


# --- control: the model uses the pixels ---------------------------------------------------------------------------

COLOURS = {"red": (210, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 210), "yellow": (230, 210, 30),
           "black": (15, 15, 15), "white": (245, 245, 245), "purple": (130, 40, 160), "orange": (240, 130, 20)}


def colour_captions(n: int, seed: int, noise: bool) -> list[Sample]:
    """Captions that can only be told apart by the image: "a red picture" under a red image, and so on."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        name = rng.choice(list(COLOURS))
        samples.append(pair("caption", f"c{seed}-{i // 10}", i % 10, f"a {name} picture",
                            jpeg(COLOURS[name], seed * 100000 + i, noise=noise)))
    return samples


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two short trainings: about a minute on a quiet 2-core machine, far more on a loaded one
def test_control_a_model_trained_on_noise_instead_of_images_scores_lower(tmp_path):
    heldout = tmp_path / "heldout"
    with ShardWriter(heldout / "caption", "t", max_samples=100) as w:
        for s in colour_captions(160, seed=99, noise=False):
            w.write(s)
    scores = {}
    for kind in ("images", "noise"):
        mix = tmp_path / kind / "mix"
        write_stage(mix, "stage2", {"caption": colour_captions(600, seed=1, noise=kind == "noise")}, {"caption": 1.0},
                    shard_samples=100)
        tok_dir = tmp_path / "tok"
        if not tok_dir.exists():
            train_tokenizer(corpus_texts(mix), 300, tok_dir)
        run = RunConfig(mix=str(mix), out=str(tmp_path / kind / "run"), tokenizer=str(tok_dir), num_workers=0,
                        ckpt_interval=1000, seed=0, eval_dir=str(heldout), eval_items=160)
        over = ["steps=120", "batch_size=8", "seq_len=64", "warmup_steps=5", "lr=3.0e-3", "packing=false",
                "language_share=0.0", "modality_warmup_steps=0", "lr_schedule=cosine"]
        summary = run_stages(run, [load_stage(SCHEDULES / "stage2.yaml", over)])[0]
        scores[kind] = summary["eval"]["categories"]["caption"]
    for key in ("option_acc", "option_acc_image"):
        assert scores["images"][f"{key}_ci"][0] > 0.25  # 4 options: chance is 1/4
        assert scores["noise"][f"{key}_ci"][1] < scores["images"][f"{key}_ci"][0]


def test_report_page_shows_every_score_with_its_interval_and_the_chart(tmp_path):
    from reports.run_page import write_report_page

    def ev(stage, acc, bpb):
        cat = {"items": 100, "hard_negatives": 0, "option_acc": acc, "option_acc_ci": list(wilson(int(acc * 100), 100)),
               "option_acc_norm": 0.25, "option_acc_norm_ci": list(wilson(25, 100)), "mc_ppl_acc": 0.2,
               "mc_ppl_acc_ci": list(wilson(20, 100)), "bpb": bpb + 1, "bpb_ci": [bpb + 0.9, bpb + 1.1], "bpb_bytes": 5000}
        return {"stage": stage, "items": 100, "chance": 0.25, **{k: v for k, v in cat.items() if k != "hard_negatives"},
                "bpb": bpb, "bpb_ci": [bpb - 0.05, bpb + 0.05], "bpb_bytes": 90_000, "categories": {"caption": cat}}

    train = tmp_path / "train"
    train.mkdir()
    (train / "eval.jsonl").write_text("".join(json.dumps(ev(s, a, b)) + "\n" for s, a, b in
                                              [("stage1", 0.24, 3.1), ("stage2", 0.41, 2.2), ("stage3", 0.45, 2.3)]))
    report = tmp_path / "report"
    report.mkdir()
    write_report_page(report, train, ["stage1", "stage2", "stage3"])
    page = (report / "index.html").read_text()
    assert "0.410 <small>[0.319, 0.508]</small>" in page  # the value and its Wilson interval
    assert page.count('class="above"') == 4  # stage2 and stage3, the all row and the caption row
    assert "3.100 <small>[3.050, 3.150]</small>" in page and "90000" in page
    assert (report / "eval.png").stat().st_size > 20_000


def test_mc_ppl_from_one_row_equals_one_row_per_letter(tiny):
    from trainer.evaluate import (
        _forward,
        _image_features,
        _image_inputs,
        _log_softmax,
        _row,
        _summed,
    )

    model, encoder, _ = tiny
    item = Item("caption", "k", jpeg((0, 0, 200)), "Which caption describes this image?", ["a", "b", "c", "d"], 1)
    image = _image_inputs(encoder, item.image)
    feats = _image_features(model, image["pixel_values"], image["high_res_pixel_values"])
    prompt = [encoder.ids.bos] + [encoder.ids.image] * encoder.n_img + encoder.text_ids(mc_ppl_prompt(item))
    letters = [encoder.text_ids(f" {x}") for x in "ABCD"]
    assert all(len(t) == 1 for t in letters)
    hidden, _ = _forward(model, [_row(prompt, letters[0])], encoder.ids.pad, feats)
    one_row = _log_softmax(model, hidden[0, len(prompt) - 1])[[t[0] for t in letters]]
    per_row, _ = _summed(model, *_forward(model, [_row(prompt, t) for t in letters], encoder.ids.pad, feats.repeat(4, 1, 1)))
    torch.testing.assert_close(one_row.double(), per_row, atol=1e-4, rtol=1e-4)
