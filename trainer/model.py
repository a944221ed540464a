"""A thin builder around transformers' DeepSeek-VL classes: preset -> config -> model, the attention kernel of each
part, the per-stage choice of which parameter groups train, and the Hugging Face bundle (model + processor).

Hybrid presets use `DeepseekVLHybridForConditionalGeneration` (SigLIP low-res + SAM high-res, the paper's hybrid
encoder and two-path adaptor); the SigLIP-only 1.3B shape uses `DeepseekVLForConditionalGeneration`. A stage's
`final/` is a complete bundle (`save_pretrained` of the model and of its `DeepseekVL(Hybrid)Processor`: tokenizer with
its `image_token`, image processor, chat template), so `AutoModelForImageTextToText` and `AutoProcessor` load it, and
released DeepSeek-VL bundles load and train further with their own processor settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModel,
    AutoProcessor,
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridProcessor,
    DeepseekVLProcessor,
    LlamaConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SamVisionConfig,
    SiglipVisionConfig,
)
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import (
    DeepseekVLImageProcessorPil,
)
from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
    DeepseekVLHybridImageProcessorPil,
)

from trainer.config import PRESETS, ModelConfig
from trainer.tokenizer import ChatFormat, special_ids

VLModel = DeepseekVLHybridForConditionalGeneration | DeepseekVLForConditionalGeneration
# SamVisionConfig's default initializer_range (1e-10) is for loading released weights over it: a SAM tower from
# scratch at that scale outputs ~1e-20 and the SAM half of the adaptor gets no gradient. LLaMA's 0.02 instead.
SCRATCH_INIT_STD = 0.02


def _sub_config(cls, preset_values: dict, pretrained: str | None, **extra):
    """The preset's shape (with `ModelConfig.shape` on top), or the shape of the pretrained tower when one is given."""
    if pretrained:
        cfg = AutoConfig.from_pretrained(pretrained)
        cfg = cfg if isinstance(cfg, cls) else getattr(cfg, "vision_config", cfg)  # a whole SiglipModel / SamModel
        if not isinstance(cfg, cls):
            raise ValueError(f"{pretrained}: holds a {type(cfg).__name__}, expected a {cls.__name__} tower")
        return cfg
    return cls(**preset_values, **extra)


def build_config(mcfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> DeepseekVLHybridConfig | DeepseekVLConfig:
    preset = PRESETS[mcfg.preset]
    ids = special_ids(tokenizer)
    shape = {**preset.llm, **mcfg.shape.get("llm", {})}
    # the preset's vocabulary (a released one's size), or the tokenizer's to a multiple of 64 (an efficient LM head)
    vocab = max(shape.pop("vocab_size", 0), math.ceil(len(tokenizer) / 64) * 64)
    llm = _sub_config(LlamaConfig, shape, mcfg.llm_pretrained,
                      vocab_size=vocab, bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad)
    if llm.vocab_size < len(tokenizer):
        llm.vocab_size = vocab
    # DeepSeek-VL uses SigLIP's patch tokens: its attention-pooling head would be built and trained for nothing
    vision = _sub_config(SiglipVisionConfig, {"vision_use_head": False, **preset.vision,
                                              **mcfg.shape.get("vision", {})}, mcfg.vision_pretrained)
    # DeepSeek-LLM's LM head is its own matrix, not the embeddings (transformers' DeepseekVL configs tie by default)
    common = dict(text_config=llm, vision_config=vision, image_token_id=ids.image, tie_word_embeddings=False)
    if preset.high_res is None:
        return DeepseekVLConfig(**common)
    high_res = _sub_config(SamVisionConfig, {"initializer_range": SCRATCH_INIT_STD, **preset.high_res,
                                             **mcfg.shape.get("high_res", {})}, mcfg.high_res_pretrained)
    return DeepseekVLHybridConfig(**common, high_res_vision_config=high_res)


def flex_attention_in_autocast_dtype(module, query, key, value, attention_mask, **kwargs):
    """transformers' flex attention with q, k, v in the autocast dtype. Under bf16 autocast RoPE hands the kernel fp32
    q/k and a bf16 v (the projections ran in bf16, the rotation in fp32), and transformers' flex path does not cast:
    older torch raises, newer torch silently runs the whole attention in fp32."""
    device = query.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)


