"""Prompt formatting and loading (chat templates per model family, the plain template, per-prompt errors),
on the demo's tiny models (built locally, no hub)."""

from __future__ import annotations

import pytest

from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import PromptError, encode_prompt, format_prompt, load_images, load_policy

SMALL = dict(vocab_size=512, hidden_size=32, image_size=32, num_layers=1)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Dirs(dict):
    """arch -> model directory, built on first use; an arch whose processor needs a missing package
    (torchvision, in some transformers releases) is skipped, not failed."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        try:
            self[arch] = make_tiny_vlm(arch, self.root / arch, **SMALL)
        except ImportError as e:
            pytest.skip(f"{arch}: {str(e).strip().splitlines()[0]}")
        return self[arch]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return _Dirs(tmp_path_factory.mktemp("tiny"))


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
