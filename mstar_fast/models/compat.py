"""Processors on machines without torchvision.

Some ``transformers`` processors (Qwen2-VL, Qwen2.5-VL, SmolVLM) hold a *video* processor that needs
torchvision, so ``AutoProcessor.from_pretrained`` raises ImportError even for image-only use, while the
image processor itself works through its PIL variant. :func:`build_processor_without_video` rebuilds the
processor class named in ``processor_config.json`` with ``video_processor=None``: images and text behave
exactly as with the real processor (``apply_chat_template`` included, although SmolVLM's own reads the video
processor's defaults on every call); passing videos raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


# Processor classes whose apply_chat_template override differs from ProcessorMixin's only for videos.
_VIDEO_ONLY_TEMPLATE_OVERRIDES = frozenset({"SmolVLMProcessor"})


def _no_video_subclass(cls: type) -> type:
    """``cls`` with the constructor's class check relaxed for a missing video processor."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is None and "video" in argument_name:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # ProcessorMixin.save_pretrained cannot save a missing video processor. Write the layout this module
        # loads back (the one make_tiny_vlm writes): tokenizer files, the image processor's
        # preprocessor_config.json, processor_config.json naming the class, and the chat template.
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(out))
        image_processor = getattr(self, "image_processor", None)
        if image_processor is not None:
            files += list(image_processor.save_pretrained(out))
        (out / "processor_config.json").write_text(json.dumps({"processor_class": cls.__name__}, indent=2) + "\n")
        if isinstance(self.chat_template, str):
            (out / "chat_template.jinja").write_text(self.chat_template)
        return files + [str(out / "processor_config.json")]

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # Some classes' own override reads video-processor defaults on every call (SmolVLM:
        # video_processor.num_frames / fps) and otherwise only picks a video template. Without a video
        # processor and without videos, ProcessorMixin's rendering is what that override ends up calling.
        if getattr(self, "video_processor", None) is not None or cls.__name__ not in _VIDEO_ONLY_TEMPLATE_OVERRIDES:
            return cls.apply_chat_template(self, conversation, chat_template, **kwargs)
        if _has_video(conversation):
            raise ValueError(f"{cls.__name__} was built without its video processor (torchvision is missing), "
                             "so conversations with videos cannot be processed")
        from transformers.processing_utils import ProcessorMixin

        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    # Same name, so saved configs and logs still say e.g. "Qwen2VLProcessor".
    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "save_pretrained": save_pretrained, "apply_chat_template": apply_chat_template,
                                       "__module__": cls.__module__})


def _has_video(conversation: Any) -> bool:
    """True when a chat conversation (or a batch of them) holds a ``{"type": "video"}`` content part."""
    if isinstance(conversation, dict):
        content = conversation.get("content")
        if isinstance(content, list):
            return any(isinstance(c, dict) and c.get("type") == "video" for c in content)
        return False
    if isinstance(conversation, (list, tuple)):
        return any(_has_video(c) for c in conversation)
    return False


def build_processor_without_video(path: str | Path, **kwargs: Any):
    """Build the processor saved under ``path`` without its video processor.

    Args:
        path: a model directory with ``processor_config.json`` (or ``preprocessor_config.json``) naming
            ``processor_class``.
        kwargs: forwarded to the tokenizer's and image processor's ``from_pretrained``.

    Returns:
        A processor instance of (a subclass of) the saved ``processor_class``.

    Raises:
        ValueError: no processor class is recorded under ``path``, or it is not a transformers class.
    """
    import transformers
    from transformers import AutoTokenizer

    path = Path(path)
    config: dict[str, Any] = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            config = {**json.loads((path / name).read_text()), **config}
    cls_name = config.get("processor_class")
    cls = getattr(transformers, cls_name, None) if cls_name else None
    if cls is None:
        raise ValueError(f"build_processor_without_video: no transformers processor_class recorded in {path} "
                         f"(found {cls_name!r})")
    parts: dict[str, Any] = {}
    for attr in cls.get_attributes():
        if "tokenizer" in attr:
            parts[attr] = AutoTokenizer.from_pretrained(path, **kwargs)
        elif "image_processor" in attr:
            parts[attr] = _image_processor(path, config, **kwargs)
        elif "video" in attr:
            parts[attr] = None
        else:
            raise ValueError(f"build_processor_without_video: cannot build {cls_name}.{attr} without its own loader")
    template = path / "chat_template.jinja"
    chat_template = getattr(parts.get("tokenizer"), "chat_template", None)
    if template.is_file():
        chat_template = template.read_text()
    init_kwargs = _init_kwargs(cls) - set(parts) - {"chat_template"}
    extra = {k: v for k, v in config.items() if k in init_kwargs}
    return _no_video_subclass(cls)(**parts, chat_template=chat_template, **extra)


def _image_processor(path: Path, config: dict[str, Any], **kwargs: Any):
    """``AutoImageProcessor``, or the PIL variant of the saved class where the default one needs torchvision
    (the Auto class does not fall back to it in every transformers release)."""
    import transformers
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, **kwargs)
    except ImportError:
        name = str(config.get("image_processor_type", "")).removesuffix("Fast")
        pil = getattr(transformers, name + "Pil", None)
        if pil is None:
            raise
        return pil.from_pretrained(path, **kwargs)


def _init_kwargs(cls: type) -> set[str]:
    import inspect

    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
