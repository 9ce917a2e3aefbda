"""A tiny byte-level BPE tokenizer trained locally in milliseconds (no hub), for the tiny test models.

Byte-level BPE encodes any text (every byte is in the base alphabet), so answers, numbers and the
``# Answer`` format round-trip exactly. ``"\\n\\n"`` (the step separator of the M-STaR output format) is one
*non-special* added token: it survives ``decode(skip_special_tokens=True)`` and a step boundary is always
a token boundary, which the PRM step tags rely on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

EOS_TOKEN = "<|endoftext|>"
STEP_TOKEN = "\n\n"

_WORDS = (
    "the a an of to in is are was be and or not what which how many much find compute area length angle "
    "triangle circle square rectangle side radius value number total sum difference product answer step "
    "image shows figure chart bar table price cost apples books students degrees percent ratio equal "
    "therefore so then first second next finally we have let x y z plus minus times divided by question "
    "choose option correct following given height width point line parallel perpendicular"
).split()


def tiny_corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Synthetic math-reasoning text in the M-STaR output format (steps separated by a blank line, ending
    with ``# Answer\\n\\n<answer>``), plus word salad and all printable ASCII, so BPE learns useful merges."""
    rng = random.Random(seed)
    lines = ["".join(chr(c) for c in range(32, 127))]
    for _ in range(n_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        op, val = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        steps = [f"Step 1: {words.capitalize()}.", f"Step 2: {a} {op} {b} = {val}."]
        lines.append(STEP_TOKEN.join(steps + [f"# Answer{STEP_TOKEN}{val}"]))
        lines.append(f"What is {a} {op} {b}? Choices: (A) {val} (B) {val + 1} (C) {rng.randint(0, 99)}")
    return lines


def train_tiny_tokenizer(
    special_tokens: Sequence[str] = (),
    vocab_size: int = 1024,
    corpus: Iterable[str] | None = None,
    eos_token: str = EOS_TOKEN,
):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        special_tokens: extra special tokens (image placeholders, chat markers); they get the ids right
            after ``eos_token`` (id 0), in this order.
        vocab_size: target size including special tokens; the result can be smaller when the corpus has
            too few merges (``len(tokenizer)`` is the real size: size the model's embedding by it).
        corpus: training lines; defaults to :func:`tiny_corpus`.
        eos_token: end-of-sequence token, also used as the padding token.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``; ``"\\n\\n"`` is a non-special added token.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [eos_token] + [t for t in special_tokens if t != eos_token]
    if len(set(specials)) != len(specials):
        raise ValueError(f"train_tiny_tokenizer: duplicate special tokens in {specials}")
    if vocab_size < 256 + len(specials) + 1:
        raise ValueError(f"train_tiny_tokenizer: vocab_size={vocab_size} is below the 256 byte tokens + "
                         f"{len(specials) + 1} special/added tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # one slot left for the "\n\n" added token
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) if corpus is not None else tiny_corpus(), trainer)
    tok.add_tokens([AddedToken(STEP_TOKEN, special=False, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=eos_token)
