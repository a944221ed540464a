"""Trainer configuration: model presets (plain sub-config values for transformers' DeepSeek-VL classes), the
per-stage schedule (one YAML file per stage) and the run settings that hold for every stage.

A preset only shrinks the sub-configs of `DeepseekVLHybridConfig` (SigLIP, SAM, LLaMA) or, for the SigLIP-only
1.3B shape, of `DeepseekVLConfig`; the model structure is transformers' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcorpus import storage
from vlcorpus.config import ConfigError, load_config

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
    # DeepSeek-VL-1.3B's shape: SigLIP-L/16 at 384 only, DeepSeek-LLM-1.3B (LLaMA layout, vocab 102400).
    "deepseek-vl-1.3b": Preset(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=384, patch_size=16),
        llm=dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, max_position_embeddings=16384, rms_norm_eps=1e-6),
    ),
}


ATTENTION = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager")
SHAPE_PARTS = ("vision", "high_res", "llm")


@dataclass
class ModelConfig:
    """Which preset, and local pretrained directories to start from (none: random init).

    `pretrained` is a whole DeepseekVL(Hybrid) checkpoint (a released one, e.g. a converted deepseek-vl-1.3b-base, or a
    stage's `final/`); the three component paths load one tower each (a SiglipVisionModel, a SamVisionModel, a
    LlamaModel/ForCausalLM dir). `shape` sets sub-config values on top of the preset, e.g. `{llm: {num_hidden_layers:
    2}}` for the real geometry at a reduced depth.
    """

    preset: str = "tiny"
    pretrained: str | None = None
    vision_pretrained: str | None = None
    high_res_pretrained: str | None = None
    llm_pretrained: str | None = None
    attn_implementation: str = "sdpa"
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
        s = lambda n: max(1, math.ceil(n * scale)) if n else 0  # noqa: E731
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

    mix: str = ""  # mixture folder: <mix>/<stage>/mixture.json + <category>/*.tar
    out: str = ""  # run folder: <out>/<stage>/ (checkpoints, metrics, final bundle)
    tokenizer: str | None = None  # a local tokenizer; a pretrained checkpoint with its own tokenizer needs none
    model: ModelConfig = field(default_factory=ModelConfig)
    schedules: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3"])  # names or YAML paths
    stage_overrides: list[str] = field(default_factory=list)  # key=value: every stage; NAME:key=value: stage NAME
    scale: float = 1.0  # multiplies every stage's steps, warm-ups and batch size
    max_seq_len: int | None = None  # cap on every stage's seq_len (compact runs)
    micro_batch_size: int | None = None  # rows per forward; batch_size / micro = gradient accumulation steps
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    activation_checkpointing: bool = False
    num_workers: int = 2  # DataLoader workers per category stream
    ckpt_interval: int = 100
    keep_checkpoints: int = 2  # the last K checkpoints are kept, older ones removed
    eval_dir: str | None = None  # held-out corpus/mixture folder: evaluation after each stage (and every eval_interval)
    eval_items: int = 64
    eval_interval: int = 0  # evaluate every N steps into the metrics and curves (0: only after each stage)
    stop_after: int | None = None  # stop the stage after this many steps (a planned interruption)
    workers: int = 1  # Ray Train workers (DDP); 1 trains in this process
    fsdp: bool = False  # with several workers: shard parameters, gradients and optimizer state (FSDP2), not DDP

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} must be auto, cpu or cuda")
        if self.keep_checkpoints < 1 or self.ckpt_interval < 1 or self.workers < 1 or self.eval_interval < 0:
            raise ConfigError("keep_checkpoints, ckpt_interval and workers must be >= 1, eval_interval >= 0")
        if not self.schedules:
            raise ConfigError("schedules: name at least one stage (stage1, stage2, stage3 or a YAML file)")

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
