"""Liger-style patching: make a ``transformers`` model's ``forward(labels=...)`` compute its loss with
:func:`mstar_fast.ops.fused_linear_cross_entropy`, never materialising the ``[tokens, vocab]`` logits.

``apply_fused_linear_cross_entropy(model)`` wraps the model instance's ``forward``. A call without
``labels`` (generation, evaluation without loss) runs the original forward unchanged. A call with
``labels`` (or ``shift_labels``) runs the original forward with the LM head short-circuited to return its
input (the final hidden states), then computes the causal-LM loss from those hidden states and the head's
weight and bias, exactly as ``transformers``' ``ForCausalLMLoss`` does: labels shifted left by one
(unless ``shift_labels`` are given), ``-100`` ignored, the mean over non-ignored tokens, or the sum divided
by ``num_items_in_batch`` when the trainer passes it (gradient accumulation). The returned output has
``loss`` set and ``logits=None``.

Works for every model whose logits are ``lm_head(hidden)`` (Llama, Qwen2, Qwen2-VL, Qwen2.5-VL, LLaVA,
Idefics3, SmolVLM, Mistral, ...). Families that transform the logits after the head (soft-capping as in
Gemma 2/3, a logit scale as in Cohere or Granite) are refused at ``apply`` time, and a model whose forward
never calls its output embeddings is refused at its first call.

Note: TRL >= 1.16's ``SFTTrainer`` already replaces the forward with its own fused LM head (``fused_lm_head=
True`` calls bypass this patch); the patch serves ``transformers.Trainer``, trainers that call
``model(..., labels=...)`` and custom loops.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from mstar_fast import ops

_STATE = "_mstar_fused_ce"
# Config attributes that make the logits differ from lm_head(hidden): (name, value meaning "no change").
_LOGIT_TRANSFORMS = (("final_logit_softcapping", None), ("logit_scale", 1.0), ("logits_scaling", 1.0),
                     ("output_multiplier", 1.0), ("lm_head_multiplier", 1.0))


class UnsupportedModelError(ValueError):
    """The model's head cannot be reproduced by the fused loss (the message says why)."""


def _text_config(model: Any) -> Any:
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else getattr(cfg, "text_config", None) or cfg


def _check_supported(model: Any) -> torch.nn.Module:
    name = type(model).__name__
    cfg = _text_config(model)
    for attr, neutral in _LOGIT_TRANSFORMS:
        v = getattr(cfg, attr, None)
        if v is not None and v != neutral:
            raise UnsupportedModelError(
                f"apply_fused_linear_cross_entropy: {name} transforms its logits after the LM head "
                f"({attr}={v}); the fused loss computes cross_entropy(hidden @ W.T + b) and would not match")
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise UnsupportedModelError(
            f"apply_fused_linear_cross_entropy: {name}'s output embeddings are {type(head).__name__}, not a "
            "torch.nn.Linear; the fused loss needs the head's [V, H] weight")
    return head


class _HeadBypass:
    """While active, the LM head returns its input (the hidden states) instead of the logits."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.head, self.called = head, False

    def __enter__(self) -> _HeadBypass:
        def passthrough(module_self: Any, hidden: torch.Tensor) -> torch.Tensor:
            self.called = True
            return hidden

        self.head.forward = types.MethodType(passthrough, self.head)
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.head.forward  # back to the class's forward


def _causal_lm_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor | None,
                    shift_labels: torch.Tensor | None, num_items_in_batch: Any, ignore_index: int,
                    chunk_size: int | None) -> torch.Tensor:
    if shift_labels is None:
        # As transformers' ForCausalLMLoss: pad then shift, so position t predicts label t+1.
        labels = torch.nn.functional.pad(labels.to(hidden.device), (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    if hidden.shape[:-1] != shift_labels.shape:
        raise ValueError(f"fused loss: hidden states {tuple(hidden.shape)} do not line up with labels "
                         f"{tuple(shift_labels.shape)} (logits_to_keep must keep every position)")
    weight = head.weight
    h = hidden.reshape(-1, hidden.shape[-1])
    if h.dtype != weight.dtype and not torch.is_autocast_enabled(h.device.type):
        h = h.to(weight.dtype)  # some forwards upcast the "logits" (here: hidden states) to fp32
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = ops.fused_linear_cross_entropy(h, weight, shift_labels.reshape(-1), head.bias, ignore_index=ignore_index,
                                          reduction=reduction, chunk_size=chunk_size)
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def apply_fused_linear_cross_entropy(model: Any, *, ignore_index: int = -100, chunk_size: int | None = None) -> Any:
    """Patch ``model`` in place so ``model(..., labels=...)`` uses the fused linear cross-entropy.

    Args:
        model: a ``transformers`` causal LM or image-text-to-text model (``...ForCausalLM``,
            ``...ForConditionalGeneration``) whose head is ``get_output_embeddings()``, a ``torch.nn.Linear``.
        ignore_index: label of positions without loss (transformers' ``-100``).
        chunk_size: rows per chunk of the fused op (default: its own choice).

    Returns:
        The same model (patched). Calling it again on a patched model is an error; :func:`unpatch` undoes it.

    Raises:
        UnsupportedModelError: the family scales or soft-caps its logits after the head, or its head is not
            a ``Linear`` (the message names the attribute).
        ValueError: the model is already patched.
    """
    if getattr(model, _STATE, None) is not None:
        raise ValueError(f"apply_fused_linear_cross_entropy: {type(model).__name__} is already patched")
    _check_supported(model)
    had_own_forward = "forward" in vars(model)
    original = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if labels is None and shift_labels is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, **kwargs)
        head = _check_supported(self)  # looked up per call: PEFT / FSDP may replace the head after patching
        want_tuple = kwargs.pop("return_dict", True) is False
        if kwargs.get("logits_to_keep", 0) not in (0, None):
            raise ValueError("fused loss: logits_to_keep must be 0 (all positions) when labels are given")
        with _HeadBypass(head) as bypass:
            out = original(*args, return_dict=True, **kwargs)
        if not bypass.called:
            raise UnsupportedModelError(f"fused loss: {type(self).__name__}.forward did not call its output embeddings; "
                                        "its logits do not come from get_output_embeddings(), so it cannot be patched")
        loss = _causal_lm_loss(out.logits, head, labels, shift_labels, num_items_in_batch, ignore_index, chunk_size)
        # A fresh output: the hidden states must not be handed out as logits (ModelOutput keeps a dict
        # beside the attributes, so setting fields to None on the old one would leave them in the dict).
        fields = {k: v for k, v in out.items() if k not in ("logits", "loss")}
        out = type(out)(loss=loss, **fields)
        return out.to_tuple() if want_tuple else out

    object.__setattr__(model, "forward", types.MethodType(forward, model))
    object.__setattr__(model, _STATE, (original if had_own_forward else None, had_own_forward))
    return model


def is_patched(model: Any) -> bool:
    """True when :func:`apply_fused_linear_cross_entropy` patched ``model`` (and it was not undone)."""
    return getattr(model, _STATE, None) is not None


def unpatch(model: Any) -> Any:
    """Undo :func:`apply_fused_linear_cross_entropy` (restores the forward the model had before).

    Raises:
        ValueError: the model is not patched.
    """
    state = getattr(model, _STATE, None)
    if state is None:
        raise ValueError(f"unpatch: {type(model).__name__} is not patched")
    original, had_own = state
    if had_own:
        object.__setattr__(model, "forward", original)
    else:
        del model.forward
    delattr(model, _STATE)
    return model
