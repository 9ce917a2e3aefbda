"""Turn a :class:`~mstar_fast.data.records.Prompt` into model inputs.

The chat template is used when the processor (or tokenizer) has one, so each model family sees its own
format; otherwise a plain template. One user turn holds one image slot per image, then the text.
Failures that belong to one prompt (an image that cannot be opened, images for a text-only model) raise
:class:`PromptError`, which the rollout engine turns into a per-prompt error sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mstar_fast.data.images import ImageError, load_image
from mstar_fast.data.records import Prompt

# Used when neither processor nor tokenizer has a chat template; {images} is one image token per image.
PLAIN_TEMPLATE = "{images}{question}\n"
# A Prompt whose meta holds a string under this key is continued from that partial response: the text is
# appended after the generation prompt (Monte-Carlo step labels sample completions of response prefixes).
RESPONSE_PREFIX_KEY = "response_prefix"


class PromptError(ValueError):
    """A problem with one prompt (unreadable image, prompt longer than the context, ...)."""


def get_tokenizer(processor: Any) -> Any:
    """The tokenizer inside a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", None) or processor


def is_multimodal_processor(processor: Any) -> bool:
    """True when ``processor`` can take images (has an image processor)."""
    return getattr(processor, "image_processor", None) is not None


def load_images(images: Sequence[Any]) -> list[Any]:
    """Open image paths, bytes or PIL images as RGB PIL images (:func:`mstar_fast.data.load_image`).

    Raises:
        PromptError: naming the image that cannot be opened.
    """
    out = []
    for i, im in enumerate(images):
        try:
            out.append(load_image(im))
        except ImageError as e:
            raise PromptError(f"cannot open image {i} ({im}): {e}") from e
    return out


def question_text(prompt: Prompt, instruction: str | None = None, include_choices: bool = False) -> str:
    """The user text: question, then the options as ``(A) ...`` lines when ``include_choices`` (off by
    default: MathV360K-style questions already list them), then ``instruction``."""
    text = prompt.question
    if include_choices and prompt.choices:
        text += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(prompt.choices))
    if instruction:
        text += "\n" + instruction
    return text


def build_messages(prompt: Prompt, instruction: str | None = None, include_choices: bool = False) -> list[dict]:
    """One user turn in the ``transformers`` chat format: an image slot per image, then the text."""
    content: list[dict] = [{"type": "image"} for _ in prompt.images]
    content.append({"type": "text", "text": question_text(prompt, instruction, include_choices)})
    return [{"role": "user", "content": content}]


def _chat_template(processor: Any) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(get_tokenizer(processor), "chat_template", None)


def format_prompt(processor: Any, prompt: Prompt, instruction: str | None = None, include_choices: bool = False,
                  template: str = PLAIN_TEMPLATE, processor_prompt_end: str = "") -> tuple[str, bool]:
    """Prompt text ready for the processor, with the generation prompt (assistant header) appended, then
    ``prompt.meta[RESPONSE_PREFIX_KEY]`` when set (a partial response the model continues).

    ``processor_prompt_end``: text the processor appends to every prompt by itself (PaliGemma's ``"\n"``,
    see :class:`mstar_fast.models.families.FamilyCapabilities`); the formatted turn does not end with it too.

    Returns:
        ``(text, templated)``; ``templated`` is True when a chat template produced it (its special
        tokens are already in the text, so the tokenizer must not add BOS/EOS again).

    Raises:
        PromptError: ``meta[RESPONSE_PREFIX_KEY]`` is set but is not a string.
    """
    text, templated = _format_turn(processor, prompt, instruction, include_choices, template)
    if processor_prompt_end:
        text = text.removesuffix(processor_prompt_end)
    prefix = (prompt.meta or {}).get(RESPONSE_PREFIX_KEY)
    if prefix is not None:
        if not isinstance(prefix, str):
            raise PromptError(f"prompt {prompt.id!r}: meta[{RESPONSE_PREFIX_KEY!r}] must be a str, "
                              f"got {type(prefix).__name__}")
        text += prefix
    return text, templated


def _format_turn(processor: Any, prompt: Prompt, instruction: str | None, include_choices: bool,
                 template: str) -> tuple[str, bool]:
    """The user turn and the generation prompt (see :func:`format_prompt`)."""
    if _chat_template(processor):
        messages = build_messages(prompt, instruction, include_choices)
        if is_multimodal_processor(processor) or not prompt.images:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
        # A tokenizer's template may not understand image parts: send the text alone.
        messages = [{"role": "user", "content": messages[0]["content"][-1]["text"]}]
        return get_tokenizer(processor).apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    image_token = getattr(processor, "image_token", None) or ""
    images = image_token * len(prompt.images)
    return template.format(images=images, question=question_text(prompt, instruction, include_choices)), False


def encode_prompt(processor: Any, prompt: Prompt, instruction: str | None = None, include_choices: bool = False,
                  template: str = PLAIN_TEMPLATE, processor_prompt_end: str = "") -> dict[str, Any]:
    """Processor outputs for one prompt (batch of 1): ``input_ids [1, P]``, ``attention_mask [1, P]`` and
    the model's image inputs (``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``, ...).
    ``processor_prompt_end``: see :func:`format_prompt`.

    Raises:
        PromptError: an image cannot be opened, or the prompt has images but the model takes none.
    """
    if prompt.images and not is_multimodal_processor(processor):
        raise PromptError(f"prompt {prompt.id!r} has {len(prompt.images)} image(s) but the model is text-only")
    text, templated = format_prompt(processor, prompt, instruction, include_choices, template, processor_prompt_end)
    if prompt.images:
        images = load_images(prompt.images)
        enc = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=not templated)
    elif is_multimodal_processor(processor):
        enc = processor(text=[text], return_tensors="pt", add_special_tokens=not templated)
    else:
        enc = processor([text], return_tensors="pt", add_special_tokens=not templated)
    return dict(enc)
