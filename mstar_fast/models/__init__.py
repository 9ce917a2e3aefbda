"""Policies and PRMs as ``transformers`` models: loading, prompt formatting, tiny-model factory."""

from mstar_fast.models.loading import load_policy, load_processor
from mstar_fast.models.prompting import (
    PLAIN_TEMPLATE,
    PromptError,
    build_messages,
    encode_prompt,
    format_prompt,
    get_tokenizer,
    load_images,
)
from mstar_fast.models.tiny import ARCHS, TinySpec, make_tiny_vlm, read_tiny_spec
from mstar_fast.models.tokenizer import train_tiny_tokenizer

__all__ = [
    "ARCHS",
    "PLAIN_TEMPLATE",
    "PromptError",
    "TinySpec",
    "build_messages",
    "encode_prompt",
    "format_prompt",
    "get_tokenizer",
    "load_images",
    "load_policy",
    "load_processor",
    "make_tiny_vlm",
    "read_tiny_spec",
    "train_tiny_tokenizer",
]
