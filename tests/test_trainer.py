"""The compact trainer on CPU: tiny preset, a synthetic mixture written with the project's ShardWriter, real torch
steps, real webdataset readers and DataLoader workers, a real 2-worker Ray Train run (slow)."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import (
    DeepseekVLConfig,
    DeepseekVLHybridConfig,
    LlamaConfig,
    LlamaModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
)

from trainer.config import ModelConfig, RunConfig, load_stage
from trainer.data import (
    IGNORE,
    CategoryStream,
    Encoder,
    StepBatcher,
    collate_rows,
    language_share,
    read_mixture,
    step_rng,
)
from trainer.model import (
    build_config,
    build_model,
    image_processor,
    image_token_count,
    llm_parameter_count,
    load_trained,
    parameter_groups,
)
from trainer.synthetic import make_mixture, make_sample
from trainer.tokenizer import (
    END,
    corpus_texts,
    load_tokenizer,
    special_ids,
    train_tokenizer,
)
from trainer.train import lr_factor, run_stages, train_stage
from vlcorpus import cli
from vlcorpus.sample import Sample

SCHEDULES = Path(__file__).parents[1] / "trainer" / "schedules"


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return make_mixture(tmp_path_factory.mktemp("mix"), samples_per_category=24, shard_samples=6, max_words=40)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return make_mixture(tmp_path_factory.mktemp("heldout"), samples_per_category=8, seed=9,
                        stages={"heldout": {"doc_ocr": 0.5, "web_code": 0.2, "text": 0.3}})


@pytest.fixture(scope="module")
def tok_dir(mix, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_texts(mix), 400, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny"), tok).eval()


def encoder_for(model, tok, seq_len=256):
    return Encoder(tok, special_ids(tok), image_token_count(model.config), image_processor(model.config), seq_len)


def stage(name, **over):
    base = {"steps": 3, "batch_size": 2, "warmup_steps": 1, "seq_len": 192}
    return load_stage(SCHEDULES / f"{name}.yaml", [f"{k}={v}" for k, v in {**base, **over}.items()])


def run_cfg(mix, tok_dir, out, **kw):
    return RunConfig(mix=str(mix), out=str(out), tokenizer=str(tok_dir), num_workers=0, ckpt_interval=2, **kw)


# --- model, presets, tokenizer, images -------------------------------------------------------------------------


def test_presets_keep_the_deepseek_vl_structure(tok):
    tiny = build_config(ModelConfig(preset="tiny"), tok)
    assert isinstance(tiny, DeepseekVLHybridConfig) and image_token_count(tiny) == 16
    small = build_config(ModelConfig(preset="small"), tok)
    assert image_token_count(small) == 576 and small.high_res_vision_config.image_size == 1024
    big = build_config(ModelConfig(preset="deepseek-vl-1.3b"), tok)
    assert isinstance(big, DeepseekVLConfig) and not hasattr(big, "high_res_vision_config")
    assert image_token_count(big) == 576
    with torch.device("meta"):  # shapes only: count parameters without allocating them
        small_model = build_model(ModelConfig(preset="small"), tok)
    n = llm_parameter_count(small_model) + small_model.model.language_model.embed_tokens.weight.numel()
    assert 100e6 <= n <= 200e6, n


def test_hybrid_encoder_paths_give_the_placeholder_count(model):
    px = torch.randn(2, 3, 64, 64)
    hpx = torch.randn(2, 3, 128, 128)
    feats = model.model.get_image_features(px, hpx).pooler_output
    assert feats.shape == (2, image_token_count(model.config), model.config.text_config.hidden_size)
    groups = parameter_groups(model)
    assert all(groups[g] for g in ("aligner", "vision", "high_res_vision", "llm"))
    assert any(n.endswith("high_res_vision_alpha") for n, _ in groups["high_res_vision"])


def test_pretrained_tower_directories_load(tok, tmp_path):
    mcfg = build_config(ModelConfig(preset="tiny"), tok)
    text = SiglipTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, projection_size=64)
    siglip = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=mcfg.vision_config.to_dict()))
    llama = LlamaModel(LlamaConfig(**{**mcfg.text_config.to_dict(), "num_hidden_layers": 2}))
    siglip.save_pretrained(tmp_path / "siglip")  # a whole SigLIP (text + vision): only the vision tower is taken
    llama.save_pretrained(tmp_path / "llm")
    m = build_model(ModelConfig(preset="tiny", vision_pretrained=str(tmp_path / "siglip"),
                                llm_pretrained=str(tmp_path / "llm")), tok)
    for name, p in m.model.vision_model.state_dict().items():
        assert torch.equal(siglip.state_dict()["vision_model." + name], p), name
    for name, p in llama.state_dict().items():
        assert torch.equal(m.model.language_model.state_dict()[name], p), name
    with pytest.raises(ValueError, match="holds a LlamaConfig, expected a SamVisionConfig"):
        build_model(ModelConfig(preset="tiny", high_res_pretrained=str(tmp_path / "llm")), tok)


def test_train_tokenizer_command_saves_special_tokens(mix, tmp_path):
    out = tmp_path / "tok"
    assert cli.main(["train-tokenizer", str(mix), "--out", str(out), "--vocab-size", "300"]) == 0
    tok = load_tokenizer(out)
    ids = special_ids(tok)
    assert len({ids.bos, ids.eos, ids.pad, ids.image, ids.end, *ids.roles.values()}) == 8
    text = "Ünïcode — 漢字 and bytes"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok("<image_placeholder>", add_special_tokens=False).input_ids == [ids.image]


def test_a_released_style_tokenizer_gets_the_missing_special_tokens(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator(["some text here"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    ids = special_ids(tok)
    assert ids.pad == ids.eos and len({ids.bos, ids.eos, ids.image, ids.end, *ids.roles.values()}) == 7
    assert tok("<|assistant|>x", add_special_tokens=False).input_ids[0] == ids.roles["assistant"]
    model = build_model(ModelConfig(preset="tiny"), tok)
    assert model.get_input_embeddings().num_embeddings >= len(tok)


def test_images_are_padded_to_square_then_resized_for_both_encoders(model):
    proc = image_processor(model.config)
    wide = Image.new("RGB", (120, 30), (255, 0, 0))
    out = proc([wide], return_tensors="pt")
    low, high = out["pixel_values"][0], out["high_res_pixel_values"][0]
    assert low.shape == (3, 64, 64) and high.shape == (3, 128, 128)
    # the bands above and below the wide image are the background (the mean colour, ~0 after normalising)
    assert high[:, :20].abs().max() < 0.05 and low[:, :10].abs().max() < 0.05
    assert high[0, 64, 64].item() > 1.0 and low[0, 32, 32].item() > 1.0  # the red image in the middle


# --- labels, truncation ------------------------------------------------------------------------------------------


def test_pretraining_labels_all_text_never_images(model, tok):
    enc = encoder_for(model, tok)
    ids = special_ids(tok)
    sample = make_sample("doc_ocr", 0, __import__("random").Random(0))
    e = enc(sample)
    image_pos = e.input_ids == ids.image
    assert image_pos.sum() == 16 and (e.labels[image_pos] == IGNORE).all()
    assert e.labels[0] == IGNORE  # bos
    text_pos = ~image_pos
    text_pos[0] = False
    assert (e.labels[text_pos] == e.input_ids[text_pos]).all()  # every text token and the eos are targets
    assert e.input_ids[-1] == ids.eos and e.pixel_values.shape == (1, 3, 64, 64)


def test_sft_labels_only_assistant_turns_and_their_closing_tokens(model, tok):
    enc = encoder_for(model, tok)
    ids = special_ids(tok)
    img = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 255)).save(img, format="PNG")
    sample = Sample("sft_general", "synthetic", "d", 0, "o", segments=[
        {"role": "system", "text": "Be brief."},
        {"role": "user", "image": "0.png"}, {"role": "user", "text": "Colour?"},
        {"role": "assistant", "text": "Blue."},
        {"role": "user", "text": "Sure?"},
        {"role": "assistant", "text": "Yes, blue."},
    ], images={"0.png": img.getvalue()})
    e = enc(sample)
    targets = [int(t) for t, l in zip(e.input_ids, e.labels) if l != IGNORE]
    expected = (tok("Blue.", add_special_tokens=False).input_ids + [ids.end]
                + tok("Yes, blue.", add_special_tokens=False).input_ids + [ids.end, ids.eos])
    assert targets == expected
    assert tok.convert_ids_to_tokens(ids.end) == END
    ids_list = e.input_ids.tolist()
    assert ids_list.count(ids.roles["assistant"]) == 2 and ids_list.count(ids.roles["user"]) == 2


def test_truncation_never_cuts_an_image(model, tok):
    enc = encoder_for(model, tok, seq_len=10)  # bos + 16 placeholders cannot fit: the image is dropped whole
    e = enc(make_sample("caption", 0, __import__("random").Random(1)))
    assert len(e) <= 10 and special_ids(tok).image not in e.input_ids.tolist() and e.pixel_values is None
    img = make_sample("caption", 0, __import__("random").Random(1)).images["0.jpg"]
    two = Sample("interleaved", "synthetic", "d", 0, "o", images={"0.jpg": img, "1.jpg": img},
                 segments=[{"text": "a"}, {"image": "0.jpg"}, {"image": "1.jpg"}, {"text": "b"}])
    e = encoder_for(model, tok, seq_len=30)(two)  # the second image's block would be cut: only the first stays
    assert e.input_ids.tolist().count(special_ids(tok).image) == 16 and e.pixel_values.shape[0] == 1


# --- mixture, streams, modality draws ----------------------------------------------------------------------------


def test_read_mixture_uses_mixture_json_then_folder_sizes(mix, tmp_path):
    m = read_mixture(mix, "stage2")
    assert m.ratio_source == "mixture.json" and math.isclose(m.language_share, 0.7)
    assert m.language == ["text"] and set(m.multimodal) == {"caption", "doc_ocr", "web_code"}
    bare = make_mixture(tmp_path, samples_per_category=6, stages={"s": {"caption": 1, "text": 1}})
    (bare / "s" / "mixture.json").unlink()
    m2 = read_mixture(bare, "s")
    assert m2.ratio_source == "folder sizes" and math.isclose(sum(m2.ratios.values()), 1.0)
    with pytest.raises(FileNotFoundError, match="no such mixture stage"):
        read_mixture(bare, "nope")


def test_streams_split_shards_over_workers_and_skip_on_resume(mix, model, tok):
    shards = read_mixture(mix, "stage2").shards["text"]  # 4 shards of 6 samples
    enc = encoder_for(model, tok)

    def take(skip, n, workers):
        loader = DataLoader(CategoryStream(shards, enc, seed=3, skip=skip), batch_size=None, num_workers=workers)
        it = iter(loader)
        return [tuple(next(it)["input_ids"].tolist()) for _ in range(n)]

    epoch = take(0, 24, workers=2)
    assert len(set(epoch)) == 24  # two workers, disjoint shards: every sample exactly once per epoch
    assert take(7, 10, workers=2) == take(0, 17, workers=2)[7:]


def test_modality_warmup_and_realised_share():
    assert language_share(0, 0.7, 100) == 1.0
    assert math.isclose(language_share(50, 0.7, 100), 0.85)
    assert language_share(100, 0.7, 100) == 0.7 == language_share(10_000, 0.7, 100)
    draws = [step_rng(0, s).random() < 0.7 for s in range(5000)]
    assert abs(np.mean(draws) - 0.7) < 0.03


def test_grouped_steps_are_one_modality_and_follow_the_ratios(mix, model, tok):
    b = StepBatcher(read_mixture(mix, "stage2"), encoder_for(model, tok, 128), seed=1, batch_size=2,
                    micro_batch_size=2, seq_len=128, packing=False, target_share=0.5, modality_warmup_steps=4)
    counts: Counter = Counter()
    for step in range(40):
        batch = b.next_batch(step)
        langs = {c == "text" for c in batch.categories}
        assert len(langs) == 1 and (batch.modality == "language") == langs.pop()
        if step < 4:
            assert batch.modality == "language"  # the warm-up starts at share 1.0
        counts.update(batch.categories)
    assert math.isclose(b.realised_language_share(), b.steps_by_modality["language"] / 40)
    assert 0.35 < b.realised_language_share() < 0.75
    rng = np.random.default_rng(0)
    b._share_now = 0.0
    draws = Counter(b._draw_category(rng, "multimodal") for _ in range(3000))
    assert all(abs(draws[c] / 3000 - 1 / 3) < 0.04 for c in ("caption", "doc_ocr", "web_code"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_the_same_per_token_loss_as_samples_one_by_one(tok, attn):
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", attn_implementation=attn), tok).eval()
    enc = encoder_for(model, tok)
    rng = __import__("random").Random(5)
    samples = [enc(make_sample(c, i, rng, 30)) for i, c in enumerate(["caption", "text", "doc_ocr", "text"])]

    def token_logprobs(rows):
        batch = collate_rows(rows, enc.ids.pad)
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
        return logp[labels[:, 1:] != IGNORE]

    alone = torch.cat([token_logprobs([[s]]) for s in samples])
    packed = token_logprobs([samples])  # one row, four documents, position ids restarting
    assert packed.shape == alone.shape
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=1e-5)
    # the same row with one running position sequence (plain causal attention) must differ: the test can fail
    row = collate_rows([samples], enc.ids.pad)
    row["position_ids"] = torch.arange(row["input_ids"].shape[1])[None]
    labels = row.pop("labels")
    with torch.no_grad():
        logits = model(**row, use_cache=False).logits
    crossed = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    assert not torch.allclose(crossed[labels[:, 1:] != IGNORE], alone, atol=1e-3)


def test_gradient_accumulation_and_activation_checkpointing_match_one_full_batch(mix, model, tok):
    import copy

    from trainer.train import _micro_loss

    def batch(micro):
        b = StepBatcher(read_mixture(mix, "stage2"), encoder_for(model, tok, 128), seed=0, batch_size=4,
                        micro_batch_size=micro, seq_len=128, packing=True, target_share=0.0, modality_warmup_steps=0)
        return b.next_batch(0)

    def grads(m, b):
        m.zero_grad()
        total = 0.0
        for mb in b.micro:
            loss = _micro_loss(m, mb, b.target_tokens, __import__("contextlib").nullcontext())
            loss.backward()
            total += loss.item()
        return total, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    m = copy.deepcopy(model).train()
    one, many = batch(4), batch(1)
    assert len(one.micro) == 1 and len(many.micro) == 4 and one.modality == "multimodal"
    loss_one, g_one = grads(m, one)
    loss_many, g_many = grads(m, many)
    assert math.isclose(loss_one, loss_many, rel_tol=1e-5)
    ckpt = copy.deepcopy(model).train()
    ckpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, g_ckpt = grads(ckpt, one)
    assert math.isclose(loss_one, loss_ckpt, rel_tol=1e-6)
    for name, g in g_one.items():
        torch.testing.assert_close(g_many[name], g, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(g_ckpt[name], g, atol=1e-6, rtol=1e-4)


# --- the loop ----------------------------------------------------------------------------------------------------


def test_lr_schedules():
    cos = stage("stage1", steps=100, warmup_steps=10)
    assert lr_factor(0, cos) == 0.1 and lr_factor(9, cos) == 1.0
    assert math.isclose(lr_factor(99, cos), cos.min_lr_ratio, abs_tol=1e-3)
    st = stage("stage2", steps=100, warmup_steps=10)
    assert lr_factor(50, st) == 1.0 and lr_factor(85, st) == 0.316 and math.isclose(lr_factor(95, st), 0.316**2)


def _state(path):
    return load_trained(path).state_dict()


def test_three_stages_train_the_right_parameters_and_log(mix, tok_dir, heldout, tmp_path):
    run = run_cfg(mix, tok_dir, tmp_path / "run", eval_dir=str(heldout), eval_items=4, seed=0)
    stages = [stage("stage1"), stage("stage2", packing=True, modality_warmup_steps=1, language_share=0.5),
              stage("stage3", steps=4)]
    torch.manual_seed(0)
    init = build_model(run.model, load_tokenizer(tok_dir)).state_dict()
    summaries = run_stages(run, stages)
    assert [s["stage"] for s in summaries] == ["stage1", "stage2", "stage3"]
    before = init
    expect = {"stage1": {"aligner"}, "stage2": {"aligner", "llm"}, "stage3": {"aligner", "vision", "llm"}}
    for s in stages:
        after = _state(tmp_path / "run" / s.name / "final")
        model = load_trained(tmp_path / "run" / s.name / "final")
        changed = set()
        for group, params in parameter_groups(model).items():
            for name, _ in params:
                if not torch.equal(before[name], after[name]):
                    changed.add(group)
        assert changed == expect[s.name], (s.name, changed)
        before = after
    out = tmp_path / "run"
    metrics = [json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[0]["modality"] == "language"
    lang = sum(m["modality"] == "language" for m in metrics)
    assert metrics[-1]["realised_language_share"] == lang / 3 == summaries[1]["realised_language_share"]
    for s in stages:
        assert (out / s.name / "curves.png").stat().st_size > 0
        assert list((out / s.name / "tensorboard").glob("events.*"))
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["stage1", "stage2", "stage3"]
    assert all(0 <= e["option_acc"] <= 1 and 0 <= e["mc_ppl_acc"] <= 1 and e["bpb"] > 0 for e in evals)
    # the final model loads back and generates from an image prompt
    final = load_trained(out / "stage3" / "final")
    tok = load_tokenizer(out / "stage3" / "final")
    ids = special_ids(tok)
    prompt = torch.tensor([[ids.bos, ids.roles["user"]] + [ids.image] * 16 + [ids.end, ids.roles["assistant"]]])
    gen = final.generate(input_ids=prompt, pixel_values=torch.zeros(1, 3, 64, 64),
                         high_res_pixel_values=torch.zeros(1, 3, 128, 128), max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, prompt.shape[1] + 4)
    # a re-run skips finished stages
    assert run_stages(run, stages)[2]["steps"] == 4


def test_stop_and_resume_reaches_the_same_losses(mix, tok_dir, tmp_path):
    st = stage("stage2", steps=6, packing=True, language_share=0.5, modality_warmup_steps=1)
    base = dict(mix=str(mix), tokenizer=str(tok_dir), ckpt_interval=100, num_workers=2, seed=3)
    torch.manual_seed(0)
    train_stage(RunConfig(out=str(tmp_path / "whole"), **base), st, None)
    torch.manual_seed(0)
    assert train_stage(RunConfig(out=str(tmp_path / "cut"), stop_after=3, **base), st, None) == {"stopped_at": 3}
    torch.manual_seed(123)  # a different process state: the checkpoint must restore everything that matters
    train_stage(RunConfig(out=str(tmp_path / "cut"), **base), st, None)

    def losses(run):
        return [(m["step"], m["modality"], m["loss"]) for m in map(json.loads, (tmp_path / run / "stage2" / "metrics.jsonl").read_text().splitlines())]

    assert losses("cut") == losses("whole")
    assert {m for _, m, _ in losses("whole")} == {"language", "multimodal"}
    a, b = _state(tmp_path / "whole" / "stage2" / "final"), _state(tmp_path / "cut" / "stage2" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_siglip_only_checkpoint_trains_from_a_local_directory(mix, tok_dir, tok, tmp_path):
    """The deepseek-vl-1.3b preset starting from a local DeepseekVL checkpoint (a tiny random one stands in for the
    released weights, which cannot be downloaded here)."""
    from transformers import DeepseekVLForConditionalGeneration

    tiny = build_config(ModelConfig(preset="tiny"), tok)
    cfg = DeepseekVLConfig(text_config=tiny.text_config, vision_config=tiny.vision_config,
                           image_token_id=tiny.image_token_id)
    DeepseekVLForConditionalGeneration(cfg).save_pretrained(tmp_path / "released")
    run = RunConfig(mix=str(mix), out=str(tmp_path / "run"), tokenizer=str(tok_dir), num_workers=0, seed=0,
                    model=ModelConfig(preset="deepseek-vl-1.3b", pretrained=str(tmp_path / "released")))
    st = stage("stage3", steps=2, language_share=0.0)
    train_stage(run, st, run.model.pretrained)
    before, after = _state(tmp_path / "released"), _state(tmp_path / "run" / "stage3" / "final")
    final = load_trained(tmp_path / "run" / "stage3" / "final")
    assert type(final).__name__ == "DeepseekVLForConditionalGeneration"
    changed = {g for g, ps in parameter_groups(final).items() for n, _ in ps if not torch.equal(before[n], after[n])}
    assert changed == {"aligner", "vision", "llm"}


def test_bad_schedule_override_stops_with_a_message(mix, tok_dir, tmp_path, capsys):
    rc = cli.main(["train", "--schedule", str(SCHEDULES / "stage1.yaml"), "--mix", str(mix), "--tokenizer",
                   str(tok_dir), "--out", str(tmp_path), "--set", "lr_shedule=cosine"])
    assert rc == 2 and "lr_shedule" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_train_two_workers_ddp_and_fsdp_with_resume(ray_local, mix, tok_dir, tmp_path):
    from trainer.distributed import launch

    st = stage("stage2", steps=3, batch_size=2, packing=True, language_share=0.5)
    base = dict(mix=str(mix), tokenizer=str(tok_dir), num_workers=0, seed=0, device="cpu", ckpt_interval=100)
    summaries = launch(RunConfig(out=str(tmp_path / "ddp"), **base), [st], workers=2)
    assert summaries and summaries[0]["steps"] == 3
    ckpt = tmp_path / "ddp" / "stage2" / "ckpt"
    r0 = torch.load(ckpt / "rank0.pt", weights_only=False)["data"]["consumed"]
    r1 = torch.load(ckpt / "rank1.pt", weights_only=False)["data"]["consumed"]
    assert sum(r0.values()) > 0 and sum(r1.values()) > 0
    # FSDP2, stopped after 2 steps and resumed: the same losses and weights as DDP straight through
    launch(RunConfig(out=str(tmp_path / "fsdp"), fsdp=True, stop_after=2, **base), [st], workers=2)
    assert not (tmp_path / "fsdp" / "stage2" / "final").exists()
    launch(RunConfig(out=str(tmp_path / "fsdp"), fsdp=True, **base), [st], workers=2)

    def losses(run):
        lines = (tmp_path / run / "stage2" / "metrics.jsonl").read_text().splitlines()
        return [(m["step"], m["modality"], m["loss"]) for m in map(json.loads, lines)]

    ddp, fsdp = losses("ddp"), losses("fsdp")
    assert [s[:2] for s in ddp] == [s[:2] for s in fsdp]
    assert all(math.isclose(a[2], b[2], rel_tol=1e-4) for a, b in zip(ddp, fsdp)), (ddp, fsdp)
    a, b = _state(tmp_path / "ddp" / "stage2" / "final"), _state(tmp_path / "fsdp" / "stage2" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_stage_with_bf16_packing_and_eval(mix, tok_dir, heldout, tmp_path):
    run = RunConfig(mix=str(mix), out=str(tmp_path / "gpu"), tokenizer=str(tok_dir), num_workers=2, seed=0,
                    device="cuda", eval_dir=str(heldout), eval_items=4)
    st = stage("stage2", steps=4, packing=True, language_share=0.5, modality_warmup_steps=1)
    summary = train_stage(run, st, None)
    metrics = [json.loads(x) for x in (tmp_path / "gpu" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and all(math.isfinite(m["loss"]) for m in metrics)
    assert summary["eval"]["bpb"] > 0
    load_trained(tmp_path / "gpu" / "stage2" / "final")


def test_training_and_reading_shards_never_import_ray():
    import subprocess
    import sys

    code = ("import sys, trainer.train, trainer.data, trainer.evaluate; "
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
