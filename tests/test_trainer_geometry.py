"""The trainer at the real geometry with a reduced depth, on CPU: the `small` preset's SigLIP-B/16 at 384 px (576
image tokens) and SAM at 1024 px (64x64 patches, its 256-channel neck, then the adaptor's 96x96 interpolation and two
stride-2 convs to 24x24x1024), one layer each, and a 2-layer LLM of the preset's width; the paper's stage-1 sequence
length (512 text tokens); stages 1 -> 2 -> 3 a few steps each. The frozen SAM tower is also narrower inside (192
wide: its global attention over 4096 patches is most of the CPU time); every shape the adaptor and the LLM see is
the real one. `tiny` (16 image tokens) cannot show a sequence budget that loses the image."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.trainer_fixtures import stage
from trainer.config import ModelConfig, RunConfig
from trainer.data import Encoder
from trainer.model import (
    build_config,
    image_processor,
    image_token_count,
    load_trained,
    parameter_groups,
)
from trainer.synthetic import make_mixture, make_sample
from trainer.tokenizer import (
    chat_format,
    corpus_texts,
    load_tokenizer,
    special_ids,
    train_tokenizer,
)
from trainer.train import run_stages
from vlcorpus.sample import Sample

SHAPE = {"vision": {"num_hidden_layers": 1},
         "high_res": {"num_hidden_layers": 1, "global_attn_indexes": [0], "hidden_size": 192, "num_attention_heads": 3,
                      "mlp_dim": 768},
         "llm": {"num_hidden_layers": 2}}
REAL = ModelConfig(preset="small", shape=SHAPE)


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    stages = {"stage1": {"caption": 1 / 3, "doc_ocr": 2 / 3}, "stage2": {"caption": 0.15, "doc_ocr": 0.15, "text": 0.7},
              "stage3": {"sft_general": 0.6, "sft_text": 0.4}}
    out = make_mixture(tmp_path_factory.mktemp("mix"), samples_per_category=12, shard_samples=4, stages=stages,
                       max_words=80)
    meta = json.loads((out / "stage1" / "mixture.json").read_text())  # the shipped stage-1 mixture counts samples
    (out / "stage1" / "mixture.json").write_text(json.dumps({**meta, "unit": "samples"}))
    return out


@pytest.fixture(scope="module")
def tok_dir(mix, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_texts(mix), 600, out)
    return out


def test_stage_1_sequence_length_keeps_the_576_image_tokens(tok_dir):
    tok = load_tokenizer(tok_dir)
    config = build_config(REAL, tok)
    assert image_token_count(config) == 576
    enc = Encoder(tok, chat_format(tok), 576, image_processor(config), seq_len=512)  # Table 4's stage-1 seq_len
    rng = random.Random(0)
    page = make_sample("doc_ocr", 0, rng)
    page = Sample("doc_ocr", "s", "p", 0, "o", images=page.images,
                  segments=[{"image": "0.jpg"}, {"text": " ".join(["word"] * 3000)}])  # a long page of text
    e = enc(page)
    image = special_ids(tok).image
    assert e.input_ids.tolist().count(image) == 576 and e.text_tokens == 512 and len(e) == 1088
    assert e.pixel_values.shape == (1, 3, 384, 384) and e.high_res_pixel_values.shape == (1, 3, 1024, 1024)
    caption = enc(make_sample("caption", 1, rng, 30))
    assert caption.input_ids.tolist().count(image) == 576 and caption.cut == 0
    assert (caption.labels != -100).sum() == caption.text_tokens - 1  # all text but <bos> is learnt from


@pytest.mark.slow
def test_stages_1_2_3_at_real_geometry(mix, tok_dir, tmp_path):
    run = RunConfig(mix=str(mix), out=str(tmp_path / "run"), tokenizer=str(tok_dir), model=REAL, num_workers=0,
                    ckpt_interval=100, seed=0)
    stages = [stage("stage1", steps=3, batch_size=2, seq_len=512),
              stage("stage2", steps=3, batch_size=2, seq_len=256, modality_warmup_steps=0, language_share=0.5),
              stage("stage3", steps=2, batch_size=2, seq_len=256)]
    torch.manual_seed(0)
    summaries = run_stages(run, stages)
    out = tmp_path / "run"

    s1 = summaries[0]
    assert s1["samples_by_category"] == {"caption": 2, "doc_ocr": 4}  # 1/3 : 2/3 by samples, exactly
    assert s1["dropped"]["over_seq_budget"] == {"caption": 0, "doc_ocr": 0}
    for m in map(json.loads, (out / "stage1" / "metrics.jsonl").read_text().splitlines()):
        assert m["modality"] == "multimodal" and m["tokens"] >= 2 * (576 + 2)  # both samples kept their image

    # the loss reached every trainable part, the high-resolution path after SAM-B included, and nothing else
    init = load_trained(out / "stage1" / "final").state_dict()
    torch.manual_seed(0)
    from trainer.model import build_model

    fresh = build_model(REAL, load_tokenizer(tok_dir)).state_dict()
    changed = {n for n in fresh if not torch.equal(fresh[n], init[n])}
    groups = {g: {n for n, _ in ps} for g, ps in parameter_groups(load_trained(out / "stage1" / "final")).items()}
    assert changed == groups["aligner"]  # every adaptor parameter moved, no other
    assert {"model.high_res_vision_alpha", "model.high_res_vision_proj.conv1.weight",
            "model.high_res_vision_neck.conv2.weight"} <= changed

    s2 = summaries[1]
    assert s2["steps_by_modality"]["multimodal"] >= 1 and s2["steps_by_modality"]["language"] >= 1
    after2 = load_trained(out / "stage2" / "final").state_dict()
    moved = {g for g, names in groups.items() if any(not torch.equal(init[n], after2[n]) for n in names)}
    assert moved == {"aligner", "llm"}

    final = out / "stage3" / "final"
    after3 = load_trained(final).state_dict()
    moved = {g for g, names in groups.items() if any(not torch.equal(after2[n], after3[n]) for n in names)}
    assert moved == {"aligner", "vision", "llm"}
    processor = AutoProcessor.from_pretrained(final)
    model = AutoModelForImageTextToText.from_pretrained(final)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (300, 120), (20, 90, 200))},
                                             {"type": "text", "text": "What is shown?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert inputs["input_ids"][0].tolist().count(special_ids(processor.tokenizer).image) == 576
    assert inputs["high_res_pixel_values"].shape == (1, 3, 1024, 1024)
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def test_both_encoder_halves_are_alive_at_init(tok_dir):
    """A from-scratch SAM tower feeds the adaptor features and gradients of the same order as SigLIP's: at SAM's
    default init (1e-10) its features were ~1e-20 and the SAM half of the adaptor learnt nothing."""
    from trainer.model import build_model

    torch.manual_seed(0)
    model = build_model(REAL, load_tokenizer(tok_dir))
    proc = image_processor(model.config)
    img = Image.frombytes("RGB", (96, 64), bytes(random.Random(0).randrange(256) for _ in range(96 * 64 * 3)))
    px = proc([img], return_tensors="pt")
    low = model.model.get_low_res_image_features(px["pixel_values"]).last_hidden_state
    high = model.model.get_high_res_image_features(px["high_res_pixel_values"]).last_hidden_state
    assert high.shape[1] == low.shape[1] == 576
    ratio = high.abs().mean() / low.abs().mean()
    assert 1e-2 < ratio < 1e2, ratio.item()
    aligner = model.model.aligner
    aligner(low, high).square().mean().backward()
    grad = aligner.high_res_vision_proj.weight.grad.abs().mean() / aligner.vision_proj.weight.grad.abs().mean()
    assert 1e-2 < grad < 1e2, grad.item()


@pytest.mark.slow
def test_a_resume_holds_no_second_copy_of_the_state(tmp_path):
    """At the small preset's real geometry (reduced depth), each in its own process: reading a stage-3 checkpoint
    (model and AdamW state) costs next to nothing in resident memory above what a fresh start holds with the same
    optimizer state; a full `torch.load`ed state dict (the old resume) costs a whole model copy more."""
    from benchmarks.resume_memory import compare

    res = compare("small", True, "cpu", tmp_path)
    model = res["fresh"]["model_bytes"]
    assert res["resume"]["optimizer_state_bytes"] == res["fresh"]["optimizer_state_bytes"] > model  # all restored
    assert res["rss_peak_above_start_bytes_resume_minus_fresh"] < 0.25 * model, res
    assert res["rss_peak_above_start_bytes_legacy_minus_fresh"] > 0.5 * model, res  # the measure sees a copy
