"""Numeric core of FRONT: DCT-domain resampling of weight tensors.

A trained tensor is z-scored, DCT-II transformed along its feature axes and
its low-frequency corner (the "learngene") is kept.  A target of another size
is initialised by truncating or zero-padding that corner to the target shape,
inverting the transform and restoring the source statistics.  Depth works the
same way along a stacked layer axis.

Everything here is plain numpy/scipy (no onnx) so it can be tested and reused
on its own.  Transforms are separable, so they are applied one axis at a time:
that lets a shrinking resample slice each axis right after transforming it,
which keeps later transforms (and temporaries) small.  ``scipy.fft`` is called
without ``workers`` so a caller can parallelise with
``scipy.fft.set_workers(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np
import scipy.fft as sfft

# What the rest of the package uses. The whole-array functions not listed (dct_forward,
# dct_inverse, fit_spectrum, low_frequency_corner, resample, resample_stats, mix_depth) are
# the plain definitions that the tests hold the streamed paths above to.
__all__ = [
    "CONVENTIONS",
    "DEPTH_MODES",
    "kept_length",
    "spectrum_corner",
    "spectrum_to_array",
    "layer_axis_chunks",
    "standardize",
    "standardize_stack",
    "restore",
    "resample_layers",
    "out_of_band_energy",
]

Convention = Literal["ortho", "paper"]
CONVENTIONS: tuple[str, ...] = ("ortho", "paper")

# scipy's name for each convention: 'paper' is the unnormalised DCT-II of the
# authors' code (torch-dct norm=None), which equals scipy's "backward" norm.
_SCIPY_NORM = {"ortho": "ortho", "paper": "backward"}

# A tensor whose std is within a few ulps of its magnitude is constant: its
# computed std is pure rounding noise and dividing by it would blow it up.
_CONST_RTOL = 64.0 * np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _norm(convention: str) -> str:
    """Map a convention name to scipy's norm, rejecting typos early."""
    try:
        return _SCIPY_NORM[convention]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown DCT convention {convention!r}; expected one of {CONVENTIONS}"
        ) from None


def _normalize_axes(axes: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Non-negative, duplicate-free axes (None = all), so slicing logic is simple."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    out: list[int] = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} out of range for an array with {ndim} dims")
        a %= ndim
        if a in out:
            raise ValueError(f"duplicate axis {a} in {tuple(axes)}")
        out.append(a)
    return tuple(out)


