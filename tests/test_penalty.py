"""Tests for front_onnx.torch.penalty: the FRONT+ spectral regularizer.

Expectations come from the numpy core (``spectral.out_of_band_energy``) and scipy's DCT.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft as sfft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from front_onnx.numeric import spectral
from front_onnx.analysis.slots import FEATURE, INDEX, PARTS, SPATIAL, Layout
from front_onnx.torch import penalty as pen
from front_onnx.torch.penalty import module_layouts, spectral_penalty, spectral_shares

HYP = settings(max_examples=25, deadline=None)
keeps = st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0]) | st.floats(0.05, 1.0)
dim = st.integers(1, 12)


def _share(x: np.ndarray, layout, keep: float) -> float:
    return spectral_shares({"w": torch.tensor(x)}, keep, {"w": layout})["w"].item()


def _reference(x: np.ndarray, lay: Layout, keep: float) -> float:
    """The numpy core on the canonical tensor, cutting its feature axes only (spatial axes
    are transformed but kept whole by the extractor, which changes no energy)."""
    c = lay.to_canonical(x)
    return spectral.out_of_band_energy(c, [a for a, k in enumerate(lay.kinds) if k == FEATURE], keep)


# --------------------------------------------------------------------------
# (1) agreement with the numpy core
# --------------------------------------------------------------------------

LAYOUTS = {
    "linear [out, in]": (lambda o, i, k: (o, i), Layout((0, 1), (FEATURE, FEATURE))),
    "matmul [in, out]": (lambda o, i, k: (i, o), Layout((1, 0), (FEATURE, FEATURE))),
    "conv1d": (lambda o, i, k: (o, i, k), Layout((0, 1, 2), (FEATURE, FEATURE, SPATIAL))),
    "conv2d": (lambda o, i, k: (o, i, k, 3), Layout((0, 1, 2, 3), (FEATURE, FEATURE, SPATIAL, SPATIAL))),
    "bias": (lambda o, i, k: (o * i,), Layout((0,), (FEATURE,))),
    "fused qkv [3d, d]": (lambda o, i, k: (3 * o, i), Layout((0, 1), (PARTS, FEATURE, FEATURE), 3)),
    "fused qkv [d, 3d]": (lambda o, i, k: (i, 3 * o), Layout((1, 0), (PARTS, FEATURE, FEATURE), 3)),
    "fused bias [3d]": (lambda o, i, k: (3 * o,), Layout((0,), (PARTS, FEATURE), 3)),
    "embedding": (lambda o, i, k: (o, i), Layout((0, 1), (INDEX, FEATURE))),
    "head (index out)": (lambda o, i, k: (i, o), Layout((1, 0), (INDEX, FEATURE))),
    "depthwise conv": (lambda o, i, k: (o, 1, k, k), Layout((0, 1, 2, 3), (FEATURE, INDEX, SPATIAL, SPATIAL))),
}


@pytest.mark.parametrize("case", sorted(LAYOUTS))
@HYP
@given(o=dim, i=dim, k=st.integers(1, 4), keep=keeps, seed=st.integers(0, 2**31 - 1))
def test_matches_numpy_core(case, o, i, k, keep, seed):
    shape_of, lay = LAYOUTS[case]
    x = np.random.default_rng(seed).standard_normal(shape_of(o, i, k)) * 3.0 + 1.5
    assert _share(x, lay, keep) == pytest.approx(_reference(x, lay, keep), abs=1e-6)


@HYP
@given(o=dim, i=dim, keep=keeps, seed=st.integers(0, 2**31 - 1))
def test_kinds_tuple_is_a_canonical_layout(o, i, keep, seed):
    x = np.random.default_rng(seed).standard_normal((o, i))
    want = spectral.out_of_band_energy(x, (1,), keep)
    assert _share(x, (INDEX, FEATURE), keep) == pytest.approx(want, abs=1e-6)
    assert _share(x, ("feature", "feature"), keep) == pytest.approx(
        spectral.out_of_band_energy(x, (0, 1), keep), abs=1e-6)


def test_float32_close_to_core():
    x = np.random.default_rng(1).standard_normal((48, 96)).astype(np.float32)
    got = _share(x, (FEATURE, FEATURE), 0.4)
    assert got == pytest.approx(spectral.out_of_band_energy(x, (0, 1), 0.4), abs=1e-5)


def test_fft_route_matches_matrix_route(monkeypatch):
    x = np.random.default_rng(2).standard_normal((9, 11, 2))
    lay = Layout((0, 1, 2), (FEATURE, FEATURE, SPATIAL))
    want = _reference(x, lay, 0.45)
    monkeypatch.setattr(pen, "MATRIX_LIMIT", 0)
    assert _share(x, lay, 0.45) == pytest.approx(want, abs=1e-12)
    for n in (1, 2, 3, 4, 5, 7, 10, 11):
        y = np.random.default_rng(n).standard_normal((3, n))
        full = sfft.dct(y, norm="ortho", axis=-1)
        np.testing.assert_allclose(pen._dct_last_fft(torch.tensor(y)).numpy(), full, atol=1e-12)
        for k in range(1, n + 1):  # half spectrum (k <= n//2 + 1) and mirrored upper bins
            np.testing.assert_allclose(pen._dct_last_fft(torch.tensor(y), k).numpy(), full[:, :k], atol=1e-12)


def test_dct_rows_are_scipy_ortho():
    d = pen._dct_rows(10, 4, torch.float64, torch.device("cpu")).numpy()
    np.testing.assert_allclose(d, sfft.dct(np.eye(10), norm="ortho", axis=0)[:4], atol=1e-14)


def test_constant_and_skipped_tensors():
    const = torch.full((6, 8), 0.37, dtype=torch.float32, requires_grad=True)
    shares = spectral_shares({"c": const, "s": torch.tensor(2.0), "taps": torch.randn(3, 3)}, 0.5,
                             {"taps": (SPATIAL, SPATIAL)})
    assert set(shares) == {"c"}  # a scalar and a spatial-only tensor have no feature axis
    assert shares["c"].item() == 0.0
    shares["c"].backward()
    assert torch.isfinite(const.grad).all() and const.grad.abs().max() == 0
    zero = torch.zeros(5, 5, dtype=torch.float64, requires_grad=True)
    s = spectral_penalty({"z": zero}, 0.5)
    s.backward()
    assert s.item() == 0.0 and torch.isfinite(zero.grad).all()
    # keep=1: nothing is outside the corner
    assert spectral_penalty({"w": torch.randn(5, 7)}, 1.0).item() == 0.0
    assert spectral_penalty({}, 0.5).item() == 0.0


def test_errors():
    w = {"w": torch.randn(6, 4)}
    with pytest.raises(ValueError, match="keep"):
        spectral_penalty(w, 0.0)
    with pytest.raises(ValueError, match="weighting"):
        spectral_penalty(w, 0.5, weighting="max")
    with pytest.raises(ValueError, match="unknown parameter"):
        spectral_penalty(w, 0.5, {"v": (FEATURE,)})
    with pytest.raises(ValueError, match="does not fit"):
        spectral_penalty(w, 0.5, {"w": (FEATURE,)})
    with pytest.raises(ValueError, match="parts"):
        spectral_penalty(w, 0.5, {"w": Layout((0, 1), (PARTS, FEATURE, FEATURE), 4)})
    with pytest.raises(ValueError, match="kind"):
        spectral_penalty(w, 0.5, {"w": ("feature", "channel")})


# --------------------------------------------------------------------------
# (2) gradients
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,layout", [
    ((5, 7), Layout((0, 1), (FEATURE, FEATURE))),
    ((7, 5), Layout((1, 0), (FEATURE, FEATURE))),
    ((4, 3, 3, 3), Layout((0, 1, 2, 3), (FEATURE, FEATURE, SPATIAL, SPATIAL))),
    ((9, 4), Layout((0, 1), (PARTS, FEATURE, FEATURE), 3)),
])
def test_gradcheck(shape, layout):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spectral_shares({"w": t}, 0.5, {"w": layout})["w"], (x,))


def test_gradcheck_penalty_size_weighting():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: spectral_penalty({"a": p, "b": q}, 0.4, weighting="size"), (a, b))


# --------------------------------------------------------------------------
# (3) smooth vs white noise
# --------------------------------------------------------------------------

def test_smooth_tensor_has_no_out_of_band_energy():
    i = np.arange(64)[:, None]
    j = np.arange(96)[None, :]
    smooth = np.cos(np.pi * 2 * (2 * i + 1) / 128) * np.cos(np.pi * 3 * (2 * j + 1) / 192) + 0.5
    assert _share(smooth, (FEATURE, FEATURE), 0.25) < 1e-12
    assert _share(smooth.astype(np.float32), (FEATURE, FEATURE), 0.25) < 1e-5


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75])
def test_white_noise_share_is_one_minus_keep_squared(keep):
    x = torch.randn(256, 384, generator=torch.Generator().manual_seed(0))
    assert spectral_penalty({"w": x}, keep).item() == pytest.approx(1 - keep ** 2, abs=0.01)


def test_weighting():
    g = torch.Generator().manual_seed(3)
    params = {"big": torch.randn(40, 50, generator=g), "small": torch.randn(4, generator=g)}
    shares = spectral_shares(params, 0.5)
    mean = spectral_penalty(params, 0.5)
    size = spectral_penalty(params, 0.5, weighting="size")
    assert mean.item() == pytest.approx((shares["big"] + shares["small"]).item() / 2)
    assert size.item() == pytest.approx((2000 * shares["big"] + 4 * shares["small"]).item() / 2004, rel=1e-6)
    # (name, tensor) pairs and a generator of them work too
    assert spectral_penalty(iter(params.items()), 0.5).item() == pytest.approx(mean.item())


# --------------------------------------------------------------------------
# (4) optimizing the penalty
# --------------------------------------------------------------------------

def test_adam_reduces_penalty():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    start = spectral_penalty(lin, 0.5).item()
    for _ in range(30):
        opt.zero_grad()
        loss = spectral_penalty(lin, 0.5)
        loss.backward()
        opt.step()
    end = spectral_penalty(lin, 0.5).item()
    assert start > 0.5 and end < 0.5 * start


def test_regularized_training_keeps_task_and_moves_energy_in_band():
    """lam * penalty on top of a regression task: the task is still fit, the weight's
    out-of-band share drops well below what the unregularized fit reaches."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(256, 16, generator=g)
    target = xs @ torch.randn(16, 8, generator=g)

    def fit(lam):
        torch.manual_seed(1)
        lin = torch.nn.Linear(16, 8)
        opt = torch.optim.Adam(lin.parameters(), lr=2e-2)
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(lin(xs), target) + lam * spectral_penalty(lin, 0.5)
            loss.backward()
            opt.step()
        return torch.nn.functional.mse_loss(lin(xs), target).item(), spectral_penalty(lin, 0.5).item()

    _, pen0 = fit(0.0)
    task1, pen1 = fit(1.0)
    assert pen1 < 0.7 * pen0
    assert task1 < 0.5 * target.var().item()


