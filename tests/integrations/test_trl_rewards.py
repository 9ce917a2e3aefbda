"""TRL reward-function adapters called exactly as TRL calls them (keyword arguments, one value per
completion); these need no TRL install."""

from __future__ import annotations

import math

import pytest

from mstar_fast.data.records import Prompt
from mstar_fast.integrations.trl import outcome_reward, prm_reward, prm_step_rewards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer():
    from mstar_fast.prm import PRMScorer
    from mstar_fast.prm.testing import tiny_llava_prm

    model, processor = tiny_llava_prm(seed=0)
    return PRMScorer(model, processor)


class _Counting:
    def __init__(self, scorer):
        self.scorer, self.calls = scorer, []

    def score(self, prompt, texts):
        self.calls.append((prompt, list(texts)))
        return self.scorer.score(prompt, texts)


RESPONSES = ["2 + 2 = 4.\n\n# Answer\n\n4", "2 + 2 = 5.\n\nSo 5.\n\n# Answer\n\n5", "", "Just 4."]


def test_prm_reward_conversational_with_image_column(scorer, tiny_images):
    counting = _Counting(scorer)
    f = prm_reward(counting)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}]] * 4 + [[{"role": "user", "content": "And 3 + 3?"}]] * 4
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES * 2]
    # TRL decodes the image column separately per repeated row: equal pixels, distinct objects
    images = [tiny_images[0].copy() for _ in range(4)] + [tiny_images[1].copy() for _ in range(4)]
    out = f(prompts=prompts, completions=completions, completion_ids=[[1]] * 8, image=images, answer=["4"] * 8,
            trainer_state=None)
    assert f.__name__ == "prm_reward" and len(out) == 8
    assert len(counting.calls) == 2  # one prefill per distinct prompt
    for k, (prompt, texts) in enumerate(counting.calls):
        assert prompt.images and texts == RESPONSES
        want = scorer.score(Prompt(id="x", question=prompt.question, images=[tiny_images[k]]), RESPONSES)
        got = out[4 * k:4 * k + 4]
        assert got[2] == 0.0  # no steps
        for g, w in zip(got, want.scores):
            assert math.isnan(w) or g == pytest.approx(w, abs=1e-6)


def test_prm_reward_plain_and_embedded_images_and_reductions(scorer, tiny_images):
    counting = _Counting(scorer)
    plain = prm_reward(counting, reduce="last", no_steps=None)
    out = plain(prompts=["What is 2 + 2?"] * 4, completions=RESPONSES)
    want = scorer.score(Prompt(id="x", question="What is 2 + 2?"), RESPONSES)
    assert out[2] is None
    assert out[1] == pytest.approx(want.step_scores[1][-1], abs=1e-6)
    # images inserted in the messages by TRL (no image column)
    msg = [{"role": "user", "content": [{"type": "image", "image": tiny_images[0]}, {"type": "text", "text": "Q?"}]}]
    prm_reward(counting)(prompts=[msg, msg], completions=RESPONSES[:2])
    assert counting.calls[-1][0].images == [tiny_images[0]] and counting.calls[-1][0].question == "Q?"
    with pytest.raises(ValueError, match="reduce must be one of"):
        prm_reward(scorer, reduce="max")
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        plain(prompts=["a", "b"], completions=["x"])


def test_outcome_reward_with_choices_and_precision():
    f = outcome_reward()
    comps = ["So x = 5.\n\n# Answer\n\n5", "# Answer\n\nB", "# Answer\n\n3.14", "no answer here", "# Answer\n\n7"]
    out = f(prompts=["q"] * 5, completions=[[{"role": "assistant", "content": c}] for c in comps],
            answer=["5", "circle", "3.1416", "2", None], choices=[None, ["square", "circle"], None, None, None],
            precision=[None, None, 2, None, None], trainer_state=None)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="no 'answer' column"):
        f(prompts=["q"], completions=["# Answer\n\n1"], solution=["1"])


def test_prm_step_rewards_sit_on_the_step_end_tokens(scorer):
    tok = scorer.tokenizer
    texts = ["Add 2 and 2.\n\nWe get 4.\n\n# Answer\n\n4", "One step only", "   "]
    ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    dense = prm_step_rewards(scorer, ["What is 2 + 2?"] * 3, ids)
    want = scorer.score(Prompt(id="x", question="What is 2 + 2?"), texts)
    assert [len(d) for d in dense] == [len(i) for i in ids]
    assert dense[2] == [0.0] * len(ids[2])
    for d, w, t, i in zip(dense[:2], want.step_scores, texts, ids):
        hits = [k for k, v in enumerate(d) if v != 0.0]
        assert [d[k] for k in hits] == pytest.approx(w, abs=1e-6)
        step_texts = ["Add 2 and 2.", "We get 4.", "# Answer\n\n4"] if len(w) == 3 else ["One step only"]
        end = 0
        for k, st in zip(hits, step_texts):
            end = t.index(st, end) + len(st)
            assert len(tok.decode(i[:k + 1], skip_special_tokens=True)) >= end
            assert len(tok.decode(i[:k], skip_special_tokens=True)) < end
