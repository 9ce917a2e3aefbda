"""Policies and PRMs as ``transformers`` models: loading and prompt formatting (the
demo's tiny-model factory is :mod:`mstar_fast.demo.tiny`)."""

from mstar_fast.models.families import (
    FamilyCapabilities,
    UnsupportedFamilyError,
    family_capabilities,
)
from mstar_fast.models.loading import load_policy, load_processor, resolve_device
from mstar_fast.models.prompting import (
    PLAIN_TEMPLATE,
    PromptError,
    build_messages,
    encode_prompt,
    format_prompt,
    get_tokenizer,
    load_images,
)

__all__ = [
    "PLAIN_TEMPLATE",
    "FamilyCapabilities",
    "PromptError",
    "UnsupportedFamilyError",
    "build_messages",
    "encode_prompt",
    "family_capabilities",
    "format_prompt",
    "get_tokenizer",
    "load_images",
    "load_policy",
    "load_processor",
    "resolve_device",
]