# --------------------------------------------------------------------------
# (5) module layouts
# --------------------------------------------------------------------------

def test_module_layouts_kinds():
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Conv2d(6, 4, 3), torch.nn.Embedding(20, 5),
                                torch.nn.LayerNorm(5), torch.nn.Conv2d(4, 4, 3, groups=4),
                                torch.nn.ConvTranspose2d(4, 2, 3), torch.nn.MultiheadAttention(6, 2),
                                torch.nn.BatchNorm1d(3))
    model.register_parameter("pos", torch.nn.Parameter(torch.zeros(1, 7, 5)))
    lays = module_layouts(model)
    kinds = {n: lay.kinds for n, lay in lays.items()}
    assert kinds["0.weight"] == (FEATURE, FEATURE) and kinds["0.bias"] == (FEATURE,)
    assert kinds["1.weight"] == (FEATURE, FEATURE, SPATIAL, SPATIAL) and kinds["1.bias"] == (FEATURE,)
    assert kinds["2.weight"] == (INDEX, FEATURE)
    assert kinds["3.weight"] == (FEATURE,) and kinds["3.bias"] == (FEATURE,)
    assert kinds["4.weight"] == (FEATURE, INDEX, SPATIAL, SPATIAL)  # depthwise: I has length 1
    assert lays["5.weight"].perm == (1, 0, 2, 3) and kinds["5.weight"] == (FEATURE, FEATURE, SPATIAL, SPATIAL)
    assert lays["6.in_proj_weight"].parts == 3 and kinds["6.in_proj_weight"] == (PARTS, FEATURE, FEATURE)
    assert kinds["6.out_proj.weight"] == (FEATURE, FEATURE)
    assert kinds["7.weight"] == (FEATURE,)
    assert kinds["pos"] == (INDEX, FEATURE, FEATURE)
    assert set(lays) == {n for n, _ in model.named_parameters()}
    # the module path: defaults, overridable by name (e.g. a classifier's class axis)
    shares = spectral_shares(model, 0.5, {"0.weight": (INDEX, FEATURE)})
    w = model[0].weight.detach().double().numpy()
    assert shares["0.weight"].item() == pytest.approx(spectral.out_of_band_energy(w, (1,), 0.5), abs=1e-6)
    ct = model[5].weight.detach().double().numpy()
    assert shares["5.weight"].item() == pytest.approx(
        spectral.out_of_band_energy(ct.transpose(1, 0, 2, 3), (0, 1), 0.5), abs=1e-6)
    assert "2.weight" in shares  # the embedding's d axis is cut


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(64, 96, dtype=torch.float64)
    cpu = spectral_penalty({"w": x}, 0.3)
    gpu = spectral_penalty({"w": x.cuda()}, 0.3)
    assert gpu.device.type == "cuda" and gpu.item() == pytest.approx(cpu.item(), abs=1e-10)
    assert spectral_penalty({"w": x.float().cuda()}, 0.3).item() == pytest.approx(cpu.item(), abs=1e-5)


