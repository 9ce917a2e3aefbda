"""sample_from_logits on every backend this machine has: exact tier, statistical tier (chi-square at a
fixed seed against the exactly computed filtered distribution), seeds, logprobs, bad input."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.ops import sample_from_logits, use_backend
from mstar_fast.ops.reference import GREEDY_TEMPERATURE, filtered_probs_reference, philox_uniform
from tests.ops._util import backend_device, chi2_quantile, chi2_stat

OP = "sample_from_logits"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw_counts(backend, row, n, dtype=torch.float32, **params):
    """n draws from one logits row (repeated with seeds 0..n-1); returns (counts [V], exact probs [V])."""
    dev = backend_device(backend)
    logits = row.to(dtype).expand(n, -1).contiguous().to(dev)
    seeds = torch.arange(n, dtype=torch.int64, device=dev) * 7919 + 11
    with use_backend(backend):
        tok = sample_from_logits(logits, seed=seeds, **params).cpu()
    V = row.shape[0]
    full = {k: (v if isinstance(v, torch.Tensor) else torch.full((1,), v)) for k, v in params.items()}
    probs = filtered_probs_reference(
        row.to(dtype).view(1, V).float(),
        full.get("temperature", torch.ones(1)).float().view(1),
        full.get("top_k", torch.zeros(1)).long().view(1),
        full.get("top_p", torch.ones(1)).float().view(1),
        full.get("min_p", torch.zeros(1)).float().view(1),
    )[0]
    return torch.bincount(tok, minlength=V), probs


def _n_draws(backend: str, V: int = 111) -> int:
    # The Triton interpreter runs one Python program per row, and the sort-based reference sorts every
    # repeated row: 1e5 draws at V=1000 would take minutes on those two, so they get fewer.
    if backend == "triton":
        return 5_000 if V > 500 else 20_000
    return 25_000 if backend == "torch" and V > 500 else 100_000


# ---------------------------------------------------------------- numerical edges


@pytest.mark.parametrize("V", [50, 4099])
def test_tiny_positive_temperature_is_greedy_with_finite_logprobs(backend, V):
    """A subnormal or tiny temperature (below GREEDY_TEMPERATURE) samples the argmax and reports the logprob
    under T = 1, like T = 0; V = 4099 takes the cpp kernel's large-vocabulary, filter-free path."""
    x = torch.randn(6, V, generator=_gen(V)) * 3
    t = torch.tensor([1e-40, 1e-38, 1e-30, 1e-7, 0.99 * GREEDY_TEMPERATURE, 0.0])
    dev = backend_device(backend)
    with use_backend(backend):
        for seed in range(3):
            tok, lp = sample_from_logits(x.to(dev), temperature=t.to(dev), seed=seed, return_logprobs=True)
            assert torch.equal(tok.cpu(), x.argmax(dim=1))
            want = torch.log_softmax(x.double(), dim=1).gather(1, x.argmax(dim=1, keepdim=True)).view(-1)
            assert bool(torch.isfinite(lp).all()), lp
            torch.testing.assert_close(lp.cpu().double(), want, atol=1e-4, rtol=1e-4)


def test_greedy_epsilon_is_the_same_on_every_backend(backend):
    """Just above GREEDY_TEMPERATURE a row still samples; just below it is greedy: the threshold is one
    value shared by every backend. Logits 0 and -T: token 1 has probability 1 / (1 + e) = 0.27 at T."""
    n, T = 64, 2 * GREEDY_TEMPERATURE
    x = torch.tensor([[0.0, -T]]).expand(n, 2).contiguous().to(backend_device(backend))
    with use_backend(backend):
        hot = sample_from_logits(x, temperature=T, seed=5).cpu()
        cold = sample_from_logits(x, temperature=0.9 * GREEDY_TEMPERATURE, seed=5).cpu()
    assert 0 < int(hot.sum()) < n  # P(no token 1 in 64 draws) = 0.73^64 ~ 2e-9
    assert int(cold.sum()) == 0


