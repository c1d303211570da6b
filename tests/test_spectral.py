"""Tests for front_onnx.numeric.spectral.

Expectations are computed independently of scipy wherever possible: the DCT
is checked against explicit O(N^2) cosine sums, statistics against numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from front_onnx.numeric import spectral as sp
from front_onnx.numeric.spectral import (
    CONVENTIONS,
    Stats,
    dct_forward,
    dct_inverse,
    fit_spectrum,
    kept_length,
    low_frequency_corner,
    mix_depth,
    out_of_band_energy,
    resample,
    resample_stats,
    restore,
    spectrum_to_array,
    standardize,
    standardize_stack,
)

HYP = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------
# reference DCT: explicit cosine sums
# --------------------------------------------------------------------------

def dct_matrix(n: int, convention: str) -> np.ndarray:
    """Row k holds the DCT-II basis function k, built from the textbook formula."""
    m = np.empty((n, n))
    for k in range(n):
        for j in range(n):
            m[k, j] = math.cos(math.pi * k * (2 * j + 1) / (2 * n))
    if convention == "paper":
        return 2.0 * m  # X_k = 2 sum x_n cos(...)
    scale = np.full(n, math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return scale[:, None] * m


def apply_along(mat_fn, x: np.ndarray, axes, convention: str) -> np.ndarray:
    out = np.asarray(x, dtype=np.float64)
    for a in axes:
        mat = mat_fn(out.shape[a], convention)
        out = np.moveaxis(np.tensordot(mat, np.moveaxis(out, a, 0), axes=(1, 0)), 0, a)
    return out


def ref_forward(x, axes, convention):
    return apply_along(dct_matrix, x, axes, convention)


def ref_inverse(c, axes, convention):
    return apply_along(lambda n, cv: np.linalg.inv(dct_matrix(n, cv)), c, axes, convention)


def ref_forward_1d_sum(x: np.ndarray, convention: str) -> np.ndarray:
    """Scalar loops over the defining sum: independent of the matrix helper too."""
    n = len(x)
    out = np.zeros(n)
    for k in range(n):
        s = sum(x[j] * math.cos(math.pi * k * (2 * j + 1) / (2 * n)) for j in range(n))
        if convention == "paper":
            out[k] = 2.0 * s
        else:
            out[k] = s * (math.sqrt(1.0 / n) if k == 0 else math.sqrt(2.0 / n))
    return out


CASES = [
    ((7,), (0,)),
    ((5, 6), (0, 1)),
    ((5, 6), (1,)),
    ((5, 6), (-2,)),
    ((3, 4, 5), (0, 2)),
    ((3, 4, 5), (2, 0, 1)),
    ((2, 1, 4), (1, 2)),
]


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_forward_matches_cosine_sum_1d(convention):
    x = np.random.default_rng(0).standard_normal(9)
    np.testing.assert_allclose(dct_forward(x, (0,), convention), ref_forward_1d_sum(x, convention), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("shape,axes", CASES)
def test_forward_and_inverse_match_reference(shape, axes, convention):
    rng = np.random.default_rng(hash((shape, axes)) % 2**32)
    x = rng.standard_normal(shape)
    c = dct_forward(x, axes, convention)
    assert c.dtype == np.float64 and c.shape == x.shape
    np.testing.assert_allclose(c, ref_forward(x, axes, convention), rtol=1e-11, atol=1e-11)
    y = rng.standard_normal(shape)
    np.testing.assert_allclose(dct_inverse(y, axes, convention), ref_inverse(y, axes, convention), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dct_inverse(c, axes, convention), x, rtol=1e-10, atol=1e-10)


def test_paper_is_scaled_ortho():
    # Documented relation: paper X_k = sqrt(2N) * ortho_k for k>=1, 2*sqrt(N)*ortho_0.
    x = np.random.default_rng(1).standard_normal(12)
    o, p = dct_forward(x, (0,), "ortho"), dct_forward(x, (0,), "paper")
    np.testing.assert_allclose(p[1:], math.sqrt(24) * o[1:], rtol=1e-12)
    np.testing.assert_allclose(p[0], 2 * math.sqrt(12) * o[0], rtol=1e-12)


def test_forward_float32_input_computed_in_float64_and_input_untouched():
    x32 = np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)
    keep = x32.copy()
    c = dct_forward(x32, (0, 1), "ortho")
    assert c.dtype == np.float64
    np.testing.assert_allclose(c, ref_forward(x32.astype(np.float64), (0, 1), "ortho"), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x32, keep)
    x64 = x32.astype(np.float64)
    before = x64.copy()
    resample(x64, (3, 9))
    low_frequency_corner(x64, (0, 1), 0.5, "paper")
    np.testing.assert_array_equal(x64, before)


def test_empty_axes_is_copy():
    x = np.arange(6.0).reshape(2, 3)
    c = dct_forward(x, (), "ortho")
    np.testing.assert_array_equal(c, x)
    c[0, 0] = 99
    assert x[0, 0] == 0


def test_bad_convention_and_axes():
    x = np.zeros((3, 3))
    with pytest.raises(ValueError):
        dct_forward(x, (0,), "unitary")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dct_forward(x, (2,), "ortho")
    with pytest.raises(ValueError):
        dct_forward(x, (0, -2), "ortho")


# --------------------------------------------------------------------------
# kept_length and shape validation
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "n,keep,expected",
    [
        (10, 1.0, 10),
        (100, 0.07, 7),  # 0.07*100 = 7.000000000000001 must not round up to 8
        (10, 0.3, 3),
        (10, 0.31, 4),
        (10, 0.25, 3),
        (768, 0.25, 192),
        (7, 0.5, 4),
        (1, 0.01, 1),
        (100, 0.001, 1),  # at least one coefficient
        (0, 0.5, 0),
        (3, 1e-12, 1),
    ],
)
def test_kept_length(n, keep, expected):
    assert kept_length(n, keep) == expected


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.0000001, 2.0, float("nan"), float("inf")])
def test_kept_length_rejects_bad_keep(keep):
    with pytest.raises(ValueError):
        kept_length(10, keep)


def test_bad_keep_propagates():
    with pytest.raises(ValueError):
        resample(np.zeros((4, 4)), (4, 4), keep=0.0)
    with pytest.raises(ValueError):
        low_frequency_corner(np.zeros((4, 4)), (0,), 1.5, "ortho")


def test_untransformed_axis_length_change_rejected():
    x = np.zeros((4, 5))
    with pytest.raises(ValueError):
        resample(x, (6, 6), axes=(0,))
    with pytest.raises(ValueError):
        spectrum_to_array(np.zeros((2, 5)), (4, 7), (0,), "ortho")
    with pytest.raises(ValueError):
        resample(x, (4, 5, 1))
    assert resample(x, (6, 5), axes=(0,)).shape == (6, 5)


def test_low_frequency_corner_shape_and_values():
    x = np.random.default_rng(3).standard_normal((8, 6, 5))
    for convention in CONVENTIONS:
        c = low_frequency_corner(x, (0, 2), 0.5, convention)
        assert c.shape == (4, 6, 3)
        np.testing.assert_allclose(c, ref_forward(x, (0, 2), convention)[:4, :, :3], rtol=1e-11, atol=1e-11)


def test_fit_spectrum_explicit():
    c = np.arange(12.0).reshape(3, 4)
    out = fit_spectrum(c, (4, 2))
    expected = np.array([[0.0, 1.0], [4.0, 5.0], [8.0, 9.0], [0.0, 0.0]])
    np.testing.assert_array_equal(out, expected)
    same = fit_spectrum(c, (3, 4))
    np.testing.assert_array_equal(same, c)
    same[0, 0] = -1
    assert c[0, 0] == 0  # always a new array
    with pytest.raises(ValueError):
        fit_spectrum(c, (3,))


# --------------------------------------------------------------------------
# hypothesis properties
# --------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
conventions = st.sampled_from(CONVENTIONS)


@st.composite
def array_and_shape(draw, max_dims=3, max_side=7):
    """A random array and a random target shape of the same rank."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=max_side))
    x = draw(hnp.arrays(np.float64, shape, elements=finite))
    target = tuple(draw(st.integers(1, max_side + 3)) for _ in shape)
    return x, target


