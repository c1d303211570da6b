"""Evidence from the pair: a tensor that differs between two models of one structure.

When nothing in a graph says whether an ambiguous tensor (one added, multiplied or
concatenated) is a parameter — no exporter mark, no ``folded_from``, a generated or
scrambled name — it is left as a constant. ``transfer`` and ``plan`` have a second model
at hand. A constant of the architecture (a mask, a rotary table, an index table) is the same
in two models of one structure; a tensor computed from parameters differs between a trained
source and a fresh target. So when the two models are one structure (the same stages and
layers: an identity transfer, a model into a fresh copy of itself), their unproven tensors
are lined up (same
role, consuming op and input, shape, in graph order, and as many on both sides), and a pair
whose values differ is taken for a parameter on both sides, with that evidence. A mask-like
tensor counts only when both hold mask values at the same entries and differ elsewhere: a
parameter combined with a mask (its mask entries are kept). Equal values
prove nothing, and leaving them equal is what a copy would do anyway. A configuration
constant that differs between the two models (another rotary base of the same shape) would
be taken for a parameter too: the evidence says so, and models with marks or names never
come here.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from front_onnx.analysis.folding import View, mask_entries
from front_onnx.analysis.slots import GraphSlots, Slot, slot_array
from front_onnx.analysis.structure import Structure

EVIDENCE = ("no mark or name, but it differs between the source and the target (models of one structure): "
            "computed from their parameters, not a constant of the architecture")


def _unproven(gs: GraphSlots) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(gs.slots):
        if s.candidate is not None:
            out[(s.candidate[0], s.op, s.consumer_input, tuple(s.shape))].append(i)
    return out


def _promote(s: Slot, values: np.ndarray) -> None:
    assert s.candidate is not None
    s.role, s.layout, masked = s.candidate
    s.reason, s.provenance, s.candidate = "", EVIDENCE, None
    if masked:  # a parameter combined with a mask: the mask entries are kept
        m = mask_entries(values)
        s.view = View(["mask"], tuple(s.shape), None, None, m, covered=int((~m).sum()))
        s.provenance += "; its mask entries are kept"


def one_structure(a: Structure, b: Structure) -> bool:
    """Whether two models are one structure: the same stages and layers in the same order
    (``Segment.sig`` and block counts), whatever the exporter varies (absent zero biases,
    deduplicated tensors, node order)."""
    return [(x.sig, x.count) for x in a.segments] == [(y.sig, y.count) for y in b.segments]


def promote_differing(source: GraphSlots, source_read: Callable[[str], np.ndarray],
                      target: GraphSlots, target_read: Callable[[str], np.ndarray]) -> int:
    """Take the unproven tensors that differ between source and target for parameters, on
    both sides (in place); returns how many source slots were promoted. Call it only for
    two graphs of one structure (``one_structure``)."""
    a, b = _unproven(source), _unproven(target)
    promoted = 0
    for key in sorted(a.keys() & b.keys(), key=repr):
        if len(a[key]) != len(b[key]):
            continue  # no one-to-one line-up: nothing to compare
        for i, j in zip(a[key], b[key]):
            x, y = slot_array(source_read, source.slots[i]), slot_array(target_read, target.slots[j])
            if x.shape != y.shape or np.array_equal(x, y):
                continue
            if source.slots[i].candidate[2] or target.slots[j].candidate[2]:  # type: ignore[index]
                mx, my = mask_entries(x), mask_entries(y)
                if not np.array_equal(mx, my) or mx.all():
                    continue  # masks that differ are two constants, not one parameter's entries
            _promote(source.slots[i], x)
            _promote(target.slots[j], y)
            promoted += 1
    return promoted