# Every model this process builds or loads with flex attention (packed rows under SDPA on CUDA, or asked for) uses it.
AttentionInterface.register("flex_attention", flex_attention_in_autocast_dtype)


def attention(config, requested: str, packing: bool, device: torch.device) -> dict[str, str]:
    """The attention kernel of each part. The LLM gets the requested one, except that packed rows under SDPA on CUDA
    run flex attention (the documents as a block mask): SDPA would need a dense 4-D mask, which also forfeits its
    fast kernels. The vision towers never see packed rows: SDPA, or eager when eager (the reference) is asked for."""
    tower = "eager" if requested == "eager" else "sdpa"
    out = {"text_config": "flex_attention" if requested == "sdpa" and packing and device.type == "cuda" else requested,
           "vision_config": tower}
    if isinstance(config, DeepseekVLHybridConfig):
        out["high_res_vision_config"] = tower
    return out


def build_model(mcfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, packing: bool = False,
                device: torch.device = torch.device("cpu")) -> VLModel:
    """A whole pretrained checkpoint, or the preset with optional pretrained towers, random init elsewhere."""
    hybrid = PRESETS[mcfg.preset].high_res is not None
    cls = DeepseekVLHybridForConditionalGeneration if hybrid else DeepseekVLForConditionalGeneration
    if mcfg.pretrained:  # the checkpoint's own class and shape, whatever the preset says
        model = load_trained(mcfg.pretrained, mcfg.attn_implementation, packing, device)
        model.config.image_token_id = special_ids(tokenizer).image
    else:
        config = build_config(mcfg, tokenizer)
        model = cls._from_config(config, attn_implementation=attention(config, mcfg.attn_implementation, packing, device),
                                 dtype=torch.float32)
        towers = {"vision_model": mcfg.vision_pretrained, "language_model": mcfg.llm_pretrained}
        if hybrid:
            towers["high_res_vision_model"] = mcfg.high_res_pretrained
        for attr, path in towers.items():
            if path:
                _load_tower(getattr(model.model, attr), path)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return model


def _load_tower(tower: torch.nn.Module, path: str) -> None:
    """Weights of one tower from a local directory: the tower itself (SiglipVisionModel, SamVisionModel, LlamaModel
    or LlamaForCausalLM) or a whole model holding it (SiglipModel, SamModel), whose other parts are left out."""
    state = AutoModel.from_pretrained(path, dtype=torch.float32).state_dict()
    keys = list(tower.state_dict())
    prefixes = [""] + [k[: -len(keys[0])] for k in state if k.endswith("." + keys[0])]  # e.g. "vision_model."
    prefix = next((p for p in prefixes if all(p + k in state for k in keys)), None)
    if prefix is None:
        raise ValueError(f"{path}: not a {type(tower).__name__} checkpoint (no weights for {keys[0]} and others)")
    tower.load_state_dict({k: state[prefix + k] for k in keys})


def image_processor(config: DeepseekVLHybridConfig | DeepseekVLConfig):
    """For a model from scratch: pad-to-square + resize to each encoder's size, with transformers' DeepSeek-VL image
    processors (PIL backend) at their default normalisation. A pretrained bundle keeps its own (`load_processor`)."""
    low = config.vision_config.image_size
    if isinstance(config, DeepseekVLHybridConfig):
        high = config.high_res_vision_config.image_size
        return DeepseekVLHybridImageProcessorPil(size={"height": low, "width": low},
                                                 high_res_size={"height": high, "width": high})
    return DeepseekVLImageProcessorPil(size={"height": low, "width": low})


def image_token_count(config: DeepseekVLHybridConfig | DeepseekVLConfig) -> int:
    """Placeholder tokens per image: one per SigLIP patch (the SAM path is resampled to the same grid)."""
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