def test_empty_and_half_precision():
    assert spectral_shares({"e": torch.zeros(0, 4)}, 0.5) == {}
    h = torch.randn(16, 24).half()
    s = spectral_shares({"h": h}, 0.5)["h"]
    assert s.dtype == torch.float32
    assert s.item() == pytest.approx(spectral.out_of_band_energy(h.float().numpy(), (0, 1), 0.5), abs=1e-5)
    assert not math.isnan(s.item())


@settings(max_examples=20, deadline=None)
@given(heads=st.integers(1, 4), parts=st.integers(2, 3), d=st.integers(1, 4), n_in=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_interleaved_parts_read_alike_in_torch_and_numpy(heads, parts, d, n_in, seed):
    """Parts inside each head (stored (heads, parts, head_dim) rows, Bloom's and GPT-NeoX's
    q|k|v): the torch side's canonical order is ``Layout.to_canonical``'s, which takes part p
    of head h's unit j from stored row (h * parts + p) * d + j, and inverts."""
    lay = Layout((1, 0), (PARTS, FEATURE, FEATURE, FEATURE), parts, "qkv", heads=(heads, 0), interleaved=True)
    a = np.random.default_rng(seed).standard_normal((n_in, heads * parts * d))
    c = lay.to_canonical(a)
    np.testing.assert_array_equal(pen._canonical(torch.from_numpy(a), lay, "w").numpy(), c)
    h, p, j = heads - 1, parts - 1, d - 1
    np.testing.assert_array_equal(c[p, h, j], a[:, (h * parts + p) * d + j])
    np.testing.assert_array_equal(lay.from_canonical(c), a)
