"""Trainer configuration: model presets (plain sub-config values for transformers' DeepSeek-VL classes), the
per-stage schedule (one YAML file per stage) and the run settings that hold for every stage.

A preset only shrinks the sub-configs of `DeepseekVLHybridConfig` (SigLIP, SAM, LLaMA) or, for the SigLIP-only
1.3B shape, of `DeepseekVLConfig`; the model structure is transformers' own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.config import ConfigError, load_config
from vlcorpus.sample import CATEGORIES, PRETRAIN_CATEGORIES, TEXT_ONLY_CATEGORIES

SCHEDULE_DIR = Path(__file__).parent / "schedules"

# Parameter groups a stage can train, named after the parts of DeepSeek-VL (paper §3.2).
PARAM_GROUPS = ("aligner", "vision", "high_res_vision", "llm")


@dataclass(frozen=True)
class Preset:
    """Sub-config values of one model size. `high_res` None means the SigLIP-only DeepseekVL model."""

    vision: dict
    llm: dict
    high_res: dict | None = None


PRESETS: dict[str, Preset] = {
    # CPU tests and demo: every part present, a few layers, small images (SigLIP 64 px -> 4x4 = 16 tokens,
    # SAM 128 px -> 8x8 -> interpolated 16x16 -> two stride-2 convs -> 4x4).
    "tiny": Preset(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    image_size=64, patch_size=16),
        high_res=dict(hidden_size=64, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                      mlp_dim=128, image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1]),
        llm=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096),
    ),
    # The GPU workhorse: a ~140M-parameter LLaMA, SigLIP-B/16 at 384 (576 tokens) and SAM ViT-B at 1024.
    "small": Preset(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=384, patch_size=16),
        high_res=dict(hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12,
                      mlp_dim=3072, image_size=1024, patch_size=16, window_size=14, global_attn_indexes=[2, 5, 8, 11]),
        llm=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
                 num_key_value_heads=12, max_position_embeddings=8192),  # 4096 text + 576 image tokens fit
    ),
    # DeepSeek-VL-1.3B's shape: SigLIP-L/16 at 384 only, DeepSeek-LLM-1.3B (LLaMA layout, vocab 102400, untied LM
    # head: `build_config`), RoPE theta 10000 and RMSNorm eps 1e-6 written out rather than left to defaults.
    "deepseek-vl-1.3b": Preset(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=384, patch_size=16),
        llm=dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, max_position_embeddings=16384, rms_norm_eps=1e-6, vocab_size=102400,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, hidden_act="silu"),
    ),
}


ATTENTION = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager")
DEVICES = ("auto", "cpu", "cuda")
VOCAB_SIZE = 32000  # a tokenizer trained on the corpus (`vlcorpus train-tokenizer`, `vlcorpus run`): LLaMA's size
SHAPE_PARTS = ("vision", "high_res", "llm")


def setting(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None, flag: str | None = None,
            choices: Iterable[str] | None = None) -> Any:
    """A run setting with what its `vlcorpus train` flag says (`trainer.cli` derives the flags from these): its help,
    and where they differ from the field's name and type, its flag name and choices."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """Which preset, and local pretrained directories to start from (none: random init).

    `pretrained` is a whole DeepseekVL(Hybrid) checkpoint (a released one, e.g. a converted deepseek-vl-1.3b-base, or a
    stage's `final/`); the three component paths load one tower each (a SiglipVisionModel, a SamVisionModel, a
    LlamaModel/ForCausalLM dir). `shape` sets sub-config values on top of the preset, e.g. `{llm: {num_hidden_layers:
    2}}` for the real geometry at a reduced depth.
    """

    preset: str = setting("tiny", help="model size", choices=PRESETS)
    pretrained: str | None = setting(None, help="DeepseekVL(Hybrid) bundle (local folder or s3:// / gs:// prefix) to start the first stage from")
    vision_pretrained: str | None = setting(None, help="local SigLIP vision model directory")
    high_res_pretrained: str | None = setting(None, help="local SAM vision model directory")
    llm_pretrained: str | None = setting(None, help="local LLaMA-layout language model directory")
    attn_implementation: str = setting("sdpa", help="attention kernel", flag="--attn", choices=ATTENTION)
    shape: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset: {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.high_res_pretrained and PRESETS[self.preset].high_res is None:
            raise ConfigError(f"model.high_res_pretrained: preset {self.preset} is SigLIP-only (no SAM tower)")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(f"model.attn_implementation: {self.attn_implementation!r} is not one of {', '.join(ATTENTION)}")
        bad = sorted(set(self.shape) - set(SHAPE_PARTS))
        if bad or ("high_res" in self.shape and PRESETS[self.preset].high_res is None):
            raise ConfigError(f"model.shape: {bad or ['high_res']} not a part of preset {self.preset}; "
                              f"parts: {', '.join(p for p in SHAPE_PARTS if p != 'high_res' or PRESETS[self.preset].high_res)}")


@dataclass
class StageConfig:
    """One training stage (paper Table 4). Step counts and batch size are the paper's; `RunConfig.scale` shrinks them."""

    name: str
    mix_stage: str  # the mixture folder this stage reads: <mix>/<mix_stage>/
    trainable: list[str]
    lr: float
    lr_schedule: str  # cosine | step
    warmup_steps: int
    steps: int
    batch_size: int  # sequences per optimizer step (packed rows when packing)
    seq_len: int
    packing: bool = False
    min_lr_ratio: float = 0.1  # cosine floor / final step factor, as a fraction of lr
    step_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])  # fractions of steps (DeepSeek-LLM)
    step_factor: float = 0.316  # LR multiplier at each milestone
    language_share: float | None = None  # None: the mixture's own share of text-only categories
    modality_warmup_steps: int = 0  # language share goes 1.0 -> language_share over these steps
    grouped: bool = True  # each optimizer step one modality (False: mixed batches, for the benchmark)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        bad = sorted(set(self.trainable) - set(PARAM_GROUPS))
        if bad or not self.trainable:
            raise ConfigError(f"{self.name}.trainable: {bad or 'empty'}; choose from {', '.join(PARAM_GROUPS)}")
        if self.lr_schedule not in ("cosine", "step"):
            raise ConfigError(f"{self.name}.lr_schedule: {self.lr_schedule!r} must be cosine or step")
        if self.language_share is not None and not 0.0 <= self.language_share <= 1.0:
            raise ConfigError(f"{self.name}.language_share: {self.language_share} must be within [0, 1]")
        if self.steps <= 0 or self.batch_size <= 0 or self.seq_len <= 0:
            raise ConfigError(f"{self.name}: steps, batch_size and seq_len must be positive")

    def scaled(self, scale: float, max_seq_len: int | None = None) -> StageConfig:
        """Steps, warm-ups and batch size times `scale` (at least 1), as one knob for compact runs."""
        def s(n: int) -> int:
            return max(1, math.ceil(n * scale)) if n else 0

        out = StageConfig(**{**self.__dict__})
        out.steps, out.warmup_steps, out.batch_size = s(self.steps), s(self.warmup_steps), s(self.batch_size)
        out.modality_warmup_steps = s(self.modality_warmup_steps)
        if max_seq_len is not None:
            out.seq_len = min(self.seq_len, max_seq_len)
        return out


