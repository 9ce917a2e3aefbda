"""Load a policy (or PRM backbone) and its processor from a local directory or hub id.

Vision-language models load through ``AutoModelForImageTextToText``, text-only ones through
``AutoModelForCausalLM``; the processor through ``AutoProcessor`` (a bare tokenizer for text models), or,
where that fails only because torchvision is missing, through :mod:`mstar_fast.models.compat`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mstar_fast.errors import UserError
from mstar_fast.models.compat import build_processor_without_video

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"load_policy: unknown dtype {dtype!r}; expected a torch.dtype, 'auto' or one of "
                         f"{sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str, default: torch.device | None = None, what: str = "device") -> torch.device:
    """A device string (``model.device``, ``--device``) as a torch device; ``auto`` gives ``default`` (None:
    CUDA when there is one, else the CPU). ``what`` names the setting in error messages.

    Raises:
        UserError: an unknown device string, or a CUDA device on a machine without one.
    """
    if device == "auto":
        return default or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"{what}={device!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what}={device!r}, but this machine has no CUDA GPU that torch can use; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"{what}={device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def load_processor(path: str | Path, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained(path)``, rebuilt without its video processor when torchvision is
    missing (see :mod:`mstar_fast.models.compat`)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError as e:
        log.info("AutoProcessor failed (%s); rebuilding the processor without a video processor", e)
        return build_processor_without_video(path, trust_remote_code=trust_remote_code)


def is_vision_language_config(config: Any) -> bool:
    """True when ``config`` maps to an image-text-to-text model class (or has a vision sub-config)."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is not None


def load_policy(
    path: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from ``path``, model in eval mode on ``device``.

    Args:
        path: local model directory (e.g. from :func:`mstar_fast.demo.tiny.make_tiny_vlm`) or hub id.
        dtype: weight dtype (``torch.bfloat16``, ``"bf16"``, ``"auto"`` for the saved one, ...).
        device: where to put the model.
        trust_remote_code: allow model code shipped with the checkpoint (MiniCPM-V, InternVL2, Phi-3.5-V).
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; None lets transformers pick.

    Returns:
        ``(model, processor)``; the processor is a bare tokenizer for text-only models.

    Raises:
        FileNotFoundError: ``path`` is a local path (absolute, starting with ``.``, or with more than one
            ``/``, which no hub id has) that does not exist, rather than the hub's "Repo id must be in the
            form ..." for a typo in a directory name.
    """
    p = str(path)
    if not Path(p).exists() and (Path(p).is_absolute() or p.startswith(".") or p.count("/") > 1):
        raise FileNotFoundError(f"model path {p} does not exist")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    torch_dtype = _resolve_dtype(dtype)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if is_vision_language_config(config):
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except ValueError:
            # Remote-code VLMs often register only a causal-LM auto class.
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model = model.to(device).eval()
    return model, load_processor(path, trust_remote_code=trust_remote_code)
