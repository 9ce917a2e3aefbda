"""Prompt formatting and loading (chat templates per model family, the plain template, per-prompt errors),
on the demo's tiny models (built locally, no hub)."""

from __future__ import annotations

import pytest

from mstar_fast.data.records import Prompt
from mstar_fast.models import PromptError, encode_prompt, format_prompt, load_images, load_policy


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch,expected", [
    ("qwen2_vl", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"),
    ("llava", "USER: <image>\nQ? ASSISTANT:"),
    ("idefics3", "User:<image>Q?<end_of_utterance>\nAssistant:"),
])
def test_chat_template_per_family(tiny_dirs, arch, expected):
    _, processor = load_policy(tiny_dirs[arch])
    text, templated = format_prompt(processor, Prompt(id="p", question="Q?", images=["unused.png"]))
    assert templated and text == expected


def test_plain_template_without_chat_template(tiny_dirs):
    _, processor = load_policy(tiny_dirs["llava"])
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    prompt = Prompt(id="p", question="Q?", images=["a.png", "b.png"], choices=["1", "2"])
    text, templated = format_prompt(processor, prompt, include_choices=True, instruction="Think.")
    assert not templated and text == "<image><image>Q?\nChoices:\n(A) 1\n(B) 2\nThink.\n"


def test_per_prompt_errors(tiny_dirs, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PromptError, match="cannot open image 0"):
        load_images([str(bad)])
    with pytest.raises(PromptError, match="cannot open image 0"):
        load_images([str(tmp_path / "missing.png")])
    _, tok = load_policy(tiny_dirs["llama"])
    with pytest.raises(PromptError, match="text-only"):
        encode_prompt(tok, Prompt(id="p", question="Q", images=[str(bad)]))