@dataclass
class RunConfig:
    """Settings for the whole run (every stage): `vlcorpus train --config run.yaml` (flags override it) and the
    `train:` section of `vlcorpus run`'s config, loaded with the project's strict loader (`vlcorpus.config`)."""

    mix: str = setting("", help="mixture folder or s3:// / gs:// prefix: <mix>/<stage>/mixture.json + <category>/*.tar")
    out: str = setting("", help="run folder or s3:// / gs:// prefix: <out>/<stage>/ (checkpoints, metrics, final bundle)")
    tokenizer: str | None = setting(None, help="local tokenizer directory (a --pretrained bundle has its own)")
    model: ModelConfig = field(default_factory=ModelConfig)
    schedules: list[str] = setting(factory=lambda: ["stage1", "stage2", "stage3"], flag="--schedule",
                                   help="stage name (stage1..3) or stage YAML; repeat for several")
    stage_overrides: list[str] = setting(factory=list, flag="--stage-set",
                                         help="override a stage setting: key=value (every stage) or NAME:key=value "
                                              "(stage NAME only); repeat for several")
    scale: float = setting(1.0, help="multiplies every stage's steps, warm-ups and batch size")
    max_seq_len: int | None = setting(None, help="cap on every stage's seq_len, in text tokens (compact runs)")
    micro_batch_size: int | None = setting(None, help="rows per forward pass; batch_size / micro_batch_size = "
                                                      "gradient accumulation steps")
    seed: int = setting(0, help="seed of the model's init and the data order")
    device: str = setting("auto", help="where to train", choices=DEVICES)
    compile: bool = setting(False, help="torch.compile the language model")
    activation_checkpointing: bool = setting(False, help="recompute activations in the backward pass")
    num_workers: int = setting(2, help="DataLoader workers per category stream")
    ckpt_interval: int = setting(100, help="steps between checkpoints")
    keep_checkpoints: int = setting(2, help="how many checkpoints to keep (the newest)")
    eval_dir: str | None = setting(None, flag="--eval", help="held-out corpus/mixture folder: evaluate after each "
                                                             "stage (and every eval_interval steps)")
    eval_items: int = setting(64, help="evaluation items per category")
    eval_categories: list[str] = setting(factory=list, flag="--eval-category",
                                         help="a multimodal category to evaluate; repeat for several (default: every "
                                              "held-out one that gives items, the others left out with why)")
    eval_interval: int = setting(0, help="also evaluate every N steps into the metrics and curves (0: only after "
                                         "each stage)")
    stop_after: int | None = setting(None, help="stop each stage after this many steps (resume later)")
    workers: int = setting(1, help="Ray Train workers (DDP); 1 trains in this process")
    fsdp: bool = setting(False, help="with several workers: shard parameters, gradients and optimizer state "
                                     "(FSDP2), not DDP")

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale must be positive")
        if self.device not in DEVICES:
            raise ConfigError(f"device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.keep_checkpoints < 1 or self.ckpt_interval < 1 or self.workers < 1 or self.eval_interval < 0:
            raise ConfigError("keep_checkpoints, ckpt_interval and workers must be >= 1, eval_interval >= 0")
        if not self.schedules:
            raise ConfigError("schedules: name at least one stage (stage1, stage2, stage3 or a YAML file)")
        wrong = [c for c in self.eval_categories or [] if c not in CATEGORIES or c in TEXT_ONLY_CATEGORIES or c.startswith("sft_")]
        if wrong:
            raise ConfigError(f"eval_categories: {', '.join(wrong)} not multimodal pretraining categories "
                              f"({', '.join(c for c in PRETRAIN_CATEGORIES if c not in TEXT_ONLY_CATEGORIES)})")

    def check_paths(self) -> None:
        """What a run needs before it starts (the chain fills these in, so they are not required at load time)."""
        missing = [k for k in ("mix", "out") if not getattr(self, k)]
        if not self.tokenizer and not self.model.pretrained:
            missing.append("tokenizer (or model.pretrained with its own tokenizer)")
        if missing:
            raise ConfigError(f"train: set {', '.join(missing)}")
        for what, path in (("mix", self.mix), ("out", self.out), ("model.pretrained", self.model.pretrained)):
            if path and storage.is_remote(storage.location(path)):
                storage.check_store(path, inputs=what != "out", what=what)


def schedule_path(name: str) -> Path:
    """`stage2` -> trainer/schedules/stage2.yaml; anything else is a path to a stage YAML file."""
    return SCHEDULE_DIR / f"{name}.yaml" if (SCHEDULE_DIR / f"{name}.yaml").exists() else Path(name)


def load_stage(path: str | Path, overrides: list[str] | None = None) -> StageConfig:
    return load_config(StageConfig, schedule_path(str(path)), overrides)


def split_override(override: str) -> tuple[str | None, str]:
    """`key=value` -> (None, it): every stage; `NAME:key=value` -> (NAME, `key=value`): stage NAME only."""
    target, sep, rest = override.partition(":")
    return (target, rest) if sep and "=" not in target else (None, override)


def load_stages(run: RunConfig) -> list[StageConfig]:
    names = {p: load_stage(p).name for p in run.schedules}
    parsed = [split_override(o) for o in run.stage_overrides]
    for o, (stage, _) in zip(run.stage_overrides, parsed):
        if stage is not None and stage not in names.values():
            raise ConfigError(f"stage override {o!r}: no stage is named {stage!r} (the stages: {', '.join(names.values())})")
    return [load_stage(p, [kv for stage, kv in parsed if stage in (None, names[p])]).scaled(run.scale, run.max_seq_len)
            for p in run.schedules]
