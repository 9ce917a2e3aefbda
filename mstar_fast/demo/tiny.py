"""Tiny random-weight models built from configs with a locally trained tokenizer (no hub).

``make_tiny_vlm(arch, out_dir)`` writes a directory that :func:`mstar_fast.models.load_policy` (and plain
``from_pretrained``) loads: weights, config, generation config, tokenizer, processor pieces and a chat
template in the style of the real model family. Tests, benchmarks and the embedded demo all build their
policies and PRMs here, so every knob that changes cost (vocabulary, width, depth, image tokens) is an
argument.

Architectures:
    ``qwen2_vl``  Qwen2-VL (M-RoPE, patch merger; ChatML template with ``<|vision_start|>`` markers)
    ``llava``     LLaVA-1.5 (CLIP vision tower + MLP projector + Llama; ``USER: <image>\\n... ASSISTANT:``)
    ``idefics3``  Idefics3 (SigLIP vision + pixel shuffle + Llama; ``User:<image>...<end_of_utterance>``)
    ``llama``     a text-only Llama causal LM (for text-only prompts and the vLLM text path)

Qwen2-VL's processor class needs torchvision, which does not import beside torch 2.13 CPU; the factory
therefore writes the processor's pieces one by one (never instantiating ``Qwen2VLProcessor``), and
:mod:`mstar_fast.models.compat` rebuilds it without a video processor when ``AutoProcessor`` fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mstar_fast.demo.tokenizer import EOS_TOKEN, tiny_corpus, train_tiny_tokenizer

ARCHS = ("qwen2_vl", "llava", "idefics3", "llama")
TINY_META = "mstar_tiny.json"

# Chat templates: jinja over [{"role", "content": str | [{"type": "image"} | {"type": "text", "text"}]}].
_CONTENT = (
    "{% macro render(content, image) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for c in content %}"
    "{% if c['type'] == 'image' %}{{ image }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
)
_TEMPLATES = {
    "qwen2_vl": _CONTENT + (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ render(m['content'], '<|vision_start|><|image_pad|><|vision_end|>') }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llava": _CONTENT + (
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}USER: {{ render(m['content'], '<image>\n') }} "
        "{% else %}ASSISTANT: {{ render(m['content'], '') }}" + EOS_TOKEN + "{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
    "idefics3": _CONTENT + (
        "{% for m in messages %}{{ m['role'] | capitalize }}:{{ render(m['content'], '<image>') }}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    "llama": _CONTENT + (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ render(m['content'], '') }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}
# Special tokens per family; the first token of `end_of_turn` (when any) also ends generation.
_SPECIALS = {
    "qwen2_vl": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": ["<image>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)],
    "llama": ["<|im_start|>", "<|im_end|>"],
}
_END_OF_TURN = {"qwen2_vl": "<|im_end|>", "idefics3": "<end_of_utterance>", "llama": "<|im_end|>"}


@dataclass
class TinySpec:
    """What :func:`make_tiny_vlm` built; saved as ``mstar_tiny.json`` beside the weights."""

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    image_size: int
    patch_size: int
    num_image_tokens: int
    num_parameters: int
    seed: int


def _text_config(vocab: int, hidden: int, layers: int, heads: int, inter: int, max_pos: int, tok) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_pos,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen2-VL's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _build_qwen2_vl(tok, text: dict, hidden: int, image_size: int, patch: int, vision_layers: int, heads: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    head_dim = hidden // heads
    text = dict(text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                       "mrope_section": _mrope_section(head_dim)})
    ids = {n: tok.convert_tokens_to_ids(t) for n, t in [("image_token_id", "<|image_pad|>"),
                                                         ("video_token_id", "<|video_pad|>"),
                                                         ("vision_start_token_id", "<|vision_start|>"),
                                                         ("vision_end_token_id", "<|vision_end|>")]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=vision_layers, embed_dim=hidden, hidden_size=hidden, num_heads=heads,
                           patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2),
        **ids,
    )
    model = Qwen2VLForConditionalGeneration(config)
    # min_pixels = max_pixels pins every image to about image_size^2 pixels, so the token count is fixed.
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=patch,
                                               merge_size=2, temporal_patch_size=2)
    n_tokens = (image_size // patch) ** 2 // 4
    return model, image_processor, n_tokens, {"processor_class": "Qwen2VLProcessor"}


def _build_llava(tok, text: dict, hidden: int, image_size: int, patch: int, vision_layers: int, heads: int):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = LlavaConfig(
        text_config=dict(text, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=vision_layers + 1, num_attention_heads=heads,
                           image_size=image_size, patch_size=patch, projection_dim=hidden),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_layer=-2,  # LLaVA-1.5 reads the penultimate CLIP layer (hence one extra layer)
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1, chat_template=_TEMPLATES["llava"])
    return model, processor, (image_size // patch) ** 2, None


def _build_idefics3(tok, text: dict, hidden: int, image_size: int, patch: int, vision_layers: int, heads: int):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    scale = 2
    config = Idefics3Config(
        text_config=dict(text, model_type="llama"),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=vision_layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    model = Idefics3ForConditionalGeneration(config)
    # No image splitting: one global view per image at the encoder's resolution (a fixed token count).
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                                max_image_size={"longest_edge": image_size})
    n_tokens = (image_size // patch) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_tokens,
                                  chat_template=_TEMPLATES["idefics3"])
    return model, processor, n_tokens, None


def _build_llama(tok, text: dict, hidden: int, image_size: int, patch: int, vision_layers: int, heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**text))
    return model, None, 0, None


_BUILDERS = {"qwen2_vl": _build_qwen2_vl, "llava": _build_llava, "idefics3": _build_idefics3, "llama": _build_llama}


def make_tiny_vlm(
    arch: str,
    out_dir: str | Path,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    image_size: int = 32,
    seed: int = 0,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    patch_size: int = 8,
    vision_layers: int = 1,
    max_position_embeddings: int = 2048,
    dtype: torch.dtype = torch.float32,
    tokenizer_corpus: list[str] | None = None,
) -> Path:
    """Build a tiny random-weight model of family ``arch`` and save it (``save_pretrained``) to ``out_dir``.

    Args:
        arch: one of :data:`ARCHS` (``"llama"`` is text-only).
        out_dir: directory to write (created; existing files are overwritten).
        vocab_size: target tokenizer/embedding size (byte-level BPE; the real size is ``len(tokenizer)``).
        hidden_size: width of the language model and of the vision tower.
        image_size: side of the square image the vision tower sees, in pixels (a multiple of
            ``2 * patch_size``). Image tokens: ``(image_size/patch)^2`` for LLaVA, a quarter of that for
            Qwen2-VL (2x2 patch merge) and Idefics3 (pixel shuffle, scale 2).
        seed: weight-initialisation seed (the global RNG is restored afterwards).
        num_layers, num_heads, intermediate_size: language-model depth, heads (key/value heads are
            half), MLP width (default ``2 * hidden_size``).
        patch_size, vision_layers: vision tower patch side and depth.
        max_position_embeddings: context length of the language model (prompts longer than this are
            rejected by the rollout engine).
        dtype: dtype of the saved weights.
        tokenizer_corpus: extra lines the tokenizer's BPE merges are learned from (beside the default
            corpus), e.g. the task's questions and reasoning, so its texts take fewer tokens.

    Returns:
        ``Path(out_dir)``, holding the model, tokenizer, processor files and ``mstar_tiny.json``
        (a :class:`TinySpec`).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"make_tiny_vlm: unknown arch {arch!r}; expected one of {ARCHS}")
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"make_tiny_vlm: hidden_size={hidden_size} must split into {num_heads} heads of even size")
    if arch != "llama" and image_size % (2 * patch_size):
        raise ValueError(f"make_tiny_vlm: image_size={image_size} must be a multiple of "
                         f"2 * patch_size={2 * patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    corpus = None
    if tokenizer_corpus is not None:
        corpus = tiny_corpus() + list(tokenizer_corpus)
    tok = train_tiny_tokenizer(_SPECIALS[arch], vocab_size=vocab_size, corpus=corpus)
    text = _text_config(len(tok), hidden_size, num_layers, num_heads, intermediate_size or 2 * hidden_size,
                        max_position_embeddings, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor, n_image_tokens, proc_config = _BUILDERS[arch](
            tok, text, hidden_size, image_size, patch_size, vision_layers, num_heads)
    model = model.to(dtype).eval()

    eos = [tok.eos_token_id]
    if arch in _END_OF_TURN:
        eos.insert(0, tok.convert_tokens_to_ids(_END_OF_TURN[arch]))
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos, tok.pad_token_id, None
    gen.do_sample, gen.max_length = False, None
    model.save_pretrained(out)

    template = _TEMPLATES[arch]
    if processor is None or proc_config is not None:
        # Text-only model, or a processor that cannot be instantiated here (Qwen2-VL): save the pieces
        # AutoProcessor reads: tokenizer (with the template), image processor, processor_config.json.
        tok.chat_template = template
        tok.save_pretrained(out)
        (out / "chat_template.jinja").write_text(template)
        if processor is not None:
            processor.save_pretrained(out)  # the image processor: preprocessor_config.json
            (out / "processor_config.json").write_text(json.dumps(proc_config, indent=2) + "\n")
    else:
        processor.save_pretrained(out)

    spec = TinySpec(arch=arch, vocab_size=len(tok), hidden_size=hidden_size, num_layers=num_layers,
                    image_size=image_size if arch != "llama" else 0, patch_size=patch_size,
                    num_image_tokens=n_image_tokens, num_parameters=sum(p.numel() for p in model.parameters()),
                    seed=seed)
    (out / TINY_META).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def read_tiny_spec(model_dir: str | Path) -> TinySpec | None:
    """The :class:`TinySpec` saved by :func:`make_tiny_vlm`, or None for other model directories."""
    path = Path(model_dir) / TINY_META
    if not path.is_file():
        return None
    d: dict[str, Any] = json.loads(path.read_text())
    return TinySpec(**d)
