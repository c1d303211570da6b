"""The FRONT+ spectral regularizer as a differentiable torch function.

FRONT+ briefly fine-tunes the source model with a penalty on the energy of each weight's
spectrum *outside* the low-frequency corner that the learngene keeps, so that the corner
carries more of what the model knows::

    lam = 0.1                                     # see "scale" below
    loss = task_loss + lam * spectral_penalty(model, keep=0.5)
    loss.backward()

Definition (the same as the extractor, :mod:`front_onnx.method.extraction`, and as
:func:`front_onnx.numeric.spectral.out_of_band_energy`): per weight tensor

1. put it in canonical (out, in, spatial...) order with its :class:`~front_onnx.analysis.slots.Layout`
   (``perm``, then canonical axis 0 split into ``parts`` equal parts: a fused qkv ``[3d, d]``
   with ``parts=3`` becomes ``[3, d, d]``, and each part's axes are cut separately);
2. standardize it over the whole tensor (subtract the mean, divide by the population std);
3. take its orthonormal DCT-II along the transformed axes and measure the share of the
   energy outside the kept corner ``[0:kept_length(n_a, keep))`` of every *feature* axis.

As in the extractor, only feature axes are cut by ``keep``: spatial axes (kernel taps) are
transformed but kept whole, index axes (vocabulary, classes) and the parts axis are never
transformed. An orthonormal transform of an axis that is kept whole does not change any
energy, so the share depends only on the feature axes; a tensor without a feature axis
(a scalar, a tensor of index/spatial axes only) has share 0 whatever its values and is
skipped (it is not in :func:`spectral_shares`' result and does not count in the mean).
The learngene also cuts the depth axis (a template's tensors stacked over the blocks);
a per-weight penalty does not see that axis.

The share is ``(E_total - E_corner) / E_total`` in [0, 1]; it is scale invariant, so the
division by the std in step 2 cancels and only the centering matters. By Parseval the total
energy of the orthonormal transform is the energy of the centered tensor itself, and the
corner's energy needs only the first ``k_a`` rows of each axis' DCT matrix: the tensor is
projected onto the kept rows, one feature axis at a time (``k_a x n_a`` matrices, cheapest
order first), and the full spectrum is never formed. The DCT matrices are built with the
cosine formula in float64 and cached per (n, k, dtype, device); axes whose ``k x n`` matrix
would exceed 16 M entries use an FFT-based DCT instead (no large matrix in memory).

Constant tensors: a tensor whose std is within rounding noise of zero (``std <=
64 * eps(dtype) * max|x|``, the guard of :func:`front_onnx.numeric.spectral.standardize` at the
compute precision, floored at the smallest normal number) has share 0 and a zero gradient,
not NaN: the quotient is taken with a denominator of 1 there and selected away.

Scale: every share is in [0, 1]. For white noise a 2-D feature tensor has share about
``1 - keep**2`` (0.75 at keep 0.5), for a smooth tensor about 0; a trained weight sits in
between. With the default ``weighting="mean"`` the penalty is the mean share, so it is
O(1) whatever the model size: pick ``lam`` relative to the task loss (0.01-1 for a
cross-entropy of order 1) and watch both terms.

Compute precision: float64 parameters are processed in float64, everything else in float32
(half-precision parameters are upcast). Works on CPU and CUDA tensors.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch

from front_onnx.analysis.slots import CUT, FEATURE, INDEX, PARTS, SPATIAL, Layout
from front_onnx.numeric.spectral import kept_length

__all__ = ["WEIGHTINGS", "module_layouts", "spectral_penalty", "spectral_shares"]

WEIGHTINGS = ("mean", "size")

LayoutLike = Layout | tuple

#: Largest ``k x n`` DCT matrix (entries) built for an axis; longer axes use the FFT route.
MATRIX_LIMIT = 1 << 24

_KINDS = (FEATURE, INDEX, SPATIAL, PARTS, CUT)


# --------------------------------------------------------------------------
# DCT pieces
# --------------------------------------------------------------------------

@lru_cache(maxsize=128)
def _dct_rows(n: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size n (``k x n``), cached.

    ``D[f, j] = sqrt(2/n) cos(pi f (2j+1) / (2n))``, row 0 scaled by ``1/sqrt(2)``: the
    matrix of ``scipy.fft.dct(norm="ortho")``. Built in float64, then cast.
    """
    f = np.arange(k, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    d = np.cos(np.pi * f * (2.0 * j + 1.0) / (2.0 * n)) * math.sqrt(2.0 / n)
    if k:
        d[0] *= math.sqrt(0.5)
    return torch.from_numpy(d).to(dtype=dtype, device=device)


def _dct_last_fft(x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The first k (default all) orthonormal DCT-II coefficients along the last axis, via one
    real FFT (Makhoul's reordering); for k <= n//2 + 1 the half spectrum suffices."""
    n = x.shape[-1]
    k = n if k is None else k
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    spec = torch.fft.rfft(v, dim=-1)
    if k <= spec.shape[-1]:
        spec = spec[..., :k]
    else:  # the upper bins of a real signal's spectrum are the conjugates of the lower ones
        spec = torch.cat([spec, spec[..., 1:n - n // 2].conj().flip(-1)], dim=-1)[..., :k]
    f = torch.arange(k, dtype=x.dtype, device=x.device)
    w = torch.polar(torch.full_like(f, math.sqrt(2.0 / n)), -math.pi * f / (2 * n))
    out = (spec * w).real
    if k:
        scale = torch.ones(k, dtype=x.dtype, device=x.device)
        scale[0] = math.sqrt(0.5)
        out = out * scale
    return out


def _project(y: torch.Tensor, axis: int, k: int) -> torch.Tensor:
    """The first k orthonormal DCT-II coefficients of y along ``axis`` (moved to the end)."""
    n = y.shape[axis]
    y = torch.movedim(y, axis, -1)
    if k * n <= MATRIX_LIMIT:
        return y @ _dct_rows(n, k, y.dtype, y.device).T
    return _dct_last_fft(y, k)


def _axis_order(shape: tuple[int, ...], cuts: dict[int, int]) -> list[int]:
    """The order of the cut axes that minimizes the multiply count of the projections."""
    def cost(order):
        s, total = list(shape), 0
        for a in order:
            total += math.prod(s) * cuts[a]
            s[a] = cuts[a]
        return total
    axes = sorted(cuts)
    if len(axes) <= 5:
        return list(min(itertools.permutations(axes), key=cost))
    return sorted(axes, key=lambda a: cuts[a] / shape[a])


# --------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------

def _as_layout(spec: LayoutLike, name: str) -> Layout:
    if isinstance(spec, Layout):
        lay = spec
    elif isinstance(spec, (tuple, list)) and all(isinstance(s, str) for s in spec):
        lay = Layout(tuple(range(len(spec))), tuple(spec))
    else:
        raise TypeError(f"layout of {name!r} must be a Layout or a tuple of axis kinds, got {spec!r}")
    bad = [k for k in lay.kinds if k not in _KINDS]
    if bad:
        raise ValueError(f"layout of {name!r}: unknown axis kind(s) {bad}; expected {_KINDS}")
    return lay


def _canonical(x: torch.Tensor, lay: Layout, name: str) -> torch.Tensor:
    """``Layout.to_canonical`` for a torch tensor, with shape checks."""
    if len(lay.perm) != x.dim() or sorted(lay.perm) != list(range(x.dim())):
        raise ValueError(f"layout of {name!r}: perm {lay.perm} does not fit a tensor of shape {tuple(x.shape)}")
    c = x.permute(*lay.perm) if tuple(lay.perm) != tuple(range(x.dim())) else x
    ndim = c.dim()
    if lay.parts > 1:
        if ndim == 0 or c.shape[0] % lay.parts:
            raise ValueError(f"layout of {name!r}: canonical axis 0 of {tuple(c.shape)} "
                             f"does not split into {lay.parts} parts")
        c = lay.outer_parts(c)  # stored (heads, parts, head_dim): parts brought outermost
    split = lay.canonical_shape(tuple(x.shape))
    if tuple(c.shape) != split:
        c = c.reshape(split)
    if len(lay.kinds) != c.dim():
        raise ValueError(f"layout of {name!r}: {len(lay.kinds)} kinds {lay.kinds} for canonical shape "
                         f"{tuple(c.shape)} (with parts > 1 the kinds start with the parts axis)")
    return c


def _default_layout(shape: tuple[int, ...], name: str = "") -> Layout:
    """A parameter of unknown role: every axis a feature axis (length-1 axes broadcast and are
    index axes, as in the graph analysis; nothing is cut from them either way)."""
    kinds = tuple(INDEX if d == 1 else FEATURE for d in shape)
    return Layout(tuple(range(len(shape))), kinds, name=name or "all feature")


def module_layouts(module: torch.nn.Module) -> dict[str, Layout]:
    """Default layouts of a module's parameters, by ``named_parameters`` name.

    - ``nn.Linear`` weight ``[out, in]``: (feature, feature); bias ``[out]``: feature.
    - ``nn.Conv1d/2d/3d`` weight ``[O, I/groups, k...]``: O and I feature (I is an index axis
      when it has length 1, a depthwise conv, as in the graph analysis), the taps spatial;
      ``nn.ConvTranspose*d`` weight ``[I, O/groups, k...]`` the same after a transpose.
    - ``nn.Embedding`` / ``nn.EmbeddingBag`` ``[V, d]``: V index (never cut), d feature.
    - ``nn.MultiheadAttention`` ``in_proj_weight [3d, d]`` / ``in_proj_bias [3d]``: a fused
      projection of 3 parts (each part cut separately); q/k/v_proj_weight and out_proj as Linear.
    - LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm weight and bias: feature.
    - Any other parameter (position tables, tokens, custom modules): every axis feature
      (length-1 axes index).

    The final classifier cannot be recognized from a module: its weight ``[classes, d]`` gets
    (feature, feature) here. Pass ``layouts={"head.weight": ("index", "feature"),
    "head.bias": ("index",)}`` (your head's names) to :func:`spectral_penalty` to mark the
    class axis as an index axis, as the ONNX analysis does for the layer that feeds the output.
    """
    out: dict[str, Layout] = {}
    norms = tuple(getattr(torch.nn, n) for n in ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm")
                  if hasattr(torch.nn, n)) + (torch.nn.modules.batchnorm._NormBase,)
    for prefix, mod in module.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                continue
            name = f"{prefix}.{pname}" if prefix else pname
            shape = tuple(p.shape)
            lay = None
            if isinstance(mod, torch.nn.Linear) and pname in ("weight", "bias"):
                lay = Layout((0, 1), (FEATURE, FEATURE), name="[out, in]") if pname == "weight" else \
                    Layout((0,), (FEATURE,), name="[out]")
            elif isinstance(mod, torch.nn.modules.conv._ConvNd) and pname in ("weight", "bias"):
                if pname == "bias":
                    lay = Layout((0,), (FEATURE,), name="[out]")
                else:
                    rank = len(shape)
                    transposed = isinstance(mod, torch.nn.modules.conv._ConvTransposeNd)
                    perm = ((1, 0) if transposed else (0, 1)) + tuple(range(2, rank))
                    n_in = shape[0] if transposed else shape[1]
                    kinds = (FEATURE, INDEX if n_in == 1 else FEATURE) + (SPATIAL,) * (rank - 2)
                    lay = Layout(perm, kinds, name="[in, out, k...]" if transposed else "[out, in, k...]")
            elif isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and pname == "weight":
                lay = Layout((0, 1), (INDEX, FEATURE), name="[vocab, dim]")
            elif isinstance(mod, torch.nn.MultiheadAttention) and pname in ("in_proj_weight", "in_proj_bias"):
                if shape[0] % 3 == 0:
                    kinds = (PARTS,) + (FEATURE,) * len(shape)
                    lay = Layout(tuple(range(len(shape))), kinds, 3, name="fused qkv")
            elif isinstance(mod, norms) and pname in ("weight", "bias"):
                lay = Layout(tuple(range(len(shape))), (FEATURE,) * len(shape), name="norm")
            out[name] = lay if lay is not None else _default_layout(shape)
    return out


# --------------------------------------------------------------------------
# shares and penalty
# --------------------------------------------------------------------------

def _named(params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, torch.nn.Module):
        return list(params.named_parameters())
    if isinstance(params, Mapping):
        return list(params.items())
    if isinstance(params, torch.Tensor):
        raise TypeError("pass a module, a dict name -> tensor or (name, tensor) pairs, not a bare tensor")
    return [(str(n), t) for n, t in params]


def _resolve_layouts(params, named, layouts) -> dict[str, Layout]:
    names = {n for n, _ in named}
    given = dict(layouts or {})
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"layouts for unknown parameter(s): {', '.join(unknown[:10])}"
                         + (" ..." if len(unknown) > 10 else ""))
    base = module_layouts(params) if isinstance(params, torch.nn.Module) else {}
    out = {}
    for n, t in named:
        spec = given[n] if n in given else base.get(n) or _default_layout(tuple(t.shape))
        out[n] = _as_layout(spec, n)
    return out


def _share(x: torch.Tensor, lay: Layout, keep: float, name: str) -> torch.Tensor | None:
    """The out-of-band share of one tensor, or None when it has no feature axis to cut."""
    if isinstance(x, torch.nn.parameter.UninitializedParameter):
        return None
    c = _canonical(x, lay, name)
    feature = [a for a, kind in enumerate(lay.kinds) if kind == FEATURE]
    if not feature or c.numel() == 0:
        return None
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = c.to(dtype)
    y = y - y.mean()
    total = (y * y).sum()
    # the constant guard of spectral.standardize at the compute precision
    floor = max(torch.finfo(dtype).tiny, 0.0)
    rtol = 64.0 * torch.finfo(dtype).eps
    with torch.no_grad():
        scale = c.detach().abs().max().to(dtype)
        limit = torch.clamp(rtol * scale, min=floor)
        const = total.detach() <= limit * limit * y.numel()
    cuts = {a: kept_length(c.shape[a], keep) for a in feature}
    cuts = {a: k for a, k in cuts.items() if k < c.shape[a]}
    if not cuts:  # the corner keeps everything
        return total * 0.0
    # project onto the kept rows axis by axis; `pos` tracks where each original axis went
    pos = list(range(y.dim()))
    z = y
    for a in _axis_order(tuple(c.shape), cuts):
        z = _project(z, pos[a], cuts[a])
        moved = pos[a]
        pos = [p if p < moved else (p - 1 if p > moved else z.dim() - 1) for p in pos]
    inside = (z * z).sum()
    den = torch.where(const, torch.ones_like(total), total)
    share = torch.where(const, torch.zeros_like(total), (total - inside) / den)
    return share.clamp(0.0, 1.0)


def spectral_shares(params, keep: float, layouts: Mapping[str, LayoutLike] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Per weight: the share (0..1) of its standardized orthonormal DCT energy outside the
    kept low-frequency corner, as a differentiable 0-d tensor.

    ``params``: an ``nn.Module`` (its ``named_parameters``), a dict name -> tensor, or an
    iterable of (name, tensor). ``layouts`` (name -> :class:`~front_onnx.analysis.slots.Layout` or a
    tuple of axis kinds for an already canonical tensor) overrides the defaults:
    :func:`module_layouts` for a module, every axis feature otherwise. A name in ``layouts``
    that is not a parameter raises ValueError (a typo would silently do nothing).
    Tensors with no feature axis are left out. See the module docstring for the definition.
    """
    kept_length(1, keep)  # validates keep
    named = _named(params)
    lays = _resolve_layouts(params, named, layouts)
    out: dict[str, torch.Tensor] = {}
    for n, t in named:
        s = _share(t, lays[n], keep, n)
        if s is not None:
            out[n] = s
    return out


def spectral_penalty(params, keep: float, layouts: Mapping[str, LayoutLike] | None = None,
                     weighting: str = "mean") -> torch.Tensor:
    """The FRONT+ spectral regularizer: a scalar, differentiable combination of the
    per-weight out-of-band shares of :func:`spectral_shares`.

    ``weighting="mean"``: every weight counts equally (the mean share); ``"size"``: shares
    weighted by the number of elements of each weight (big matrices dominate). Either way
    the result is in [0, 1]. Typical use, with ``lam`` of the order of the task loss
    (see the module docstring on scale)::

        loss = task_loss + lam * spectral_penalty(model, keep)

    No weight with a feature axis: a zero tensor (no gradient).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    named = _named(params)
    shares = spectral_shares(named if not isinstance(params, torch.nn.Module) else params, keep, layouts)
    if not shares:
        first = next((t for _, t in named), None)
        return torch.zeros((), device=first.device if first is not None else None)
    vals = list(shares.values())
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in vals) else torch.float32
    device = vals[0].device
    stacked = torch.stack([v.to(dtype=dtype, device=device) for v in vals])
    if weighting == "mean":
        return stacked.mean()
    sizes = dict(named)
    w = torch.tensor([float(sizes[n].numel()) for n in shares], dtype=dtype, device=device)
    return (stacked * w).sum() / w.sum()
