"""What a model family needs from the rollout engine, the PRM scorer and the SFT engine.

The three engines read a model's final hidden states, KV cache and processor outputs directly instead of
calling ``model(...)`` end to end, so every way a family departs from "logits = lm_head(hidden), a cache
whose rows can be repeated, per-token inputs that are 0 after the prompt" must be known to them, or they
are silently wrong. :func:`family_capabilities` answers once, at construction, from a small table keyed
by the top-level ``config.model_type`` plus readers of config attributes (never by sniffing inputs per
call). A family that cannot be reproduced raises :class:`UnsupportedFamilyError` naming the family and why.

What the table covers (transformers 5.24):

* **logits after the head**: ``logits = softcap(scale * (hidden @ W.T + b))`` where ``softcap(x) =
  c * tanh(x / c)``. Granite divides by ``logits_scaling``; Cohere / Cohere2 multiply by ``logit_scale``;
  Gemma 2, Gemma 3 *text*, PaliGemma, Gemma 3n/4 soft-cap with ``final_logit_softcapping``. Only the
  forward of the class that is run counts: Aya Vision and Cohere2-Vision carry a Cohere2 text config with
  ``logit_scale`` but their forward never applies it; Gemma 3's image-text model never soft-caps.
* **token types** (PaliGemma): ``token_type_ids`` 0 is the bidirectional prefix, so response tokens must be 1.
* **per-token inputs over the response**: Mllama's 4-D ``cross_attention_mask`` repeats its last prompt row
  (what its ``generate`` does); other per-token inputs are 0 on response tokens.
* **processor extras**: PaliGemma's processor returns ``labels`` (prefix-only, all -100) which must never
  reach a prompt forward, and appends its own ``"\\n"`` to the prompt.
* **positions**: PaliGemma counts position ids from 1; engines that pass explicit positions add the offset.
* **caches**: a cache layer kind without ``batch_repeat_interleave`` (linear attention / conv layers of
  Qwen3.5, LFM2-VL) cannot be shared by several continuations; the engines then run each response or
  sample on its own (``prefix_sharing=False``, with the reason logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("mstar_fast")

__all__ = [
    "FamilyCapabilities",
    "UnsupportedFamilyError",
    "cast_floating_inputs",
    "extend_token_inputs",
    "family_capabilities",
    "logit_transform",
    "rope_deltas",
    "stack_encodings",
]


class UnsupportedFamilyError(ValueError):
    """The model family cannot be run exactly by mstar_fast; the message names the family and the reason."""


@dataclass(frozen=True)
class FamilyCapabilities:
    """What one loaded model needs (see the module doc).

    Attributes:
        family: ``config.model_type`` of the model as loaded (e.g. ``"granite"``, ``"paligemma"``).
        logit_scale: multiplier applied to ``hidden @ W.T + b`` by the model's forward (1.0: none).
        logit_softcap: ``c`` of ``c * tanh(logits / c)`` applied after the scale, or None.
        token_fill: how each per-token input (key -> ``"zeros"``, ``"ones"`` or ``"repeat_last"``) continues
            over response tokens; keys not listed continue with zeros.
        drop_inputs: processor outputs that must not reach a prompt forward (e.g. PaliGemma's ``labels``).
        processor_prompt_end: text the processor itself appends to every prompt (PaliGemma: ``"\\n"``), which
            prompt formats must therefore not end with; ``""`` when none.
        position_offset: the position id of token ``t`` is ``t + position_offset`` in the model's own forward
            (PaliGemma's positions are 1-indexed); engines that pass explicit position ids add it.
        prefix_sharing: whether one prompt's KV cache can be repeated over several continuations.
        prefix_sharing_reason: why not, when ``prefix_sharing`` is False.
        needs_image: prompts without an image are refused (PaliGemma: its prefix-LM mask, token types and
            positions come from the processor's image tokens; a text-only prompt would run silently wrong).
    """

    family: str
    logit_scale: float = 1.0
    logit_softcap: float | None = None
    token_fill: Mapping[str, str] = field(default_factory=dict)
    drop_inputs: frozenset[str] = frozenset()
    processor_prompt_end: str = ""
    position_offset: int = 0
    prefix_sharing: bool = True
    prefix_sharing_reason: str | None = None
    needs_image: bool = False

    @property
    def transforms_logits(self) -> bool:
        """True when the logits are not plain ``hidden @ W.T + b``."""
        return self.logit_scale != 1.0 or self.logit_softcap is not None


# ---------------------------------------------------------------------------------------------- logits
# Per family: (scale reader, soft-cap reader) over the top-level config, read from what each family's
# forward applies in transformers 5.24 (its modeling file), not from which attributes its config carries.
def _text(cfg: Any) -> Any:
    get = getattr(cfg, "get_text_config", None)
    return get(decoder=True) if callable(get) else getattr(cfg, "text_config", None) or cfg


def _attr(name: str, text: bool = False, invert: bool = False) -> Callable[[Any], float | None]:
    def read(cfg: Any) -> float | None:
        v = getattr(_text(cfg) if text else cfg, name, None)
        if v is None:
            return None
        return 1.0 / float(v) if invert else float(v)

    read.__doc__ = f"{'1 / ' if invert else ''}{'text_config.' if text else 'config.'}{name}"
    return read


_NONE: Callable[[Any], float | None] = lambda cfg: None
_LOGITS: dict[str, tuple[Callable[[Any], float | None], Callable[[Any], float | None]]] = {
    # logits * logit_scale
    **{t: (_attr("logit_scale"), _NONE) for t in ("cohere", "cohere2", "cohere2_moe", "cohere_compass_text")},
    "cohere_compass": (_attr("logit_scale", text=True), _NONE),
    # logits / logits_scaling
    **{t: (_attr("logits_scaling", invert=True), _NONE)
       for t in ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared",
                 "minicpm3")},
    **{t: (_attr("logits_scaling", text=True, invert=True), _NONE) for t in ("granite4_vision", "granite_docling")},
    # logits * logits_scaling (MuP)
    "hyperclovax": (_attr("logits_scaling"), _NONE),
    "hyperclovax_vision_v2": (_attr("logits_scaling", text=True), _NONE),
    "falcon_h1": (_attr("lm_head_multiplier"), _NONE),
    # soft-capping
    **{t: (_NONE, _attr("final_logit_softcapping"))
       for t in ("gemma2", "gemma3_text", "gemma3n_text", "gemma4_text", "gemma4_unified_text", "vaultgemma",
                 "nanochat", "inkling2_text", "inkling2_loop_text", "beam")},
    **{t: (_NONE, _attr("final_logit_softcapping", text=True))
       for t in ("paligemma", "gemma3n", "gemma4", "gemma4_unified", "mistral_large4", "inkling2", "inkling2_loop")},
    "recurrent_gemma": (_NONE, _attr("logits_soft_cap")),
    **{t: (_attr("output_multiplier", text=True), _attr("final_logit_softcapping", text=True))
       for t in ("muse_glimmer", "muse_spark")},
    # Carry (or may wrap) a text config with a logit transform that their own forward never applies: the
    # image-text model calls the bare text backbone and its own lm_head (e.g. Granite Vision is LLaVA-NeXT
    # around a Granite text config whose logits_scaling it ignores).
    **{t: (_NONE, _NONE) for t in ("aya_vision", "cohere2_vision", "gemma3", "shieldgemma2", "llava", "llava_next",
                                   "llava_onevision", "llava_next_video", "mistral3", "internvl")},
}
# Config attributes that, in some family, change the logits after the head: (name, neutral value).
_TRANSFORM_ATTRS = (("logit_scale", 1.0), ("logits_scaling", 1.0), ("final_logit_softcapping", None),
                    ("lm_head_multiplier", 1.0), ("output_multiplier", 1.0))
_REFUSED: dict[str, str] = {
    "llama4": "Llama4ForConditionalGeneration's own forward and generate fail inside transformers 5.24 "
              "(AttributeError: 'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs', even on "
              "text-only input), so no result of ours could be checked against the model",
    "dory": "its logits are scaled per vocabulary row by a learned vector, which no two-row head or fused "
            "loss reproduces",
    "diffusion_gemma": "a block-diffusion model, not a causal decoder: there is no next-token rollout, PRM "
                       "or SFT loss to run",
    "t5gemma2": "an encoder-decoder model: the engines run decoder-only models whose prompt and response "
                "share one causal sequence",
}

# Families that one engine cannot run exactly (found by tests/models/test_families.py on shrunken configs):
# refused by that engine only, by name, instead of giving a silently different result or a shape error.
_REFUSED_BY_ENGINE: dict[str, dict[str, str]] = {
    "kosmos-2": {"rollout": "its prefill needs pixel_values (a text-only forward raises), and the engine's "
                            "image path was never checked against its generate"},
    "kosmos-2.5": {"rollout": "greedy rollout differs from its own generate (4 of 6 samples on a shrunken config)",
                   "prm": "its forward reshapes the prefix cache in a way the shared-prefix scorer cannot follow",
                   "sft": "its base model returns vocabulary logits, not hidden states, so there is nothing for "
                          "the fused loss to project"},
    "mistral4": {"rollout": "its attention's key and value head counts differ, which the engine's cache "
                            "handling does not reproduce (a size mismatch where generate runs)",
                 "prm": "its attention's key and value head counts differ, which the scorer's cache "
                        "handling does not reproduce (a size mismatch where its forward runs)"},
    "inkling2": {"prm": "its soft-capped head over a looped decoder gives a size mismatch in the scorer"},
    "inkling2_loop": {"prm": "its soft-capped head over a looped decoder gives a size mismatch in the scorer"},
    "qwen3_omni_moe_thinker": {"prm": "its config has no vision_start_token_id, which the scorer's M-RoPE "
                                      "prefix path needs"},
    "unlimited_ocr": {"prm": "its forward over a prefix cache gives a size mismatch in the scorer"},
}
_NEEDS_IMAGE = frozenset({"paligemma"})


def logit_transform(model: Any) -> tuple[float, float | None]:
    """``(scale, softcap)`` with ``model(...).logits == softcap(scale * (hidden @ W.T + b))``.

    Raises:
        UnsupportedFamilyError: a family outside the table whose config sets a logit transform attribute
            (its forward may or may not apply it, so no result would be trustworthy).
    """
    cfg = model.config
    family = str(getattr(cfg, "model_type", type(model).__name__))
    readers = _LOGITS.get(family)
    if readers is None:
        for c in {id(cfg): cfg, id(_text(cfg)): _text(cfg)}.values():
            for name, neutral in _TRANSFORM_ATTRS:
                v = getattr(c, name, None)
                if v is not None and v != neutral:
                    raise UnsupportedFamilyError(
                        f"model family {family!r} ({type(model).__name__}): its config sets {name}={v}, and "
                        "mstar_fast does not know whether this family's forward applies it to the logits; "
                        "add the family to mstar_fast.models.families._LOGITS after reading its forward")
        return 1.0, None
    scale, cap = readers[0](cfg), readers[1](cfg)
    scale = 1.0 if scale is None else scale
    if not math.isfinite(scale) or scale == 0:
        raise UnsupportedFamilyError(f"model family {family!r}: logit scale {scale} is not a finite non-zero number")
    if cap is not None and not (math.isfinite(cap) and cap > 0):
        raise UnsupportedFamilyError(f"model family {family!r}: final_logit_softcapping={cap} is not positive")
    return scale, cap


# ---------------------------------------------------------------------------------------------- caches
def _cache_sharing(model: Any) -> tuple[bool, str | None]:
    """Whether every cache layer kind of the text decoder can repeat its rows (``batch_repeat_interleave``)."""
    try:
        from transformers.cache_utils import (
            DYNAMIC_LAYER_TYPE_MAPPING,
            get_layer_types_and_kwargs,
        )
    except ImportError:  # another transformers release: the engines' runtime checks still apply
        return True, None
    tc = _text(model.config)
    try:
        types, _ = get_layer_types_and_kwargs(tc)
    except Exception:  # noqa: BLE001 - a config this reader does not understand (remote code): decided at runtime
        return True, None
    bad = sorted({t for t in types if not callable(getattr(DYNAMIC_LAYER_TYPE_MAPPING.get(t), "batch_repeat_interleave",
                                                              None))})
    if bad:
        return False, (f"its cache has {', '.join(bad)} layers (recurrent state, no per-row repeat), so one prompt's "
                       "cache cannot be shared by several continuations")
    return True, None


# ---------------------------------------------------------------------------------------------- entry point
_TOKEN_FILL: dict[str, dict[str, str]] = {
    "paligemma": {"token_type_ids": "ones"},  # 0 = bidirectional prefix, 1 = causal suffix (its generate does this)
    "mllama": {"cross_attention_mask": "repeat_last"},  # its generate repeats the last prompt row
}
_DROP_INPUTS: dict[str, frozenset[str]] = {"paligemma": frozenset({"labels"})}
_PROMPT_END: dict[str, str] = {"paligemma": "\n"}
_POSITION_OFFSET: dict[str, int] = {"paligemma": 1}  # its forward and generate count positions from 1


def family_capabilities(model: Any, processor: Any = None, *, reads_logits: bool = True,
                        engine: str | None = None) -> FamilyCapabilities:
    """What ``model`` (a loaded ``transformers`` model; ``processor`` is accepted for families whose needs
    depend on it) needs from the engines.

    ``reads_logits=False`` is for callers that use the model's own logits (the rollout engine): the logit
    transform is then neither read nor checked (``logit_scale`` 1.0, ``logit_softcap`` None).
    ``engine``: ``"rollout"`` | ``"prm"`` | ``"sft"``, the caller, for families only one engine refuses.

    Raises:
        UnsupportedFamilyError: the family cannot be run exactly; the message names it and says why.
    """
    cfg = getattr(model, "config", None)
    family = str(getattr(cfg, "model_type", "") or type(model).__name__)
    if family in _REFUSED:
        raise UnsupportedFamilyError(f"model family {family!r} ({type(model).__name__}) is not supported: "
                                     f"{_REFUSED[family]}")
    if engine is not None and engine in _REFUSED_BY_ENGINE.get(family, {}):
        what = {"rollout": "the rollout engine", "prm": "the PRM scorer", "sft": "the SFT loss"}[engine]
        raise UnsupportedFamilyError(f"model family {family!r} ({type(model).__name__}) is not supported by {what}: "
                                     f"{_REFUSED_BY_ENGINE[family][engine]}")
    if cfg is None:
        return FamilyCapabilities(family=family)
    scale, cap = logit_transform(model) if reads_logits else (1.0, None)
    sharing, reason = _cache_sharing(model)
    return FamilyCapabilities(family=family, logit_scale=scale, logit_softcap=cap,
                              token_fill=dict(_TOKEN_FILL.get(family, {})),
                              drop_inputs=_DROP_INPUTS.get(family, frozenset()),
                              processor_prompt_end=_PROMPT_END.get(family, ""),
                              position_offset=_POSITION_OFFSET.get(family, 0),
                              prefix_sharing=sharing, prefix_sharing_reason=reason,
                              needs_image=family in _NEEDS_IMAGE)


# ---------------------------------------------------------------------------------------------- inputs
def cast_floating_inputs(inputs: Mapping[str, Any], dtype: torch.dtype,
                         device: torch.device | str | None = None) -> dict[str, Any]:
    """``inputs`` with every floating-point tensor (``pixel_values``, ...) cast to ``dtype`` (the model's
    weight dtype: some processors return bf16 pixels for an fp32 model, or fp32 for a bf16 one) and every
    tensor moved to ``device`` when given. Integer tensors keep their dtype; other values pass unchanged."""
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
        out[k] = v
    return out


def rope_deltas(holders: Sequence[Any], n: int) -> list[int]:
    """After a prefill of ``n`` prompt rows, each row's M-RoPE position offset from the modules that hold
    ``rope_deltas`` (Qwen2-VL family: an image's tokens take fewer positions, so the next token sits at
    ``P + delta``); zeros when no module holds one."""
    for m in holders:
        if isinstance(m.rope_deltas, torch.Tensor):
            d = [int(v) for v in m.rope_deltas.reshape(-1).tolist()]
            return d if len(d) == n else [d[0]] * n
    return [0] * n


def stack_encodings(encs: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor] | None:
    """Processor outputs of prompts of one token length ``P`` as one batch: per-token tensors ``[1, P, ...]``
    and the others (``pixel_values``, ``image_grid_thw``, ...) concatenated along dim 0, as processors batch
    them. None when they differ in keys, hold non-tensors, or differ in a dimension past the first."""
    keys = list(encs[0])
    if any(list(e) != keys for e in encs) or "input_ids" not in keys:
        return None
    out = {}
    for k in keys:
        vals = [e[k] for e in encs]
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in vals):
            return None
        if any(v.shape[1:] != vals[0].shape[1:] or v.dtype != vals[0].dtype for v in vals):
            return None
        out[k] = torch.cat(vals)
    return out


def extend_token_inputs(name: str, prompt_part: torch.Tensor, n: int, caps: FamilyCapabilities) -> torch.Tensor:
    """``prompt_part [B, P, ...]`` (a per-token input over the prompt) continued over ``n`` response tokens
    as the family's forward expects (see ``FamilyCapabilities.token_fill``): ``[B, P + n, ...]``."""
    mode = caps.token_fill.get(name, "zeros")
    shape = (prompt_part.shape[0], n, *prompt_part.shape[2:])
    if mode == "repeat_last":
        tail = prompt_part[:, -1:].expand(shape)
    elif mode == "ones":
        tail = prompt_part.new_ones(shape)
    else:
        tail = prompt_part.new_zeros(shape)
    return torch.cat([prompt_part, tail], dim=1)


def log_no_prefix_sharing(who: str, caps: FamilyCapabilities) -> None:
    """Log once per construction why ``who`` runs without prefix sharing."""
    log.info("mstar_fast: %s runs %s without prefix sharing: %s", who, caps.family, caps.prefix_sharing_reason)