# The paper's VL adaptor (§3.1): on the SAM path the 96x96 interpolation and the two stride-2 convs
# (`high_res_vision_proj`), with the neck copy on the first global-attention block (`high_res_vision_neck`) and its
# zero-initialised `high_res_vision_alpha`; then the two-path MLP (`aligner`). All of it trains from stage 1.
ADAPTOR = ("model.aligner.", "model.high_res_vision_proj.", "model.high_res_vision_neck.", "model.high_res_vision_alpha")


SIGLIP_HEAD = "model.vision_model.head."
UNUSED = "unused"


def parameter_groups(model: VLModel) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Named parameters by the stage groups of `trainer.config.PARAM_GROUPS`.

    `aligner` is the whole VL adaptor (`ADAPTOR`, the high-resolution path after SAM-B included); `vision` is
    SigLIP; `high_res_vision` is SAM-B itself (its ViT and its own neck, 64x64x256 out); `llm` the decoder, its
    embeddings and the LM head (tied or not); `unused` what no forward pass reaches (a pretrained SigLIP's
    attention-pooling head), which never trains.
    """
    groups: dict[str, list] = {"aligner": [], "vision": [], "high_res_vision": [], "llm": [], UNUSED: []}
    for name, p in model.named_parameters():
        if name.startswith(SIGLIP_HEAD):
            groups[UNUSED].append((name, p))
        elif name.startswith(ADAPTOR):
            groups["aligner"].append((name, p))
        elif name.startswith("model.vision_model."):
            groups["vision"].append((name, p))
        elif name.startswith("model.high_res_vision_model."):
            groups["high_res_vision"].append((name, p))
        elif name.startswith(("model.language_model.", "lm_head.")):
            groups["llm"].append((name, p))
        else:
            raise ValueError(f"parameter {name} belongs to no stage group; update trainer.model.parameter_groups")
    return groups


def set_trainable(model: VLModel, trainable: list[str]) -> list[torch.nn.Parameter]:
    """Freeze everything but the named groups; return the parameters that train."""
    out = []
    for group, params in parameter_groups(model).items():
        for _, p in params:
            p.requires_grad_(group in trainable)
            if group in trainable:
                out.append(p)
    return out


def llm_parameter_count(model: VLModel) -> int:
    """Non-embedding LLM parameters plus the LM head (the N of 6·N·tokens in MFU)."""
    lm = model.model.language_model
    return sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n) + model.lm_head.weight.numel()


def load_trained(path: str | Path, attn_implementation: str = "sdpa", packing: bool = False,
                 device: torch.device = torch.device("cpu")) -> VLModel:
    """A DeepseekVL(Hybrid) checkpoint directory (ours or a released one), whichever of the two classes it is."""
    cfg = AutoConfig.from_pretrained(str(path))
    hybrid = isinstance(cfg, DeepseekVLHybridConfig)
    cls = DeepseekVLHybridForConditionalGeneration if hybrid else DeepseekVLForConditionalGeneration
    return cls.from_pretrained(str(path), dtype=torch.float32,
                               attn_implementation=attention(cfg, attn_implementation, packing, device))


def has_processor(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "processor_config.json").exists()


def has_tokenizer(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "tokenizer_config.json").exists()


def load_processor(path: str | Path) -> ProcessorMixin:
    """A bundle's own processor: its image processor settings (sizes, mean/std), tokenizer and chat template."""
    return AutoProcessor.from_pretrained(str(path))


def new_processor(config, tokenizer: PreTrainedTokenizerBase, chat: ChatFormat) -> ProcessorMixin:
    """The processor of a model without one: default image processing for its sizes, the chat format's template."""
    cls = DeepseekVLHybridProcessor if isinstance(config, DeepseekVLHybridConfig) else DeepseekVLProcessor
    return cls(image_processor=image_processor(config), tokenizer=tokenizer,
               chat_template=chat.template(tokenizer.bos_token), num_image_tokens=image_token_count(config))


def save_bundle(model: VLModel, processor: ProcessorMixin, chat: ChatFormat, out: str | Path,
                state_dict: dict | None = None) -> None:
    """`final/`: the model and its processor, generation stopping where the chat format closes an answer."""
    tok = processor.tokenizer
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t) for t in chat.stops]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(str(out), state_dict=state_dict)
    processor.save_pretrained(str(out))