def _normalize_shape(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    """Validate a target shape against an array's rank."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise ValueError(f"target shape {shape} has {len(shape)} dims, array has {ndim}")
    if any(s < 0 for s in shape):
        raise ValueError(f"negative length in target shape {shape}")
    return shape


def _as_f64(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """float64 view/copy of x, and whether it is a fresh buffer we may overwrite."""
    arr = np.asarray(x, dtype=np.float64)
    if isinstance(x, np.ndarray):
        return arr, not np.may_share_memory(arr, x)
    return arr, True


def _check_free_axes(src: tuple[int, ...], dst: tuple[int, ...], axes: tuple[int, ...]) -> None:
    """Axes we do not transform cannot change length: nothing could fill them."""
    for ax, (n, m) in enumerate(zip(src, dst)):
        if ax not in axes and n != m:
            raise ValueError(
                f"axis {ax} is not transformed but its length changes {n} -> {m}"
            )


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------

def kept_length(n: int, keep: float) -> int:
    """Number of low-frequency coefficients kept on an axis of length n.

    ``max(1, ceil(keep*n - 1e-9))`` clipped to n; the epsilon stops float noise
    (e.g. 0.3*10 = 3.0000000000000004) from keeping one extra coefficient.
    """
    keep = float(keep)
    if not (math.isfinite(keep) and 0.0 < keep <= 1.0):
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    n = int(n)
    if n < 0:
        raise ValueError(f"axis length must be >= 0, got {n}")
    return min(n, max(1, math.ceil(keep * n - 1e-9)))


def dct_forward(x: np.ndarray, axes: Sequence[int], convention: Convention) -> np.ndarray:
    """DCT-II along `axes`, float64 result.

    'ortho' is scipy's orthonormal DCT-II (energy preserving); 'paper' is the
    unnormalised ``X_k = 2*sum_n x_n cos(pi*k*(2n+1)/(2N))`` of the authors'
    released code, kept so their numbers can be reproduced.
    """
    return _dct(sfft.dctn, x, axes, convention)


def dct_inverse(c: np.ndarray, axes: Sequence[int], convention: Convention) -> np.ndarray:
    """Exact inverse of :func:`dct_forward` (lengths taken from c), float64."""
    return _dct(sfft.idctn, c, axes, convention)


def _dct(transform, x: np.ndarray, axes: Sequence[int], convention: Convention) -> np.ndarray:
    norm = _norm(convention)
    arr, owned = _as_f64(x)
    ax = _normalize_axes(axes, arr.ndim)
    if not ax:
        return arr.copy() if not owned else arr
    return transform(arr, type=2, axes=ax, norm=norm, overwrite_x=owned)


def fit_spectrum(c: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Truncate or zero-pad every axis of c to `shape` (low frequencies lead).

    Always returns a new array, so callers may modify it freely.
    """
    c = np.asarray(c)
    shape = _normalize_shape(shape, c.ndim)
    common = tuple(slice(0, min(n, m)) for n, m in zip(c.shape, shape))
    if all(m <= n for n, m in zip(c.shape, shape)):
        return c[common].copy()
    out = np.zeros(shape, dtype=c.dtype)
    out[common] = c[common]
    return out


def _forward_corner(arr: np.ndarray, owned: bool, lengths: dict[int, int], norm: str) -> np.ndarray:
    """DCT-II axis by axis, slicing each axis to its kept length right away.

    The axes go in a fixed order (last axis first), whatever the lengths: every 1-D
    transform then sees the same data whether or not other axes were cut, so a smaller
    corner is bit for bit a sub-block of a larger one. The result is contiguous and does
    not pin the full-size spectrum in memory.
    """
    order = sorted(lengths, reverse=True)
    out, arr_owned = arr, owned
    for a in order:
        out = sfft.dct(out, type=2, axis=a, norm=norm, overwrite_x=owned)
        if lengths[a] < out.shape[a]:
            idx = [slice(None)] * out.ndim
            idx[a] = slice(0, lengths[a])
            out = out[tuple(idx)]
        owned = True  # every dct result is a fresh buffer
    if out is arr and not arr_owned:
        out = arr.copy()
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def _inverse_fit(c: np.ndarray, owned: bool, shape: tuple[int, ...], axes: tuple[int, ...], norm: str) -> np.ndarray:
    """fit_spectrum + inverse DCT in one pass using idct's own zero-pad/truncate (n=)."""
    # a fixed order (last axis first), so results do not depend on how c was cut
    order = sorted(axes, reverse=True)
    out, c_owned = c, owned
    for a in order:
        out = sfft.idct(out, type=2, n=shape[a], axis=a, norm=norm, overwrite_x=owned)
        owned = True
    if out is c and not c_owned:
        out = c.copy()
    return out


def low_frequency_corner(x: np.ndarray, axes: Sequence[int], keep: float, convention: Convention) -> np.ndarray:
    """Forward DCT along axes, keeping ``kept_length(n, keep)`` leading coefficients per axis.

    This is the learngene: only the corner is kept because that is all a
    target ever reads back.
    """
    norm = _norm(convention)
    arr, owned = _as_f64(x)
    ax = _normalize_axes(axes, arr.ndim)
    lengths = {a: kept_length(arr.shape[a], keep) for a in ax}
    return _forward_corner(arr, owned, lengths, norm)


def spectrum_corner(x: np.ndarray, lengths: Mapping[int, int], convention: Convention,
                    overwrite: bool = False) -> np.ndarray:
    """DCT-II along the axes of ``lengths``, keeping the leading ``lengths[a]`` coefficients
    of each: the learngene corner, or only the part of it a known target will read.
    ``overwrite`` lets the transform reuse a float64 input buffer."""
    norm = _norm(convention)
    arr, owned = _as_f64(x)
    ax = _normalize_axes(list(lengths), arr.ndim)
    lens = {a: int(lengths[k]) for a, k in zip(ax, lengths)}
    return _forward_corner(arr, owned or overwrite, lens, norm)


def spectrum_to_array(c: np.ndarray, shape: Sequence[int], axes: Sequence[int], convention: Convention) -> np.ndarray:
    """Fit a coefficient array to `shape` on the transformed axes and invert it.

    Non-transformed axes must already match `shape` (ValueError otherwise).
    """
    norm = _norm(convention)
    arr, owned = _as_f64(c)
    ax = _normalize_axes(axes, arr.ndim)
    shape = _normalize_shape(shape, arr.ndim)
    _check_free_axes(arr.shape, shape, ax)
    return _inverse_fit(arr, owned, shape, ax, norm)


def resample(
    x: np.ndarray,
    shape: Sequence[int],
    axes: Sequence[int] | None = None,
    keep: float = 1.0,
    convention: Convention = "ortho",
) -> np.ndarray:
    """DCT resampling of an N-d array to a new shape (axes=None: all axes).

    Equal to ``spectrum_to_array(low_frequency_corner(x, ...), shape, ...)`` but
    never computes coefficients that the target would discard, and skips axes
    that neither truncate nor pad: the transform is separable, so such an
    axis's forward and inverse cancel exactly (in exact arithmetic).
    """
    norm = _norm(convention)
    arr, owned = _as_f64(x)
    ax = _normalize_axes(axes, arr.ndim)
    shape = _normalize_shape(shape, arr.ndim)
    _check_free_axes(arr.shape, shape, ax)
    lengths = {a: min(kept_length(arr.shape[a], keep), shape[a]) for a in ax}
    lengths = {a: k for a, k in lengths.items() if not arr.shape[a] == k == shape[a]}
    ax = tuple(lengths)
    if not ax:
        return arr if owned else arr.copy()
    corner = _forward_corner(arr, owned, lengths, norm)
    return _inverse_fit(corner, True, shape, ax, norm)


#: Working-set size of one chunk in :func:`layer_axis_chunks` (float64 bytes).
CHUNK_BYTES = 64 << 20


def layer_axis_chunks(x: np.ndarray, n: int, convention: Convention, inverse: bool = False):
    """The layer-axis (axis 0) DCT of a ``[L, ...]`` float64 stack, in chunks of rows of axis 1.

    Yields ``(rows, chunk)``: ``chunk`` is the transform of ``x[:, rows]`` cut (forward) or
    fitted with zero padding / truncation (inverse, as ``idct(n=)``) to ``n`` layers, a
    fresh float64 array. Every 1-D transform runs along axis 0 on the same data as a
    whole-stack transform, so the chunks are bit for bit slices of
    ``dct(x, axis=0)[:n]`` (``idct(x, n=n, axis=0)``); only about CHUNK_BYTES are
    transformed at a time, so the transformed stack never exists whole.
    """
    norm = _norm(convention)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 1:
        raise ValueError("layer_axis_chunks needs a leading layer axis")
    if arr.ndim == 1:
        c = sfft.idct(arr, type=2, n=n, axis=0, norm=norm) if inverse else sfft.dct(arr, type=2, axis=0, norm=norm)[:n]
        yield slice(None), c
        return
    rows = arr.shape[1]
    row_bytes = 8 * max(arr.shape[0], n) * max(1, int(np.prod(arr.shape[2:], dtype=np.int64)))
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for r0 in range(0, rows, step):
        sl = slice(r0, min(rows, r0 + step))
        part = arr[:, sl]
        if inverse:
            c = sfft.idct(part, type=2, n=n, axis=0, norm=norm)
        else:
            c = sfft.dct(part, type=2, axis=0, norm=norm)
            if n < c.shape[0]:
                c = c[:n]
        yield sl, c


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """Per-tensor statistics removed before and restored after the transform."""

    mean: float
    std: float


def standardize(x: np.ndarray) -> tuple[np.ndarray, Stats]:
    """Per-tensor z-score in float64 (population std).

    A constant tensor (std within rounding noise of zero) gives zeros and
    ``std=0.0`` instead of NaN/inf, so biases initialised to a constant survive.
    Non-finite input raises ValueError: it would poison every coefficient.
    """
    z = np.array(x, dtype=np.float64, copy=True, order="C")
    if z.size == 0:
        return z, Stats(0.0, 0.0)
    if not np.isfinite(z).all():
        raise ValueError("cannot standardize a tensor with NaN or inf entries")
    scale = float(np.max(np.abs(z)))
    mean = float(z.mean())
    z -= mean
    flat = z.reshape(-1)
    std = math.sqrt(float(np.dot(flat, flat)) / flat.size)
    if not (math.isfinite(std) and std > max(_TINY, _CONST_RTOL * scale)):
        z[...] = 0.0
        return z, Stats(mean, 0.0)
    z /= std
    return z, Stats(mean, std)


def restore(z: np.ndarray, stats: Stats) -> np.ndarray:
    """Undo :func:`standardize`: ``z * std + mean`` (std 0 gives the constant back)."""
    out = np.multiply(z, stats.std, dtype=np.float64)
    out += stats.mean
    return out


def standardize_stack(x: np.ndarray, inplace: bool = False, *,
                      as_in_stack: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each layer of a ``[L, ...]`` stack separately.

    Returns ``(z, means[L], stds[L])`` in float64; constant layers get zeros
    and std 0, as in :func:`standardize`.

    ``as_in_stack`` (for ``L == 1``): give the bits this layer gets inside a stack of
    several layers. numpy sums a single row in one pass but the rows of a taller stack in
    buffered chunks, and the two orders can differ in the last bit; a layer-by-layer
    reader uses this to reproduce a whole-stack standardization exactly.
    """
    # C order: the in-place work below goes through a reshape, which must be a view.
    # ``inplace`` reuses a writeable C-contiguous float64 input (large stacks: no copy).
    if inplace and isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.c_contiguous and x.flags.writeable:
        z = x
    else:
        z = np.array(x, dtype=np.float64, copy=True, order="C")
    if z.ndim < 1:
        raise ValueError("standardize_stack needs a leading layer axis")
    n_layers = z.shape[0]
    flat = z.reshape(n_layers, -1)
    if flat.shape[1] == 0:
        return z, np.zeros(n_layers), np.zeros(n_layers)
    # max/min propagate NaN and inf, so one finiteness check of the scale covers the stack
    scale = np.maximum(flat.max(axis=1), -flat.min(axis=1))
    if not np.isfinite(scale).all():
        raise ValueError("cannot standardize a stack with NaN or inf entries")
    means = flat.mean(axis=1)
    flat -= means[:, None]
    if as_in_stack and n_layers == 1:
        # the same row seen twice (stride 0): einsum takes its multi-row, chunked path
        two = np.lib.stride_tricks.as_strided(flat, shape=(2, flat.shape[1]), strides=(0, flat.strides[1]))
        sumsq = np.einsum("ij,ij->i", two, two)[:1]
    else:
        sumsq = np.einsum("ij,ij->i", flat, flat)
    stds = np.sqrt(sumsq / flat.shape[1])
    const = ~(stds > np.maximum(_TINY, _CONST_RTOL * scale))
    stds[const] = 0.0
    flat /= np.where(const, 1.0, stds)[:, None]
    flat[const] = 0.0
    return z, means, stds


def _check_layers(arr: np.ndarray, n: int, what: str) -> int:
    """The target layer count as an int, after checking both sides have at least one layer."""
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"{what} needs at least one layer on axis 0")
    n = int(n)
    if n < 1:
        raise ValueError(f"target layer count must be >= 1, got {n}")
    return n


def resample_stats(values: np.ndarray, n: int) -> np.ndarray:
    """Per-layer statistics of L source layers -> n target layers.

    Linear interpolation over relative depth: source layer i sits at
    i/(L-1), target layer j at j/(n-1) (a single layer sits at 0).  Endpoints
    map exactly, so first/last layer statistics are preserved.  Trailing axes
    of `values` (e.g. per-channel stats) are interpolated alongside.
    """
    v = np.asarray(values, dtype=np.float64)
    n = _check_layers(v, n, "values")
    n_src = v.shape[0]
    if n_src == 1:
        return np.repeat(v, n, axis=0)
    pos = np.linspace(0.0, 1.0, n) * (n_src - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_src - 2)
    frac = (pos - lo).reshape((n,) + (1,) * (v.ndim - 1))
    return v[lo] * (1.0 - frac) + v[lo + 1] * frac


DEPTH_MODES = ("spectral", "nearest", "linear", "identity")
PICKING_MODES = ("nearest", "identity")  # modes that take each target layer from one source layer


def repeated_layers(L: int, n: int) -> np.ndarray:
    """Of ``n`` layers picked 'nearest' from ``L``, those that repeat a source layer another
    target layer already takes (each source layer's first pick stays its own): the layers
    depth mode 'identity' makes residual identities, so that a deeper target starts from
    the source's function. All False when ``n <= L``."""
    idx = nearest_layers(L, n)
    out = np.zeros(n, dtype=bool)
    out[1:] = idx[1:] == idx[:-1]
    return out


def nearest_layers(L: int, n: int) -> np.ndarray:
    """The source layer each of ``n`` target layers takes in 'nearest' resampling: the one at the
    nearest relative depth (j/(n-1) of the way; ties round half to even)."""
    if n == L:
        return np.arange(n)
    pos = np.zeros(n) if n == 1 else np.linspace(0.0, 1.0, n) * (L - 1)
    return np.rint(pos).astype(np.intp)


def resample_layers(stack: np.ndarray, n: int, mode: str) -> np.ndarray:
    """A ``[L, ...]`` stack of layers -> n layers in the layer domain (no DCT).

    'nearest': target layer j copies the source layer at the nearest relative depth
    (``nearest_layers``), the block stacking of depth-growth methods ('identity' picks the
    same layers); 'linear': linear interpolation between the two neighbouring source layers,
    as ``resample_stats`` does for statistics.  n == L returns the stack unchanged.
    """
    arr = np.asarray(stack)
    n = _check_layers(arr, n, "resample_layers")
    L = arr.shape[0]
    if n == L:
        return arr
    if mode in PICKING_MODES:
        return arr[nearest_layers(L, n)]
    if mode == "linear":
        return resample_stats(arr, n)
    raise ValueError(f"unknown layer resampling mode {mode!r}; use 'nearest', 'identity' or 'linear'")


def mix_depth(stack: np.ndarray, n_layers: int, keep: float = 1.0, convention: Convention = "ortho") -> np.ndarray:
    """Resample a ``[L, ...]`` stack to n_layers along the layer axis only."""
    arr = np.asarray(stack)
    if arr.ndim < 1:
        raise ValueError("mix_depth needs a leading layer axis")
    return resample(arr, (int(n_layers),) + arr.shape[1:], axes=(0,), keep=keep, convention=convention)


def out_of_band_energy(x: np.ndarray, axes: Sequence[int], keep: float) -> float:
    """Share (0..1) of the standardized tensor's orthonormal DCT energy outside the kept corner.

    Measures what a learngene of this `keep` throws away; constant -> 0.0.
    """
    z, stats = standardize(x)
    if stats.std == 0.0:
        return 0.0
    ax = _normalize_axes(axes, z.ndim)
    c = sfft.dctn(z, type=2, axes=ax, norm="ortho", overwrite_x=True) if ax else z
    flat = c.reshape(-1)
    total = float(np.dot(flat, flat))
    idx = [slice(None)] * c.ndim
    for a in ax:
        idx[a] = slice(0, kept_length(c.shape[a], keep))
    corner = c[tuple(idx)]
    inside = float(np.vdot(corner, corner))
    if total <= 0.0:
        return 0.0
    return min(1.0, max(0.0, (total - inside) / total))
