"""The demo's SentencePiece vocabulary: what τ reads in `make demo` (768 pieces, byte fallback).

FIAT's τ is a Flan-T5, whose SentencePiece vocabulary turns "so the answer is yes." into five
pieces. The demo cannot download one, and reading bytes made its tiny τ learn far too slowly:
a 280-byte input where the verdict is three bytes at the end (docs/fiat.md has the numbers).
So the demo has its own small vocabulary, trained once by `python -m fiat_tasks.demo_vocab`
on text a tokenizer may see: the demo's training questions, the Iβ exemplars' English
reasoning, Iτ, and the generic instruction mixture of the demo's base. It is committed as
`tasks/demo_spm.model`; a test rebuilds it and checks it is byte-identical (the build is
deterministic: one thread, input in order). Byte fallback keeps any other text representable.

Ids follow T5: 0 pad, 1 EOS, 2 unknown.
"""

from __future__ import annotations

import io
import pathlib
import sys

import seqio
import yaml

VOCAB_FILE = pathlib.Path(__file__).resolve().with_name("demo_spm.model")
VOCAB_SIZE = 768
_GIN_FIAT = pathlib.Path(__file__).resolve().parent.parent / "gin" / "fiat"


def vocabulary() -> seqio.SentencePieceVocabulary:
    return seqio.SentencePieceVocabulary(str(VOCAB_FILE))


def corpus() -> list[str]:
    """The tokenizer's training text, one line per entry, in a fixed order."""
    from fiat_tasks import demo, demo_instructions

    lines = [e.question for e in demo.generate_split("train")]
    for name in ("ibeta", "itau"):
        data = yaml.safe_load((_GIN_FIAT / name / "fiat_demo.yaml").read_text(encoding="utf-8"))
        lines += _strings(data)
    for skill in demo_instructions.SKILLS:
        for example in demo_instructions.generate(skill, "train")[:1000]:
            lines += example.inputs.split("\n")
            lines.append(example.targets)
    return [line for line in lines if line.strip()]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return value.splitlines()
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def build() -> bytes:
    """Trains the vocabulary on `corpus()`; the same bytes on every run."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return model.getvalue()


def main() -> int:
    VOCAB_FILE.write_bytes(build())
    print(f"wrote {VOCAB_FILE} ({VOCAB_SIZE} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
