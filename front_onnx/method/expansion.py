"""Function-preserving growth ('expand'): a wider target that starts computing what the
source computes, instead of a low-pass interpolation of it.

Per template the target holds more of: the source's entries fill the leading positions of
every grown axis. Units the source lacks keep the target's own values where they are
*produced* (a weight's out axis, a bias, a norm's entries: fresh, as the target's framework
initialized them) and are read with zeros by the source's units (a weight's in axis, for an
out index the source has). So no unit of the source reads a new one, and the source's units
compute what they did, wherever only weights read a space's units: convolutions and linear
layers, per-channel norms and activations, residual adds, pooling. A new unit reads the
source's units with fresh weights, so it trains (zeros on both sides would leave it dead),
and its outgoing zeros get gradients from its activations.

What else reads a space's units breaks this: a LayerNorm over a grown width averages over the
new units too, and attention scores sum over a grown head's dimensions; templates split into
heads or fused parts, other roles and grown kernels are transformed instead. The transfer
checks the result's function (``validation.equivalence``) and transforms the growth where it
does not hold. Blocks are picked as depth mode 'nearest' does; with 'identity' the blocks the
source lacks are residual identities, and the deeper target keeps the source's function too.
"""
from __future__ import annotations

import numpy as np

from front_onnx.analysis.slots import FEATURE, Layout
from front_onnx.method.learngene import GeneTemplate
from front_onnx.method.selection import reads_whole, selects, whole_source
from front_onnx.numeric import spectral

# role -> (out axis, in axis or None) of the canonical shape
_AXES: dict[str, tuple[int, int | None]] = {
    "linear.weight": (0, 1), "conv.weight": (0, 1),
    "linear.bias": (0, None), "conv.bias": (0, None),
    "norm.scale": (0, None), "norm.bias": (0, None), "norm.mean": (0, None), "norm.var": (0, None),
    "embedding": (1, None),
}


def expandable(role: str, layout: Layout, source: tuple[int, ...], target: tuple[int, ...]) -> str:
    """Why a template cannot be expanded ('' when it can): a role whose out and in axes are
    known, no heads or fused parts, grown only along those axes."""
    if role not in _AXES:
        return f"expansion knows no out/in axes of a {role}"
    if layout.parts > 1 or any(layout.heads):
        return "split into heads or fused parts (attention reads their units besides the weights)"
    out, inp = _AXES[role]
    for k, (kind, s, t) in enumerate(zip(layout.kinds, source, target)):
        if t < s:
            return f"axis {k} shrinks ({s} -> {t})"
        if t > s and (k not in (out, inp) or kind != FEATURE):
            return f"axis {k} ({kind}) grows, not an out or in axis"
    if len(source) != len(target) or out >= len(target):
        return "the shapes do not match the role"
    return ""


def expands(method: str, gene: GeneTemplate, depth: int, shape: tuple[int, ...], layout: Layout,
            keep: float = 1.0) -> bool:
    """Whether ``method`` fills this template by expansion: 'expand' where it does not select
    (the target holds more), the template can be expanded, and the source's tensors are at
    hand (``selection.whole_source``)."""
    return method == "expand" and reads_whole(method, keep) \
        and not selects(method, gene, depth, shape, keep, layout.head_axes, dict(layout.branches)) \
        and not expandable(gene.role, layout, tuple(gene.shape), tuple(shape)) and whole_source(gene)


def expand(blocks: np.ndarray, depth: int, shape: tuple[int, ...], role: str) -> tuple[np.ndarray, np.ndarray]:
    """(stack [depth, *shape] float64, fresh [*shape] bool) from the source's blocks [L, *shape_src]:
    the source in the leading positions, zeros where a source unit reads a new one, and
    ``fresh`` marking the entries of new units, which keep the target's own values. Blocks
    are picked by relative depth (``spectral.nearest_layers``)."""
    out_axis = _AXES[role][0]
    have = blocks.shape[1:]
    picked = np.asarray(blocks, np.float64)[spectral.nearest_layers(blocks.shape[0], depth)]
    stack = np.zeros((depth,) + tuple(shape), np.float64)
    stack[(slice(None),) + tuple(slice(0, n) for n in have)] = picked
    fresh = np.zeros(tuple(shape), dtype=bool)
    index = [slice(None)] * len(shape)
    index[out_axis] = slice(have[out_axis], None)
    fresh[tuple(index)] = True  # a source unit's entries for new in units stay zero
    return stack, fresh


def fresh_count(gene: GeneTemplate, shape: tuple[int, ...]) -> int:
    """Entries of one target block an expansion leaves at the target's own values: those of
    the units the source lacks on the out axis."""
    out_axis = _AXES[gene.role][0]
    return int(np.prod(shape)) // shape[out_axis] * (shape[out_axis] - gene.shape[out_axis])


def expand_ops(gene: GeneTemplate, shape: tuple[int, ...], depth: int, depth_mode: str) -> list[str]:
    """The operations of an expansion, for the plan."""
    ops = [f"depth: {depth_mode if depth_mode in spectral.PICKING_MODES else 'nearest'} {gene.depth}->{depth}"
           if depth != gene.depth else f"depth: {depth} (copy)"]
    out_axis = _AXES[gene.role][0]
    for k, (ns, nt) in enumerate(zip(gene.shape, shape)):
        if nt == ns:
            ops.append(f"axis {k}: {nt} (copy)")
        elif k == out_axis:
            ops.append(f"axis {k}: expand {ns}->{nt} (new units: the target's own values)")
        else:
            ops.append(f"axis {k}: expand {ns}->{nt} (new units read with zeros)")
    return ops