def close(a, b, rtol=1e-10):
    scale = max(1.0, float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


@HYP
@given(array_and_shape(), conventions)
def test_resample_same_shape_is_identity(xs, convention):
    x, _ = xs
    out = resample(x, x.shape, convention=convention)
    close(out, x)
    assert not np.shares_memory(out, x)
    # The same without resample's skip of unchanged axes: real transforms.
    axes = tuple(range(x.ndim))
    close(spectrum_to_array(low_frequency_corner(x, axes, 1.0, convention), x.shape, axes, convention), x)
    close(dct_inverse(dct_forward(x, axes, convention), axes, convention), x)


@HYP
@given(array_and_shape(), conventions)
def test_resample_equals_truncated_spectrum(xs, convention):
    x, target = xs
    axes = tuple(range(x.ndim))
    c = dct_forward(x, axes, convention)
    expected = spectrum_to_array(fit_spectrum(c, target), target, axes, convention)
    got = resample(x, target, convention=convention)
    assert got.shape == target and got.dtype == np.float64
    close(got, expected)
    # ... and against the matrix reference, independent of scipy.
    ref = ref_inverse(fit_spectrum(ref_forward(x, axes, convention), target), axes, convention)
    close(got, ref, rtol=1e-9)


@HYP
@given(array_and_shape(), st.floats(0.05, 1.0), conventions)
def test_resample_is_corner_then_inverse(xs, keep, convention):
    x, target = xs
    axes = tuple(range(x.ndim))
    corner = low_frequency_corner(x, axes, keep, convention)
    close(resample(x, target, keep=keep, convention=convention), spectrum_to_array(corner, target, axes, convention))


@HYP
@given(st.data())
def test_fit_spectrum_truncate_then_pad(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    c = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    small = tuple(data.draw(st.integers(1, n)) for n in shape)
    big = tuple(n + data.draw(st.integers(0, 3)) for n in shape)
    expected = np.zeros(big)
    idx = tuple(slice(0, m) for m in small)
    expected[idx] = c[idx]
    np.testing.assert_array_equal(fit_spectrum(fit_spectrum(c, small), big), expected)


@HYP
@given(st.data(), conventions)
def test_resample_is_linear(data, convention):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    y = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    a, b = data.draw(finite), data.draw(finite)
    target = tuple(data.draw(st.integers(1, 8)) for _ in shape)
    keep = data.draw(st.floats(0.1, 1.0))
    lhs = resample(a * x + b * y, target, keep=keep, convention=convention)
    rhs = a * resample(x, target, keep=keep, convention=convention) + b * resample(y, target, keep=keep, convention=convention)
    scale = max(1.0, abs(a), abs(b)) * max(1.0, float(np.abs(x).max()), float(np.abs(y).max()))
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-9 * scale * (1 + np.prod(target)))


@HYP
@given(st.data())
def test_grow_then_shrink_is_identity_ortho(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    big = tuple(n + data.draw(st.integers(0, 5)) for n in shape)
    close(resample(resample(x, big), shape), x)


@HYP
@given(st.data())
def test_grow_then_shrink_paper_scales_back(data):
    # Under 'paper' each axis n->m->n multiplies by sqrt(n/m)*sqrt(m/n) = 1
    # too: padding then truncating exactly undoes in spectrum space.
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    big = tuple(n + data.draw(st.integers(0, 5)) for n in shape)
    up = resample(x, big, convention="paper")
    close(resample(up, shape, convention="paper"), x)


@HYP
@given(st.data(), conventions)
def test_mix_depth_is_resample_on_axis0(data, convention):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    n = data.draw(st.integers(1, 9))
    keep = data.draw(st.floats(0.1, 1.0))
    got = mix_depth(x, n, keep=keep, convention=convention)
    assert got.shape == (n,) + shape[1:]
    c = fit_spectrum(ref_forward(x, (0,), convention)[: kept_length(shape[0], keep)], (n,) + shape[1:])
    close(got, ref_inverse(c, (0,), convention), rtol=1e-9)


def test_mix_depth_same_depth_identity_and_constant_stack():
    x = np.random.default_rng(4).standard_normal((6, 3, 2))
    close(mix_depth(x, 6), x)
    const = np.full((4, 3), 2.5)
    for n in (1, 4, 9):
        # DC only. Ortho: coefficient sqrt(L)*v inverts to sqrt(L/n)*v.
        # Paper: 2*L*v inverts to (2*L*v)/(2*n) = (L/n)*v. Neither keeps a
        # constant's level across lengths, which is why the mean is removed
        # by standardize before transforming and restored afterwards.
        np.testing.assert_allclose(mix_depth(const, n, convention="paper"), np.full((n, 3), 2.5 * 4 / n), rtol=1e-12)
        np.testing.assert_allclose(mix_depth(const, n, convention="ortho"), np.full((n, 3), 2.5 * math.sqrt(4 / n)), rtol=1e-12)


# --------------------------------------------------------------------------
# convention behaviour on white noise (documentation of amplitude scaling)
# --------------------------------------------------------------------------

def test_white_noise_std_under_truncation():
    x = np.random.default_rng(5).standard_normal((256, 256))
    ortho = resample(x, (64, 64), convention="ortho")
    paper = resample(x, (64, 64), convention="paper")
    # 4096 samples: relative s.e. of the std ~1.1%, 10% tolerance is > 8 sigma.
    assert ortho.std() == pytest.approx(1.0, rel=0.1)
    assert paper.std() == pytest.approx(math.sqrt(256 / 64) ** 2, rel=0.1)  # ~4x
    # One axis only: sqrt(N/M) = 2.
    assert resample(x, (64, 256), convention="paper").std() == pytest.approx(2.0, rel=0.1)
    # Exactly: paper = ortho * prod sqrt(N/M) (a deterministic identity).
    np.testing.assert_allclose(paper, 4.0 * ortho, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0.0, 1.0, -3.5, 0.1, 1e-30, 1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standardize_constant(value, dtype):
    x = np.full((17, 5), value, dtype=dtype)
    z, stats = standardize(x)
    assert not np.isnan(z).any()
    assert z.dtype == np.float64 and np.all(z == 0.0)
    assert stats.std == 0.0
    np.testing.assert_allclose(restore(z, stats), x.astype(np.float64), rtol=1e-12)


def test_standardize_matches_numpy_and_roundtrips():
    x = np.random.default_rng(6).normal(3.0, 0.02, size=(40, 30)).astype(np.float32)
    x_before = x.copy()
    z, stats = standardize(x)
    x64 = x.astype(np.float64)
    assert isinstance(stats, Stats)
    assert stats.mean == pytest.approx(float(np.mean(x64)), rel=1e-12)
    assert stats.std == pytest.approx(float(np.std(x64)), rel=1e-10)
    np.testing.assert_allclose(z, (x64 - x64.mean()) / x64.std(), rtol=1e-9, atol=1e-9)
    assert abs(z.mean()) < 1e-12 and z.std() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(restore(z, stats), x64, rtol=1e-12)
    np.testing.assert_array_equal(x, x_before)


def test_standardize_rejects_nonfinite_and_handles_empty():
    with pytest.raises(ValueError):
        standardize(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        standardize(np.array([1.0, np.inf]))
    z, stats = standardize(np.zeros((0, 3)))
    assert z.shape == (0, 3) and stats == Stats(0.0, 0.0)


def test_standardize_stack_per_layer():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 3)) * np.arange(1, 6)[:, None, None] + np.arange(5)[:, None, None]
    x[2] = 0.1  # a constant layer whose computed mean is off by rounding
    x[4] = 0.0
    z, means, stds = standardize_stack(x)
    assert z.shape == x.shape and means.shape == (5,) and stds.shape == (5,)
    flat = x.reshape(5, -1)
    np.testing.assert_allclose(means, flat.mean(axis=1), rtol=1e-12)
    expected_std = flat.std(axis=1)
    expected_std[[2, 4]] = 0.0
    np.testing.assert_allclose(stds, expected_std, rtol=1e-12, atol=0)
    assert not np.isnan(z).any()
    for i in range(5):
        if i in (2, 4):
            assert np.all(z[i] == 0.0)
        else:
            np.testing.assert_allclose(z[i], (x[i] - x[i].mean()) / x[i].std(), rtol=1e-10, atol=1e-12)
        # restoring per layer returns the layer
        np.testing.assert_allclose(restore(z[i], Stats(means[i], stds[i])), x[i], rtol=1e-12, atol=1e-12)
    # consistent with standardize layer by layer
    for i in range(5):
        zi, si = standardize(x[i])
        np.testing.assert_allclose(z[i], zi, rtol=1e-12, atol=1e-12)
        assert si.std == pytest.approx(stds[i], rel=1e-12, abs=0)


def test_resample_stats():
    v = np.array([1.0, 3.0, 4.0, 10.0])
    out = resample_stats(v, 7)
    assert out[0] == 1.0 and out[-1] == 10.0
    assert np.all(np.diff(out) >= 0)
    # independent expectation: np.interp over relative depth
    np.testing.assert_allclose(out, np.interp(np.linspace(0, 1, 7), np.linspace(0, 1, 4), v), rtol=1e-14)
    np.testing.assert_allclose(resample_stats(v, 4), v, rtol=1e-15)
    np.testing.assert_allclose(resample_stats(v, 2), [1.0, 10.0])
    np.testing.assert_allclose(resample_stats(v, 1), [1.0])
    np.testing.assert_allclose(resample_stats(np.array([2.5]), 3), [2.5, 2.5, 2.5])
    dec = resample_stats(v[::-1], 11)
    assert dec[0] == 10.0 and dec[-1] == 1.0 and np.all(np.diff(dec) <= 0)
    # trailing axes interpolate alongside
    two = np.stack([v, -v], axis=1)
    np.testing.assert_allclose(resample_stats(two, 7), np.stack([out, -out], axis=1), rtol=1e-14)
    with pytest.raises(ValueError):
        resample_stats(v, 0)
    with pytest.raises(ValueError):
        resample_stats(np.array([]), 3)


@HYP
@given(
    hnp.arrays(np.float64, st.integers(1, 12), elements=finite),
    st.integers(1, 30),
)
def test_resample_stats_properties(values, n):
    out = resample_stats(values, n)
    assert out.shape == (n,)
    assert out[0] == values[0]
    if n > 1:
        assert out[-1] == pytest.approx(values[-1], rel=1e-12, abs=1e-12)
    assert out.min() >= values.min() - 1e-9 and out.max() <= values.max() + 1e-9
    srt = np.sort(values)
    assert np.all(np.diff(resample_stats(srt, n)) >= -1e-9)


# --------------------------------------------------------------------------
# out-of-band energy
# --------------------------------------------------------------------------

def test_out_of_band_energy_low_frequency_tensor_is_zero():
    rng = np.random.default_rng(8)
    c = np.zeros((32, 24))
    c[:8, :6] = rng.standard_normal((8, 6))
    x = ref_inverse(c, (0, 1), "ortho") + 5.0
    assert out_of_band_energy(x, (0, 1), 0.25) == pytest.approx(0.0, abs=1e-12)
    # Keeping less than the content loses energy.
    assert out_of_band_energy(x, (0, 1), 0.1) > 0.05


def test_out_of_band_energy_white_noise_and_constant():
    x = np.random.default_rng(9).standard_normal((128, 96))
    for keep in (0.25, 0.5, 1.0):
        e = out_of_band_energy(x, (0, 1), keep)
        assert 0.0 <= e <= 1.0
        assert e == pytest.approx(1 - keep**2, abs=0.03)
    assert out_of_band_energy(x, (1,), 0.5) == pytest.approx(0.5, abs=0.03)
    assert out_of_band_energy(np.full((8, 8), 3.0), (0, 1), 0.25) == 0.0
    assert out_of_band_energy(np.zeros((8, 8)), (0, 1), 0.25) == 0.0


def test_module_does_not_import_onnx():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(sp))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "onnx" not in names and "onnxruntime" not in names


def test_standardize_stack_non_contiguous_input():
    """A stack built from transposed views (Fortran-ordered) is standardized in place correctly."""
    rng = np.random.default_rng(3)
    layers = [rng.normal(1.0, 2.0, size=(5, 7)).astype(np.float32).T for _ in range(3)]
    stack = np.stack(layers)
    assert not stack.flags["C_CONTIGUOUS"]
    z, means, stds = sp.standardize_stack(stack)
    ref = np.stack([(l - l.astype(np.float64).mean()) / l.astype(np.float64).std() for l in layers])
    np.testing.assert_allclose(z, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(means, [l.astype(np.float64).mean() for l in layers], rtol=1e-12)


def test_resample_layers_nearest_and_linear():
    stack = np.arange(4.0)[:, None] * np.ones((1, 3))          # layer i is constant i
    near = sp.resample_layers(stack, 7, "nearest")         # positions 0, .5, 1, ... 3
    assert near[:, 0].tolist() == [0, 0, 1, 2, 2, 2, 3]          # rint: half to even
    lin = sp.resample_layers(stack, 7, "linear")
    np.testing.assert_allclose(lin[:, 0], np.linspace(0, 3, 7))
    assert sp.resample_layers(stack, 2, "nearest")[:, 0].tolist() == [0, 3]
    assert sp.resample_layers(stack, 1, "nearest")[:, 0].tolist() == [0]
    assert sp.resample_layers(stack, 4, "linear") is stack
    with pytest.raises(ValueError):
        sp.resample_layers(stack, 3, "cubic")
    with pytest.raises(ValueError):
        sp.resample_layers(stack, 0, "linear")
