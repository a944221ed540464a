"""`vlcorpus train-tokenizer INPUT --out DIR`: a byte-level BPE trained on the text of a corpus or mixture, saved
as a Hugging Face tokenizer directory with the special tokens the trainer needs.

The trainer loads any local HF tokenizer directory (e.g. DeepSeek-VL's) through `load_tokenizer`, which adds the
special tokens that are missing, so a released tokenizer and ours are used the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlcorpus.shards import read_samples, shard_paths

COMMAND = ("train-tokenizer",)
HELP = "train a byte-level BPE tokenizer on the text of a corpus or mixture folder"

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
IMAGE = "<image_placeholder>"  # DeepSeek-VL's name for the image slot
ROLES = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
END = "<|end|>"  # closes every conversation turn
EXTRA_SPECIALS = [IMAGE, *ROLES.values(), END]


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    image: int
    end: int
    roles: dict[str, int]


def special_ids(tok: PreTrainedTokenizerBase) -> SpecialIds:
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    return SpecialIds(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id, image=ids(IMAGE),
                      end=ids(END), roles={r: ids(t) for r, t in ROLES.items()})


def corpus_texts(folder: str | Path, max_samples: int | None = None) -> Iterator[str]:
    """Every text segment of every sample under `folder` (a corpus, a mixture, or one category)."""
    for i, sample in enumerate(read_samples(shard_paths(folder))):
        if max_samples is not None and i >= max_samples:
            return
        for seg in sample.segments:
            if "text" in seg:
                yield seg["text"]


def train_tokenizer(texts: Iterator[str], vocab_size: int, out: str | Path, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: every byte is in the alphabet, so no text is out of vocabulary)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD, *EXTRA_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   extra_special_tokens=EXTRA_SPECIALS)
    fast.save_pretrained(str(out))
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A local tokenizer directory, with our special tokens added where it lacks them."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found (train one with `vlcorpus train-tokenizer`)")
    tok = AutoTokenizer.from_pretrained(str(path))
    missing = [t for t in EXTRA_SPECIALS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    if tok.bos_token is None:
        tok.add_special_tokens({"bos_token": BOS})
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="corpus or mixture folder (every *.tar under it is read)")
    p.add_argument("--out", required=True, help="output tokenizer directory")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=None, help="read at most this many samples")


def main(args: argparse.Namespace) -> int:
    tok = train_tokenizer(corpus_texts(args.input, args.max_samples), args.vocab_size, args.out, args.min_frequency)
    print(f"tokenizer with {len(tok)} tokens -> {args.out}")
    return 0
