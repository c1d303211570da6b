"""The amplitude of transferred weights (``scale``): what a layer's output scale does when its
fan-in shrinks or grows is otherwise an accident of the DCT normalization (``ortho`` keeps the
spectrum's energy, so truncating loses some and zero-padding a grown axis spreads it thinner;
``paper`` amplifies every resized axis).

- ``none``: as the convention leaves it (the default until measured otherwise);
- ``element``: each target block's elements get exactly the source block's standard deviation
  (its mean kept), whatever truncation or padding did;
- ``fan-in``: ``element``, then a weight whose input width changes is scaled by
  ``sqrt(fan_in_source / fan_in_target)``, so a layer's output variance is the source's for
  inputs of the source's scale (the variance argument behind He/Xavier initialization);
- ``calibrated``: written as ``none``, then each projection/convolution weight multiplied so
  that its layer's output has the source layer's standard deviation, measured with
  onnxruntime (``validation.calibration``; needs the source model, not only a learngene).
"""
from __future__ import annotations

import numpy as np

from front_onnx.analysis.slots import Layout

SCALES = ("none", "element", "fan-in", "calibrated")
FORMULA_SCALES = ("element", "fan-in")  # applied while the values are computed
_WEIGHT_ROLES = {"linear.weight", "conv.weight"}


def fan_in(layout: Layout, canonical: tuple[int, ...]) -> int:
    """Elements one output unit of a weight reads: the canonical axes after the out axis
    (its parts and heads split off first)."""
    n_out = (1 if layout.parts > 1 else 0) + (2 if layout.heads and layout.heads[0] else 1)
    return int(np.prod(canonical[n_out:], dtype=np.int64)) if len(canonical) > n_out else 1


def gain(role: str, layout: Layout, source: tuple[int, ...], target: tuple[int, ...], scale: str) -> float:
    """The factor on a block's deviations from its mean, besides matching element stds."""
    if scale != "fan-in" or role not in _WEIGHT_ROLES:
        return 1.0
    return float(np.sqrt(fan_in(layout, source) / fan_in(layout, target)))


def rescale(arrays: list[np.ndarray], std: float, factor: float) -> None:
    """In place, the same affine map on every copy of one block: deviations from the mean
    scaled so that their standard deviation is ``std * factor``."""
    x = np.asarray(arrays[0], np.float64)
    m, s = float(x.mean()), float(x.std())
    if s == 0.0 or not np.isfinite(s):
        return
    k = std * factor / s
    for a in arrays:
        a[...] = ((np.asarray(a, np.float64) - m) * k + m).astype(a.dtype)
