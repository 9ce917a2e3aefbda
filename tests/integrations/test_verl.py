"""verl adapters called exactly as verl's reward managers call them (verl itself cannot be installed on
this CPU machine; the call conventions are those of its ``naive`` and ``batch`` reward managers)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from mstar_fast.data.records import Prompt
from mstar_fast.integrations import verl as mverl

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_like_verl(tmp_path, source: str, name: str):
    """What verl's ``get_custom_reward_fn`` does with ``custom_reward_function.path`` / ``.name``."""
    path = tmp_path / "reward.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_compute_score_as_the_naive_manager_calls_it(tmp_path):
    fn = _load_like_verl(tmp_path, "from mstar_fast.integrations.verl import compute_score\n", "compute_score")
    call = lambda s, g, e=None: fn(data_source="mathvista", solution_str=s, ground_truth=g, extra_info=e)  # noqa: E731
    assert call("Area = 12.\n\n# Answer\n\n12", "12") == 1.0
    assert call("# Answer\n\n13", "12") == 0.0
    assert call("The answer is (B)", "circle", {"choices": ["square", "circle"]}) == 1.0
    assert call("# Answer\n\n3.14", {"answer": "3.1416", "precision": 2}) == 1.0
    assert call("# Answer\n\n3.15", {"answer": "3.1416", "precision": 2}) == 0.0
    assert call("# Answer\n\n4", None) == 0.0
    # positional use and extra reward kwargs (custom_reward_function.reward_kwargs) are accepted
    assert mverl.compute_score("src", "# Answer\n\n4", "4", None, some_kwarg=1) == 1.0


@pytest.fixture(scope="module")
def scorer():
    from mstar_fast.prm import PRMScorer
    from mstar_fast.prm.testing import tiny_llava_prm

    model, processor = tiny_llava_prm(seed=0)
    return PRMScorer(model, processor)


def test_prm_batch_reward_as_the_batch_manager_calls_it(scorer, tmp_path, tiny_images):
    img = tmp_path / "a.png"
    tiny_images[0].save(img)
    built = []

    def factory():
        built.append(1)
        return scorer

    reward = mverl.PRMBatchReward(factory, with_accuracy=True)
    sols = ["2 + 2 = 4.\n\n# Answer\n\n4", "2 + 2 = 5.\n\n# Answer\n\n5", "", "3 + 3 = 6.\n\n# Answer\n\n6"]
    infos = [{"question": "What is 2 + 2?", "images": [str(img)]}] * 3 + [{"question": "What is 3 + 3?"}]
    assert not built  # lazy: nothing loaded at import / construction
    out = reward(data_sources=["geo"] * 4, solution_strs=sols, ground_truths=["4", "4", "4", "6"], extra_infos=infos)
    assert len(built) == 1
    want = scorer.score(Prompt(id="x", question="What is 2 + 2?", images=[str(img)]), sols[:3])
    assert [o["score"] for o in out[:2]] == pytest.approx(want.scores[:2], abs=1e-6)
    assert out[2]["score"] == 0.0 and math.isnan(want.scores[2])
    assert [o["acc"] for o in out] == [1.0, 0.0, 0.0, 1.0]
    floats = mverl.PRMBatchReward(scorer)(["geo"], sols[:1], ["4"], infos[:1])
    assert floats == pytest.approx(want.scores[:1], abs=1e-6)
    with pytest.raises(ValueError, match="has no 'question'"):
        reward(["geo"], ["x"], ["1"], [{"prompt": "q"}])
    with pytest.raises(ValueError, match="2 data_sources, 1 solution_strs"):
        reward(["a", "b"], ["x"], ["1"], [None])
