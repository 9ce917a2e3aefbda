"""Tiny-model factory, loading and prompt formatting (no hub: everything is built locally)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import ARCHS, make_tiny_vlm, read_tiny_spec
from mstar_fast.demo.tokenizer import train_tiny_tokenizer
from mstar_fast.models import encode_prompt, load_policy

VLM_ARCHS = [a for a in ARCHS if a != "llama"]
from tests.conftest import TINY_SMALL as SMALL


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "img.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
    return str(path)


def test_tokenizer_round_trips_ascii_and_keeps_step_separator():
    tok = train_tiny_tokenizer(["<image>"], vocab_size=400)
    text = "".join(chr(c) for c in range(32, 127)) + "\n\nStep 2: 3 * 4 = 12\n\n# Answer\n\n12"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    step = tok.convert_tokens_to_ids("\n\n")
    assert ids.count(step) == 3  # "\n\n" is one non-special token: it survives skip_special_tokens
    assert tok.eos_token_id == 0 and tok.convert_tokens_to_ids("<image>") == 1
    assert len(tok) <= 400


@pytest.mark.parametrize("arch", ARCHS)
def test_make_and_load(tiny_dirs, image, arch):
    spec = read_tiny_spec(tiny_dirs[arch])
    assert spec.arch == arch and spec.vocab_size <= SMALL["vocab_size"] and spec.num_parameters > 0
    model, processor = load_policy(tiny_dirs[arch])
    assert not model.training
    assert model.get_input_embeddings().weight.shape[0] == spec.vocab_size
    prompt = Prompt(id="p", question="What is 2 + 3?", images=[image] if arch != "llama" else [])
    enc = encode_prompt(processor, prompt)
    if arch != "llama":
        cfg = model.config
        image_id = cfg.image_token_id if hasattr(cfg, "image_token_id") else cfg.image_token_index
        assert int((enc["input_ids"] == image_id).sum()) == spec.num_image_tokens  # square image: fixed count
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 3)


def test_seed_fixes_the_weights(tmp_path):
    a = make_tiny_vlm("llava", tmp_path / "a", seed=3, **SMALL)
    b = make_tiny_vlm("llava", tmp_path / "b", seed=3, **SMALL)
    c = make_tiny_vlm("llava", tmp_path / "c", seed=4, **SMALL)
    wa, wb, wc = (load_policy(d)[0].get_input_embeddings().weight for d in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny_vlm("gpt5", tmp_path)
    with pytest.raises(ValueError, match="multiple of 2"):
        make_tiny_vlm("llava", tmp_path, image_size=20, patch_size=8)
    with pytest.raises(ValueError, match="dtype"):
        load_policy(tmp_path, dtype="float8")