@pytest.mark.parametrize("params", [dict(temperature=0.5), dict(temperature=1.0), dict(temperature=3.0, top_p=0.9),
                                    dict(temperature=0.7, top_k=2), dict(temperature=0.0)])
def test_logits_near_the_float32_maximum_give_finite_logprobs(backend, params):
    """Finite logits near 3.4e38 (overflow of l / T unless the max is subtracted first)."""
    big = torch.finfo(torch.float32).max
    x = torch.tensor([[big, 0.5 * big, -big, 0.0], [-big, 0.9 * big, big, big * 0.99], [1.0, 2.0, big, -1.0]])
    dev = backend_device(backend)
    with use_backend(backend):
        tok, lp = sample_from_logits(x.to(dev), seed=1, return_logprobs=True, **params)
    assert torch.equal(tok.cpu(), x.argmax(dim=1))  # every other token trails by >= 1e36: weight 0
    assert torch.equal(lp.cpu(), torch.zeros(3)), lp


# ---------------------------------------------------------------- exact tier


@pytest.mark.parametrize("V", [1, 7, 111, 32000])
def test_greedy_is_argmax_lowest_index_on_ties(backend, V):
    g = _gen(V)
    x = torch.randn(9, V, generator=g)
    if V > 3:
        x[1, 2] = x[1, V - 1] = x[1].max() + 1  # tie: index 2 wins
        x[2, :] = 0.5  # all tied: index 0
    with use_backend(backend):
        tok = sample_from_logits(x.to(backend_device(backend)), temperature=0.0, seed=3).cpu()
    assert torch.equal(tok, x.argmax(dim=1))
    if V > 3:
        assert tok[1] == 2 and tok[2] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_hot_rows_always_give_their_token(backend, dtype):
    V = 1001
    hot = torch.tensor([0, 500, 1000, 37])
    x = torch.full((4, V), float("-inf"))
    x[torch.arange(4), hot] = torch.tensor([0.0, -3.0, 5.0, 1e4])
    for kw in [dict(temperature=1.0), dict(temperature=1.7, top_p=0.5), dict(top_k=3, min_p=0.2), dict(temperature=0.0)]:
        with use_backend(backend):
            tok = sample_from_logits(x.to(dtype).to(backend_device(backend)), seed=torch.arange(4), **kw).cpu()
        assert torch.equal(tok, hot), kw


@pytest.mark.parametrize("V", [111, 151936])
def test_top_k_1_and_tiny_top_p_give_argmax(backend, V):
    x = torch.randn(5, V, generator=_gen(1)) * 2
    dev = backend_device(backend)
    with use_backend(backend):
        a = sample_from_logits(x.to(dev), temperature=1.3, top_k=1, seed=torch.arange(5)).cpu()
        b = sample_from_logits(x.to(dev), temperature=1.3, top_p=1e-6, seed=torch.arange(5)).cpu()
        c = sample_from_logits(x.to(dev), temperature=0.8, min_p=1.0, seed=torch.arange(5)).cpu()
    assert torch.equal(a, x.argmax(1)) and torch.equal(b, x.argmax(1)) and torch.equal(c, x.argmax(1))


def test_logprobs_are_unfiltered_temperature_scaled_log_softmax(backend):
    x = torch.randn(6, 333, generator=_gen(2)) * 3
    t = torch.tensor([0.0, 0.5, 1.0, 1.5, 1.0, 0.7])
    with use_backend(backend):
        tok, lp = sample_from_logits(x.to(backend_device(backend)), temperature=t.to(backend_device(backend)), top_k=10,
                                     top_p=0.9, seed=5, return_logprobs=True)
    tok, lp = tok.cpu(), lp.cpu()
    scale = torch.where(t == 0, torch.ones_like(t), t).view(-1, 1)
    want = torch.log_softmax(x / scale, dim=1).gather(1, tok.view(-1, 1)).view(-1)
    torch.testing.assert_close(lp, want, atol=1e-4, rtol=1e-4)
    assert lp.dtype == torch.float32
    with use_backend(backend):  # top-p alone (cpp: the path that stores e for the whole row)
        tok, lp = sample_from_logits(x.to(backend_device(backend)), temperature=t.to(backend_device(backend)), top_p=0.9,
                                     seed=5, return_logprobs=True)
    want = torch.log_softmax(x / scale, dim=1).gather(1, tok.cpu().view(-1, 1)).view(-1)
    torch.testing.assert_close(lp.cpu(), want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- statistical tier

CASES = {
    "temperature": dict(temperature=0.8),
    "top_k": dict(top_k=7),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.05),
    "all": dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02),
    "hot_top_p": dict(temperature=1.6, top_p=0.95),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("V", [111, 1000])
