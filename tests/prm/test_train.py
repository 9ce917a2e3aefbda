"""PRM training on a tiny random LLaVA with synthetic step labels, for both heads: the loss falls, the
trained scorer ranks good-labelled steps above bad ones on its training data, training sees exactly the
scorer's tokens and positions, the policy is left untouched, and the saved directory loads back into a
PRMScorer with the same scores."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.data import Prompt
from mstar_fast.prm import PRMScorer
from mstar_fast.prm.testing import tiny_image
from mstar_fast.prm.data import PRMExample
from mstar_fast.prm.train import _PRMLoss, encode_prm_example, load_prm, prm_loss, train_prm

N_PROMPTS = 4


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy

    d = make_tiny_vlm("llava", tmp_path_factory.mktemp("policy"), vocab_size=400, hidden_size=32, image_size=16,
                      num_layers=1)
    return load_policy(d)


def _data():
    """Per prompt, a correct response (every step labelled 1) and one whose second step is wrong (that
    step and the answer labelled 0), with a word cue in the wrong step so a tiny model learns it fast."""
    prompts, examples = [], []
    for i in range(N_PROMPTS):
        prompts.append(Prompt(id=f"p{i}", question=f"What is {i} + 2?", images=[tiny_image(i, (16, 16))],
                              answer=str(i + 2)))
        good = [f"Add {i} and 2.", f"{i} + 2 = {i + 2}, so it is right.", f"# Answer\n\n{i + 2}"]
        bad = [f"Add {i} and 2.", f"{i} + 2 = {i + 7}, not sure why.", f"# Answer\n\n{i + 7}"]
        examples.append(PRMExample(prompt_id=f"p{i}", index=0, steps=good, labels=[1.0, 1.0, 1.0]))
        examples.append(PRMExample(prompt_id=f"p{i}", index=1, steps=bad, labels=[1.0, 0.0, 0.0]))
    return prompts, examples


def _scores(scorer: PRMScorer, prompts, examples) -> dict[tuple[str, int], list[float]]:
    out = {}
    for p in prompts:
        mine = [e for e in examples if e.prompt_id == p.id]
        res = scorer.score(p, ["\n\n".join(e.steps) for e in mine])
        out.update({e.key: s for e, s in zip(mine, res.step_scores)})
    return out


@pytest.mark.parametrize("head, lr", [("reward_tokens", 3e-3), ("value", 2e-3)])
def test_train_rank_save_load(policy, tmp_path, head, lr):
    model, processor = policy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vocab = len(processor.tokenizer)
    prompts, examples = _data()
    losses: list[float] = []
    scorer = train_prm(model, processor, prompts, examples, head=head, lr=lr, epochs=20, batch_size=8,
                       micro_batch_size=4, seed=0, out_dir=tmp_path / "prm", on_step=lambda s, l: losses.append(l))

    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    scores = _scores(scorer, prompts, examples)
    good = [s for e in examples for s, y in zip(scores[e.key], e.labels) if y == 1.0]
    bad = [s for e in examples for s, y in zip(scores[e.key], e.labels) if y == 0.0]
    assert min(good) > max(bad), (good, bad)
    for i in range(N_PROMPTS):  # the wrong step ranks below the right one at the same position
        assert scores[(f"p{i}", 0)][1] > scores[(f"p{i}", 1)][1]

    # Training saw the scorer's own tokens and tag positions: its logits give the scorer's scores.
    ex = examples[1]
    prefix = scorer.encode_prompt(prompts[0])
    enc, tags = encode_prm_example(scorer, prefix, ex)
    ids, rel = scorer.encode_response("\n\n".join(ex.steps))
    assert enc.input_ids.tolist() == prefix["input_ids"][0].tolist() + ids
    assert tags == [prefix["input_ids"].shape[1] + t for t in rel]
    value_head = None
    if head == "value":
        value_head = torch.nn.Linear(scorer.head_weight.shape[1], 1)
        value_head.weight.data.copy_(scorer.head_weight)
        value_head.bias.data.copy_(scorer.head_bias)
    module = _PRMLoss(scorer.model, scorer.backbone, value_head, scorer.reward_token_ids)
    batch = {"input_ids": enc.input_ids[None], "attention_mask": torch.ones_like(enc.input_ids)[None],
             **{k: v for k, v in enc.extras.items()}}
    with torch.no_grad():
        logits = module(batch, torch.tensor(tags))
    z = logits[:, 0] - logits[:, 1] if head == "reward_tokens" else logits[:, 0]
    torch.testing.assert_close(torch.sigmoid(z), torch.tensor(scores[ex.key]), atol=1e-5, rtol=0)

    # The policy is untouched: same weights, same tokenizer (the tag went into the PRM's copy only).
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert len(processor.tokenizer) == vocab and len(scorer.tokenizer) == vocab + 1

    loaded = load_prm(tmp_path / "prm")
    assert (loaded.reward_token_ids is None) == (head == "value")
    reloaded = _scores(loaded, prompts, examples)
    for k, v in scores.items():
        torch.testing.assert_close(torch.tensor(reloaded[k]), torch.tensor(v), atol=1e-5, rtol=0)


def test_prm_loss_is_the_two_token_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 2, generator=g)
    y = torch.rand(7, generator=g)
    logp = torch.log_softmax(logits, dim=-1)
    expected = -(y * logp[:, 0] + (1 - y) * logp[:, 1]).mean()
    torch.testing.assert_close(prm_loss(logits, y), expected)
    torch.testing.assert_close(prm_loss(logits[:, :1], y),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y))
    with pytest.raises(ValueError, match="logits must be"):
        prm_loss(torch.zeros(3, 3), torch.zeros(3))


def test_input_checks(policy, tmp_path):
    model, processor = policy
    prompts, examples = _data()
    with pytest.raises(ValueError, match="head must be"):
        train_prm(model, processor, prompts, examples, head="linear")
    with pytest.raises(ValueError, match="outside"):
        train_prm(model, processor, prompts, [PRMExample("p0", 0, ["a"], [1.5])])
    with pytest.raises(ValueError, match="no Prompt"):
        train_prm(model, processor, prompts[1:], examples[:1])
    with pytest.raises(ValueError, match="re-split"):  # a step holding the separator becomes two steps
        train_prm(model, processor, prompts, [PRMExample("p0", 0, ["a\n\nb"], [1.0])])
    with pytest.raises(ValueError, match="must encode to one token"):
        train_prm(model, processor, prompts, examples, add_step_tag=False)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a PRM directory"):
        train_prm(model, processor, prompts, examples[:1], epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="prm_config.json"):
        load_prm(tmp_path / "x")
