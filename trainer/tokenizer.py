"""`vlcorpus train-tokenizer INPUT --out DIR`: a byte-level BPE trained on the text of a corpus or mixture, saved
as a Hugging Face tokenizer directory with the special tokens the trainer needs; and the two chat formats a
conversation is trained in.

A run from scratch adds our special tokens to whatever tokenizer it is given (`load_tokenizer(path, scratch=True)`)
and trains conversations in our format (`OURS`: `<|user|>`, `<|assistant|>`, `<|end|>`). A run from a released
DeepSeek-VL checkpoint adds nothing (new rows of the embedding would start untrained) and keeps the checkpoint's own
format (`DEEPSEEK_VL`: `User: ` / `Assistant: ` in plain text, `\\n\\n` after a user turn, `<eos>` after an answer).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from trainer.config import VOCAB_SIZE
from vlcorpus.config import ConfigError
from vlcorpus.shards import read_samples, shard_paths

COMMAND = ("train-tokenizer",)
HELP = "train a byte-level BPE tokenizer on the text of a corpus or mixture folder"

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
IMAGE = "<image_placeholder>"  # DeepSeek-VL's name for the image slot (the tokenizer's `image_token`)
ROLES = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
END = "<|end|>"  # closes every conversation turn
EXTRA_SPECIALS = [IMAGE, *ROLES.values(), END]


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    image: int


def special_ids(tok: PreTrainedTokenizerBase) -> SpecialIds:
    image = tok.convert_tokens_to_ids(getattr(tok, "image_token", None) or IMAGE)
    return SpecialIds(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id, image=image)


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes a sequence: a preamble, a header that opens each role's turn, what closes it.

    Strings that are one special token of the tokenizer (`<|user|>`, `<eos>`) become that token; the rest is text.
    Content is rendered as DeepSeek-VL's template does: a turn's texts joined by one space, the first stripped on the
    left and the last on the right, each image as its placeholders. `prompt` opens the answer at inference.
    """

    name: str
    preamble: str
    headers: dict[str, str]
    closers: dict[str, str]
    prompt: str
    final: str = ""  # after a conversation that ends with an answer (ours: <eos> after <|end|>)
    stops: tuple[str, ...] = field(default=())  # generation stops at any of these

    def template(self, bos: str) -> str:
        """The Jinja chat template that renders a prompt exactly as the trainer does (saved in the bundle). Literal
        text goes through expressions: a newline right after a block tag would be trimmed."""
        def lit(text: str) -> str:
            return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""

        def by_role(parts: dict[str, str]) -> str:
            return "".join(f"{{% {'if' if i == 0 else 'elif'} message['role'] == '{role}' %}}{lit(text)}"
                           for i, (role, text) in enumerate(parts.items())) + "{% endif %}"

        return (lit(bos) + lit(self.preamble) + "{% for message in messages %}" + by_role(self.headers) +
                "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
                "{% for c in message['content'] %}{% if c['type'] == 'image' %}" + lit(IMAGE) +
                "{% else %}{% set t = c['text'] %}{% if loop.first %}{% set t = t.lstrip() %}{% endif %}"
                "{% if loop.last %}{% set t = t.rstrip() %}{% endif %}"
                "{% if not loop.first and message['content'][loop.index0 - 1]['type'] == 'text' %} {% endif %}{{ t }}"
                "{% endif %}{% endfor %}{% endif %}" + by_role(self.closers) +
                "{% endfor %}{% if add_generation_prompt %}" + lit(self.prompt) + "{% endif %}")


OURS = ChatFormat(name="vlcorpus", preamble="", headers=dict(ROLES), closers={r: END for r in ROLES},
                  prompt=ROLES["assistant"], final=EOS, stops=(END, EOS))


def deepseek_vl_format(eos: str) -> ChatFormat:
    """DeepSeek-VL's own chat format (its conversation template `deepseek`, as transformers' conversion writes it)."""
    return ChatFormat(
        name="deepseek-vl",
        preamble=("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.\n\n"),
        headers={"user": "User: ", "assistant": "Assistant: ", "system": "System: "},
        closers={"user": "\n\n", "assistant": eos, "system": eos},
        prompt="Assistant:", stops=(eos,))


def chat_format(tok: PreTrainedTokenizerBase) -> ChatFormat:
    """Ours where the tokenizer has our role tokens (a run from scratch, or a stage of one), else DeepSeek-VL's."""
    return OURS if ROLES["assistant"] in tok.get_vocab() else deepseek_vl_format(tok.eos_token)


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
                                   extra_special_tokens={"image_token": IMAGE})
    fast.save_pretrained(str(out))
    return fast


def load_tokenizer(path: str | Path, scratch: bool = True) -> PreTrainedTokenizerBase:
    """A local tokenizer directory. From scratch our special tokens are added where it lacks them; for a pretrained
    checkpoint nothing is added, and it must already name its image token."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found (train one with `vlcorpus train-tokenizer`)")
    tok = AutoTokenizer.from_pretrained(str(path))
    if scratch and getattr(tok, "image_token", None) is None:  # named at load: transformers 5 has no setter that saves
        tok = AutoTokenizer.from_pretrained(str(path), extra_special_tokens={"image_token": IMAGE})
    if not scratch:
        if (getattr(tok, "image_token", None) or IMAGE) not in tok.get_vocab():
            raise ConfigError(f"{path}: the pretrained tokenizer has no image token ({IMAGE}); it is not a DeepSeek-VL one")
        return tok
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
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="vocabulary size (default %(default)s)")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=None, help="read at most this many samples")


def main(args: argparse.Namespace) -> int:
    tok = train_tokenizer(corpus_texts(args.input, args.max_samples), args.vocab_size, args.out, args.min_frequency)
    print(f"tokenizer with {len(tok)} tokens -> {args.out}")
    return 0