def test_frequencies_match_the_filtered_distribution(backend, case, V):
    row = torch.randn(V, generator=_gen(V)) * 1.5
    counts, probs = _draw_counts(backend, row, _n_draws(backend, V), **CASES[case])
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    stat, df = chi2_stat(counts, probs)
    assert stat < chi2_quantile(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.parametrize("params", [dict(top_k=9), dict(top_k=9, top_p=0.5), dict(top_p=0.3, min_p=0.1)])
def test_ties_are_kept_or_dropped_together(backend, params):
    """Equal logits anywhere in the row (across tiles and vector tails) get the same fate: with k=9 the
    9th value (0.0) is tied 2000 times, and all 2000 are kept."""
    g = _gen(3)
    row = torch.cat([torch.full((3,), 5.0), torch.full((5,), 4.0), torch.zeros(2000), torch.full((100,), -200.0)])
    row = row[torch.randperm(row.numel(), generator=g)]
    counts, probs = _draw_counts(backend, row, _n_draws(backend, row.numel()), **params)
    assert counts[probs == 0].sum() == 0
    stat, df = chi2_stat(counts, probs)
    assert stat < chi2_quantile(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params", [dict(top_k=10), dict(top_k=10, top_p=0.5, temperature=2.0)])
@pytest.mark.backends("cpp")
def test_top_k_boundary_with_near_ties_cpp(backend, dtype, params):
    """Logits a few ulps below the k-th value (cpp's top-k fast path cannot bound them away from the k-th
    e and redoes the row exactly); in bf16 they round onto the k-th value and are kept as ties. cpp only:
    the other backends have no such path, and the tie tests above cover their semantics."""
    g = _gen(5)
    row = torch.cat([torch.full((3,), 5.0), torch.full((30,), 4.0), torch.full((40,), 4.0 - 2e-6),
                     torch.randn(300, generator=g)])
    row = row[torch.randperm(row.numel(), generator=g)]
    counts, probs = _draw_counts(backend, row, _n_draws(backend, row.numel()), dtype=dtype, **params)
    assert counts[probs == 0].sum() == 0
    stat, df = chi2_stat(counts, probs)
    assert stat < chi2_quantile(df), f"chi2={stat:.1f} df={df}"


def test_per_row_temperatures_in_one_batch(backend):
    V, n = 50, _n_draws(backend)
    row = torch.randn(V, generator=_gen(9))
    temps = torch.tensor([0.4, 1.0, 2.0]).repeat_interleave(n // 3)
    m = temps.shape[0]
    dev = backend_device(backend)
    with use_backend(backend):
        tok = sample_from_logits(row.expand(m, -1).contiguous().to(dev), temperature=temps.to(dev),
                                 top_p=0.9, seed=torch.arange(m, device=dev)).cpu()
    for i, T in enumerate([0.4, 1.0, 2.0]):
        part = tok[i * (n // 3):(i + 1) * (n // 3)]
        probs = filtered_probs_reference(row.view(1, V), torch.tensor([T]), torch.zeros(1), torch.tensor([0.9]),
                                         torch.zeros(1))[0]
        counts = torch.bincount(part, minlength=V)
        assert counts[probs == 0].sum() == 0
        stat, df = chi2_stat(counts, probs)
        assert stat < chi2_quantile(df), f"T={T}: chi2={stat:.1f} df={df}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_frequencies(backend, dtype):
    row = torch.randn(257, generator=_gen(4)) * 2
    counts, probs = _draw_counts(backend, row, _n_draws(backend) // 2, dtype=dtype, temperature=0.9, top_p=0.9)
    assert counts[probs == 0].sum() == 0
    stat, df = chi2_stat(counts, probs)
    assert stat < chi2_quantile(df)


@pytest.mark.parametrize("V,params", [(4099, dict(temperature=1.3, top_k=600, top_p=0.8)),
                                      (4099, dict(temperature=1.2, top_k=1500, top_p=0.9, min_p=0.001)),
                                      (32000, dict(top_k=50)), (151936, dict(top_p=0.9, temperature=0.7)),
                                      (151936, dict(top_k=100, min_p=0.01)), (151936, dict(temperature=1.0))])
@pytest.mark.backends("cpp")
def test_large_vocab_frequencies_cpp(backend, V, params):
    """Large non-power-of-two vocabularies, where vector tails and the top-k pruning loop matter.
    cpp only: the sort-based reference and the interpreter would take minutes here; the kernel has no
    V-dependent branches that the small-V tests above do not exercise on those backends."""
    g = _gen(V)
    row = torch.randn(V, generator=g)
    row[torch.randperm(V, generator=g)[:300]] += 6.0  # a head of ~300 likely tokens among V
    counts = torch.zeros(V, dtype=torch.int64)
    rows = 250
    logits = row.expand(rows, -1).contiguous()
    with use_backend("cpp"):
        for off in range(40):  # 10000 draws: new offset, same seeds
            counts += torch.bincount(sample_from_logits(logits, seed=torch.arange(rows), offset=off, **params),
                                     minlength=V)
    full = {k: torch.tensor([float(v)]) for k, v in params.items()}
    probs = filtered_probs_reference(row.view(1, V), full.get("temperature", torch.ones(1)),
                                     full.get("top_k", torch.zeros(1)), full.get("top_p", torch.ones(1)),
                                     full.get("min_p", torch.zeros(1)))[0]
    assert counts[probs == 0].sum() == 0
    stat, df = chi2_stat(counts, probs)
    assert stat < chi2_quantile(df), f"chi2={stat:.1f} df={df}"


# ---------------------------------------------------------------- seeds


def test_row_draw_depends_only_on_row_seed_offset(backend):
    dev = backend_device(backend)
    x = torch.randn(8, 500, generator=_gen(7))
    seeds = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12])
    kw = dict(temperature=1.2, top_p=0.95, top_k=100, offset=17)
    with use_backend(backend):
        full = sample_from_logits(x.to(dev), seed=seeds.to(dev), **kw).cpu()
        perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
        permuted = sample_from_logits(x[perm].to(dev), seed=seeds[perm].to(dev), **kw).cpu()
        singles = [sample_from_logits(x[i:i + 1].to(dev), seed=seeds[i:i + 1].to(dev), **kw).item() for i in range(8)]
    assert torch.equal(permuted, full[perm])
    assert singles == full.tolist()


def test_offsets_give_different_streams(backend):
    dev = backend_device(backend)
    x = torch.zeros(400, 1000, device=dev)  # uniform: any two streams agree on 1/1000 of draws
    seeds = torch.arange(400, device=dev)
    with use_backend(backend):
        a = sample_from_logits(x, seed=seeds, offset=0).cpu()
        b = sample_from_logits(x, seed=seeds, offset=1).cpu()
        a2 = sample_from_logits(x, seed=seeds, offset=0).cpu()
    assert torch.equal(a, a2)
    assert (a == b).float().mean() < 0.02
    assert len(set(a.tolist())) > 300  # rows with different seeds do not collapse


def test_seed_none_uses_torch_generator_and_int_seed_decorrelates_rows(backend):
    dev = backend_device(backend)
    x = torch.zeros(300, 1000, device=dev)
    with use_backend(backend):
        torch.manual_seed(123)
        a = sample_from_logits(x).cpu()
        torch.manual_seed(123)
        b = sample_from_logits(x).cpu()
        c = sample_from_logits(x).cpu()
        d = sample_from_logits(x, seed=42).cpu()
        e = sample_from_logits(x, seed=42).cpu()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d, e) and len(set(d.tolist())) > 200


def test_philox_known_answers():
    # Random123 known-answer vectors for Philox4x32-10.
    from mstar_fast.ops.reference import philox4x32_10

    z = torch.zeros(1, dtype=torch.int64)
    f = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    assert [int(v) for v in philox4x32_10([z] * 4, [z] * 2)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert [int(v) for v in philox4x32_10([f] * 4, [f] * 2)] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    u = philox_uniform(torch.arange(10000), 0, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


# ---------------------------------------------------------------- bad input


def test_bad_rows_raise_value_error_naming_the_row(backend):
    dev = backend_device(backend)
    x = torch.randn(4, 100)
    x[2, 50] = float("nan")
    with use_backend(backend), pytest.raises(ValueError, match="row 2 holds NaN"):
        sample_from_logits(x.to(dev), seed=1, check=True)  # check: the default only on CPU tensors
    y = torch.randn(4, 100)
    y[1] = float("-inf")
    with use_backend(backend), pytest.raises(ValueError, match="row 1 is all -inf"):
        sample_from_logits(y.to(dev), temperature=0.0, check=True)
    z = torch.randn(3, 100)
    z[0, 3] = float("inf")
    with use_backend(backend), pytest.raises(ValueError, match="row 0 holds NaN or \\+inf"):
        sample_from_logits(z.to(dev), top_p=0.5, seed=1, check=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.1), "temperature must be finite and >= 0"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(top_k=2.5), "top_k must be an integer"),
        (dict(min_p=1.5), "min_p"),
        (dict(temperature=torch.ones(5)), "temperature must be a scalar or a \\[3\\] tensor"),
        (dict(top_k=torch.ones(3)), "top_k must be an integer tensor"),
        (dict(top_p=torch.ones(3, device="meta")), "top_p is on meta"),
        (dict(seed=torch.zeros(3)), "seed must be an integer tensor"),
        (dict(seed=torch.zeros(2, dtype=torch.int64)), "seed must be an int or a \\[3\\] tensor"),
        (dict(seed="x"), "seed must be None, an int"),
        (dict(offset=-1), "offset must be an int"),
        (dict(temperature="hot"), "temperature must be a number"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_from_logits(torch.randn(3, 10), **kwargs)


def test_bad_logits_raise_value_error():
    with pytest.raises(ValueError, match="floating point"):
        sample_from_logits(torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        sample_from_logits(torch.randn(5))
    with pytest.raises(ValueError, match="empty vocabulary"):
        sample_from_logits(torch.randn(2, 0))
    with pytest.raises(ValueError, match="torch.Tensor"):
        sample_from_logits([[0.1, 0.2]])


_NAN, _INF = float("nan"), float("inf")


def _row_tensor(value, B, dtype):
    return value if isinstance(value, torch.Tensor) else torch.full((B,), value, dtype=dtype)


def _nan_row(x):
    x[2, 4] = _NAN
    return x


def _inf_row(x):
    x[0, 1] = _INF
    return x


def _masked_row(x):
    x[1] = -_INF
    return x


# (case id, logits transform, keyword arguments, message both layers give). Everything the Python API
# rejects after broadcasting, the compiled op must reject too.
INVALID = [
    ("temperature<0", None, dict(temperature=-0.1), "temperature must be finite and >= 0"),
    ("temperature=nan", None, dict(temperature=_NAN), "temperature must be finite and >= 0"),
    ("temperature=inf", None, dict(temperature=_INF), "temperature must be finite and >= 0"),
    ("top_k<0", None, dict(top_k=-1), "top_k must be >= 0"),
    ("top_p=0", None, dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    ("top_p>1", None, dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    ("top_p=nan", None, dict(top_p=_NAN), r"top_p must be in \(0, 1\]"),
    ("min_p<0", None, dict(min_p=-0.25), r"min_p must be in \[0, 1\]"),
    ("min_p>1", None, dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
    ("min_p=nan", None, dict(min_p=_NAN), r"min_p must be in \[0, 1\]"),
    ("top_k-float", None, dict(top_k=torch.ones(3)), "top_k must be an int"),
    ("seed-float", None, dict(seed=torch.zeros(3)), "seed must be an int"),
    ("temperature-bool", None, dict(temperature=torch.ones(3, dtype=torch.bool)),
     "temperature must be a (real|floating-point) tensor"),
    ("temperature-shape", None, dict(temperature=torch.ones(5)), r"temperature must (be a scalar or a|have shape) \[3\]"),
    ("seed-2d", None, dict(seed=torch.zeros(3, 1, dtype=torch.int64)), r"seed must (be an int or a|have shape) \[3\]"),
    ("top_p-device", None, dict(top_p=torch.ones(3, device="meta")), "top_p is on meta"),
    ("min_p-device", None, dict(min_p=torch.zeros(3, device="meta")), "min_p is on meta"),
    ("offset<0", None, dict(offset=-1), "offset must be"),
    ("nan-row", _nan_row, dict(), r"logits row 2 holds NaN or \+inf"),
    ("inf-row", _inf_row, dict(top_p=0.5), r"logits row 0 holds NaN or \+inf"),
    ("all-inf-row", _masked_row, dict(temperature=0.0), "logits row 1 is all -inf"),
    ("logits-int", lambda x: x.long(), dict(), "logits must be"),
    ("logits-1d", lambda x: x[0], dict(), "logits must be"),
]


@pytest.mark.backends("cpp", "cuda")
@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_compiled_op_rejects_what_the_python_api_rejects(backend, case):
    """Each invalid input raises ValueError with the same message from ops.sample_from_logits and from
    torch.ops.mstar_fast.sample_from_logits called directly (a caller that skips the Python layer)."""
    import mstar_fast._ext as ext

    _, transform, kwargs, match = case
    dev = backend_device(backend)
    x = torch.randn(3, 10)
    x = (transform(x) if transform else x).to(dev)
    kwargs = {k: v.to(dev) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v for k, v in kwargs.items()}
    with use_backend(backend), pytest.raises(ValueError, match=match):
        sample_from_logits(x, check=True, **kwargs)

    ext.load_extension()
    B = x.shape[0] if x.dim() == 2 else 3
    args = [
        x,
        _row_tensor(kwargs.get("temperature", 1.0), B, torch.float32),
        _row_tensor(kwargs.get("top_k", 0), B, torch.int64),
        _row_tensor(kwargs.get("top_p", 1.0), B, torch.float32),
        _row_tensor(kwargs.get("min_p", 0.0), B, torch.float32),
        kwargs.get("seed", torch.arange(B, dtype=torch.int64)),
    ]
    args = [a.to(dev) if a.device.type == "cpu" else a for a in args]
    with pytest.raises(ValueError, match=match):
        torch.ops.mstar_fast.sample_from_logits(*args, kwargs.get("offset", 0), True)


@pytest.mark.backends("cpp")
def test_compiled_op_accepts_valid_expanded_inputs(backend):
    """The checks do not reject what the Python layer passes: the direct call equals the API's draw."""
    import mstar_fast._ext as ext

    ext.load_extension()
    x = torch.randn(3, 10)
    t, k = torch.tensor([0.0, 0.7, 1.3]), torch.tensor([0, 3, 0])
    p, mp, seed = torch.tensor([1.0, 0.9, 0.5]), torch.tensor([0.0, 0.0, 0.1]), torch.tensor([4, 5, 6])
    tok, lp = torch.ops.mstar_fast.sample_from_logits(x, t, k, p, mp, seed, 2, True)
    with use_backend(backend):
        want, want_lp = sample_from_logits(x, t, k, p, mp, seed=seed, offset=2, return_logprobs=True)
    assert torch.equal(tok, want) and torch.equal(lp, want_lp)


def test_empty_batch_and_float64():
    assert sample_from_logits(torch.randn(0, 10)).shape == (0,)
    x = torch.randn(4, 10, dtype=torch.float64)
    assert torch.equal(sample_from_logits(x, temperature=0), x.argmax(1))
