"""Shared pieces of the trainer tests: stage configs, and a stand-in for a released DeepSeek-VL bundle.

The released weights cannot be downloaded here, so `released_bundle` writes what a converted deepseek-vl bundle
holds, at a tiny size: a random DeepseekVLHybrid model, a byte-level BPE tokenizer with DeepSeek's special tokens
(`<｜begin▁of▁sentence｜>`, `<｜end▁of▁sentence｜>`, `<image_placeholder>` as its `image_token`), an image processor
with non-default normalisation and sizes, and a chat template in DeepSeek-VL's format (`User: ` / `Assistant: `,
`\\n\\n` after a user turn, the end-of-sentence token after an answer, a fixed system preamble).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SamVisionConfig,
    SiglipVisionConfig,
)
from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
    DeepseekVLHybridImageProcessorPil,
)

from trainer.config import load_stage
from trainer.synthetic import WORDS

DS_BOS, DS_EOS, DS_IMAGE = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"
# DeepSeek-VL's conversation format written as a chat template (our own rendering of it, for the stand-in bundle)
DS_TEMPLATE = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.\n\n"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {% elif message['role'] == 'assistant' %}Assistant: "
    "{% else %}{{ message['role'].capitalize() }}: {% endif %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image_placeholder>{% else %}"
    "{% set t = c['text'] %}{% if loop.first %}{% set t = t.lstrip() %}{% endif %}"
    "{% if loop.last %}{% set t = t.rstrip() %}{% endif %}"
    "{% if not loop.first and message['content'][loop.index0 - 1]['type'] == 'text' %} {% endif %}{{ t }}"
    "{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n' }}{% else %}" + DS_EOS + "{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def stage(name: str, **over):
    base = {"steps": 3, "batch_size": 2, "warmup_steps": 1, "seq_len": 192}
    return load_stage(name, [f"{k}={v}" for k, v in {**base, **over}.items()])


def released_bundle(path: Path, image_mean=(0.5, 0.5, 0.5), high_res_image_mean=(0.1, 0.2, 0.3)) -> Path:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator([" ".join(WORDS), "User: Assistant: System: What is shown? helpful vision"] * 20,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=[DS_BOS, DS_EOS, DS_IMAGE],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=DS_BOS, eos_token=DS_EOS, pad_token=DS_EOS,
                                  extra_special_tokens={"image_token": DS_IMAGE})
    image = tok.convert_tokens_to_ids(DS_IMAGE)
    config = DeepseekVLHybridConfig(
        text_config=LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=448, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=64, patch_size=16),
        high_res_vision_config=SamVisionConfig(hidden_size=64, output_channels=32, num_hidden_layers=2,
                                               num_attention_heads=2, mlp_dim=128, image_size=128, patch_size=16,
                                               window_size=4, global_attn_indexes=[1]),
        image_token_id=image)
    DeepseekVLHybridForConditionalGeneration(config).save_pretrained(path)
    proc = DeepseekVLHybridImageProcessorPil(size={"height": 64, "width": 64}, high_res_size={"height": 128, "width": 128},
                                            image_mean=list(image_mean), image_std=[0.5, 0.5, 0.5],
                                            high_res_image_mean=list(high_res_image_mean), high_res_image_std=[0.25] * 3)
    DeepseekVLHybridProcessor(image_processor=proc, tokenizer=tok, chat_template=DS_TEMPLATE,
                              num_image_tokens=16).save_pretrained(path)
    return path
