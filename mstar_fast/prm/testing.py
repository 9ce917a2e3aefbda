"""Tiny random PRMs built from configs, with a tokenizer trained on the spot: no hub, no downloads.

For tests, benchmarks and docstring examples of the PRM scorer. ``tiny_llava_prm`` gives a LLaVA
(CLIP vision tower + Llama text model) and its processor; ``tiny_llama_prm`` a text-only causal LM and its
tokenizer. The weights are random, so the scores mean nothing; the shapes, the tokenization and the
forward passes are those of the real model families. (The package-wide tiny-model factory lives in
``mstar_fast.demo.tiny``; this module only needs what the scorer exercises.)
"""

from __future__ import annotations

import functools

import torch

STEP_TAG = "ки"  # Math-Shepherd's step tag, added to the vocabulary as one token
REWARD_TOKENS = ("+", "-")
IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ '\n' }}"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<image>{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{{ '\n' }}{% endif %}"
)
_CORPUS = [
    "What is 12 + 30? First add the tens: 10 + 30 = 40.\n\nThen add the ones: 40 + 2 = 42.\n\n# Answer\n\n42",
    "The triangle has angles 30 and 60, so the third angle is 180 - 30 - 60 = 90 degrees.\n\n# Answer\n\n90",
    "Read the bar chart: the tallest bar is B with value 7.\n\nSo the answer is B.\n\n# Answer\n\nB",
    "Let x be the unknown. 3x + 5 = 20, so 3x = 15 and x = 5.\n\n# Answer\n\n5",
    "The image shows 4 red circles and 3 blue squares. In total there are 4 + 3 = 7 shapes.",
    "Step 1: compute the area. Step 2: divide by 2. The area of the triangle is 1/2 * 6 * 4 = 12.",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", IMAGE_TOKEN, "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 400, step_tag: str | None = STEP_TAG):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on a few math sentences, with ``<pad>``,
    ``<eos>``, ``<image>``, chat-role tokens, a chat template and (unless None) ``step_tag`` added as one
    token. Every reward token of ``REWARD_TOKENS`` is a single byte-level token."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json(vocab_size))
    if step_tag is not None:
        tok.add_tokens([AddedToken(step_tag, normalized=False, special=False)])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", extra_special_tokens={"image_token": IMAGE_TOKEN}
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def tiny_image(seed: int = 0, size: tuple[int, int] = (40, 30)):
    """A random RGB PIL image."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def _text_config(tokenizer, hidden_size: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def tiny_llava_prm(
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    tokenizer=None,
):
    """A random ``LlavaForConditionalGeneration`` (fp32, eval mode) and its ``LlavaProcessor``. An image
    becomes ``(image_size // patch_size) ** 2`` image tokens."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = tokenizer or tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer, hidden_size, layers, heads),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def tiny_llama_prm(seed: int = 0, hidden_size: int = 64, layers: int = 2, heads: int = 4, tokenizer=None):
    """A random text-only ``LlamaForCausalLM`` (fp32, eval mode) and its tokenizer."""
    from transformers import LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    return LlamaForCausalLM(_text_config(tokenizer, hidden_size, layers, heads)).eval(), tokenizer
