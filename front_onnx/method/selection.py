"""Weight Selection (Xu et al. 2023, "Initializing Models with Larger Ones") as a method of
the tool: the same structure analysis and templates as FRONT, so it works on any pair of
graphs the transfer works on and compares with FRONT like for like.

A target block takes the source block of the same index ("first N" layer selection; with
'hybrid' and 'expand', a post-norm block's output norm in the last target block is the
source's last: ``selected_blocks``), and
every canonical axis that is shorter in the target keeps evenly spaced source indices
``floor(i * n_src / n_tgt)`` ("uniform" element selection). Canonical axes carry the parts of
a fused projection and its heads, so the selection runs inside each part and keeps whole
heads (of equal head size; across heads, every k-th head). The indices depend on the two
lengths only, so a unit is selected alike in every tensor that indexes it. Weight Selection
cannot grow: a template whose target is longer anywhere (or deeper) is left, with the reason.
One exception: fewer, larger heads whose size is a multiple k of the source's (MiniLM's 12
heads of 32 into 3 heads of 64) take k whole source heads each, side by side (``regroups``):
every selected query unit still meets its own key unit, so a target head's scores are the sum
of its source heads' (their scale kept by the larger head's 1/sqrt(head size) when the heads'
scores are uncorrelated), where spreading a head's size over more source heads would cut
every head's dot products short.

With a source whose units were ordered by importance (``alignment``, order 'importance'), the
selection keeps the *leading* units of every shorter axis instead: the units that carry most of
the weights (structured magnitude pruning), not evenly spaced ones.

``hybrid`` chooses per template: selection where the target is nowhere longer than the source
(units kept whole: a low-pass along a neuron axis blends unrelated neurons), FRONT's transform
where it grows (selection cannot add units or blocks).

It needs the source's tensors themselves: ``transfer`` reads them from the source
(``GeneTemplate.values``: exact copies, no transform); from a learngene file, one of keep 1.0
holding the whole spectrum, inverted at the source's shape (exact to the spectrum's float32
rounding).
"""
from __future__ import annotations

import numpy as np

from front_onnx.method.extraction import transformed_axes
from front_onnx.method.learngene import GeneTemplate
from front_onnx.numeric import spectral

METHODS = ("front", "select", "hybrid", "expand")


def reads_whole(method: str, keep: float) -> bool:
    """Whether a transfer with ``method`` at ``keep`` selects, and so reads the source's tensors
    whole (a learngene of keep 1.0): 'select' always, 'hybrid' and 'expand' at keep 1.0 (at a
    lower keep they transform every template, as 'front')."""
    return method == "select" or (method in ("hybrid", "expand") and keep == 1.0)


def whole_source(gene: GeneTemplate) -> bool:
    """Whether the source's tensors of a template are at hand: held as they are, or as the
    whole spectrum (a learngene of keep 1.0)."""
    return gene.values is not None or tuple(gene.coefficients.shape) == (gene.depth,) + tuple(gene.shape)


def selects(method: str, gene: GeneTemplate, depth: int, shape: tuple[int, ...], keep: float = 1.0,
            heads: tuple[int, ...] = (), branches: dict[int, tuple[int, ...]] | None = None) -> bool:
    """Whether ``method`` fills this template by selection (else by FRONT's transform): 'hybrid'
    where the target holds no more of it than the source, from a learngene it can select from.
    ``heads``: the canonical heads axes (``Layout.head_axes``); ``branches``: the target's
    concatenated branches (``Layout.branches``)."""
    return method == "select" or (reads_whole(method, keep) and not cannot_select(gene, depth, shape, heads, branches))


def branch_indices(source: tuple[int, ...], target: tuple[int, ...], leading: bool = False) -> np.ndarray | None:
    """Which source channels an axis of concatenated branches takes: the target's branches
    matched with the source's in order (a target with fewer takes the first ones, as it takes
    the first layers that make them), each from its own branch, its first or evenly spaced
    channels; None when they cannot be (more branches, or a longer one)."""
    if len(target) > len(source) or any(t > n for n, t in zip(source, target)):
        return None
    starts = np.concatenate([[0], np.cumsum(source)[:-1]]).astype(np.int64)
    return np.concatenate([starts[i] + (np.arange(t) if leading else uniform_indices(n, t))
                           for i, (n, t) in enumerate(zip(source, target))])


def branch_mismatch(source: dict[int, tuple[int, ...]], target: dict[int, tuple[int, ...]] | None) -> str:
    """Why a selection cannot take each target branch of a concatenation from its own source
    branch, or ''."""
    for a in sorted(set(source) & set(target or {})):
        if branch_indices(source[a], target[a]) is None:  # type: ignore[index]
            return (f"Weight Selection cannot take each branch of a concatenation from its own (axis {a}: branches "
                    f"{' | '.join(map(str, source[a]))} -> {' | '.join(map(str, target[a]))})")  # type: ignore[index]
    return ""


def uniform_indices(n_src: int, n_tgt: int) -> np.ndarray:
    """Evenly spaced indices of ``n_tgt`` out of ``n_src``."""
    return (np.arange(n_tgt) * n_src) // n_tgt


def head_indices(ns: int, n: int, leading: bool, groups: int = 0, target_groups: int = 0) -> np.ndarray:
    """Which of ``ns`` heads the target's ``n`` take: the first (``leading``) or evenly spaced.
    Grouped-query heads (``groups`` key/value groups in the source, ``target_groups`` in the
    target; 1: multi-query; 0: not known, then heads are taken as any others) keep every
    query head with its key/value head:
    the groups kept are those the key/value projections keep (the same rule on the groups),
    and within each, the first or evenly spaced of its heads."""
    pick = (lambda a, b: np.arange(b)) if leading else uniform_indices
    if keeps_groups(ns, n, groups, target_groups):
        per = ns // groups
        return np.concatenate([k * per + pick(per, n // target_groups) for k in pick(groups, target_groups)])
    return pick(ns, n)


def keeps_groups(ns: int, n: int, groups: int, target_groups: int) -> bool:
    """Whether ``n`` heads in ``target_groups`` groups can be taken from ``ns`` in ``groups``
    whole groups (both known; no more groups, nor heads per group, than the source's)."""
    return groups > 0 and target_groups > 0 and ns % groups == 0 and n % target_groups == 0 \
        and target_groups <= groups and n // target_groups <= ns // groups


def regroups(source: tuple[int, ...], target: tuple[int, ...], heads: tuple[int, ...]) -> list[int]:
    """The heads axes whose target heads take several whole source heads each: a head size k
    times the source's, with no more units than the source's heads hold."""
    return [a for a in heads if a + 1 < min(len(source), len(target)) and target[a + 1] > source[a + 1]
            and target[a + 1] % source[a + 1] == 0 and target[a] * target[a + 1] <= source[a] * source[a + 1]]


def grown_axes(source: tuple[int, ...], target: tuple[int, ...], heads: tuple[int, ...] = ()) -> list[int]:
    """The axes along which the target is longer than the source, but for head sizes that
    whole source heads fill (``regroups``)."""
    filled = {a + 1 for a in regroups(source, target, heads)}
    return [k for k, (ns, nt) in enumerate(zip(source, target)) if nt > ns and k not in filled]


def cannot_select(gene: GeneTemplate, depth: int, shape: tuple[int, ...], heads: tuple[int, ...] = (),
                  branches: dict[int, tuple[int, ...]] | None = None) -> str:
    """Why a template cannot be filled by selection ('' when it can); ``branches``: the target's
    concatenated branches (``Layout.branches``)."""
    if depth > gene.depth:
        return f"Weight Selection cannot add blocks ({gene.depth} in the source, {depth} in the target)"
    longer = grown_axes(tuple(gene.shape), tuple(shape), heads)
    if longer:
        k = longer[0]
        return f"Weight Selection cannot grow an axis (axis {k}: {gene.shape[k]} -> {shape[k]})"
    branched = branch_mismatch(gene.branches, branches)
    if branched:
        return branched
    if not whole_source(gene):
        return "Weight Selection needs the whole source tensor (a learngene of keep 1.0)"
    return ""


def fits(source: tuple[int, ...], target: tuple[int, ...], heads: tuple[int, ...] = (),
         branches: tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]] = ({}, {})) -> bool:
    """Whether a target template [depth, *shape] can be selected from a source one: nowhere
    longer (depth included; ``heads`` index the shapes without depth), each concatenated
    branch from its own (``branches``: the source's and the target's)."""
    return len(source) == len(target) and target[0] <= source[0] \
        and not grown_axes(tuple(source[1:]), tuple(target[1:]), heads) and not branch_mismatch(*branches)


def selected_blocks(L: int, depth: int, output_norm: bool = False) -> list[int]:
    """The source blocks a selection takes for ``depth`` target blocks: the first ones ("first
    N"); for a post-norm block's output norm (``Template.output_norm``), the last target
    block takes the source's last one: it normalizes what the next stage or the head reads,
    and the head is the source's, trained on the last block's normalization."""
    if output_norm and depth < L:
        return list(range(depth - 1)) + [L - 1]
    return list(range(depth))


def select(gene: GeneTemplate, depth: int, shape: tuple[int, ...], convention: str,
           leading: bool = False, output_norm: bool = False, heads: tuple[int, ...] = (),
           groups: dict[int, int] | None = None, branches: dict[int, tuple[int, ...]] | None = None) -> np.ndarray:
    """The target's depth stack [depth, *shape] selected from the source's blocks: the
    source's own values where the gene holds them (``GeneTemplate.values``, a transfer's),
    else the whole spectrum inverted (float64); ``leading``: the first units of each shorter
    axis (a source ordered by importance); ``heads``: the canonical heads axes; ``groups``:
    the target's key/value groups of its grouped-query heads (``Layout.head_groups``);
    ``branches``: the target's concatenated branches (``Layout.branches``)."""
    why = cannot_select(gene, depth, shape, heads, branches)
    if why:
        raise ValueError(why)
    matched = {a: (b, (branches or {})[a]) for a, b in gene.branches.items() if a in (branches or {})}
    return _take(source_blocks(gene, convention)[selected_blocks(gene.depth, depth, output_norm)], gene.shape,
                 shape, leading, heads, head_groups(gene, groups), matched)


def head_groups(gene: GeneTemplate, target: dict[int, int] | None) -> dict[int, tuple[int, int]]:
    """Heads axis -> (source groups, target groups) where the source's heads are grouped."""
    return {a: (g, (target or {}).get(a, 0)) for a, g in gene.groups.items()}


def source_blocks(gene: GeneTemplate, convention: str) -> np.ndarray:
    """The source's blocks [L, *shape] of a template: its own values where the gene holds them
    (``GeneTemplate.values``, a transfer's), else the whole spectrum inverted (float64)."""
    if gene.values is not None:
        return gene.values
    full = (gene.depth,) + tuple(gene.shape)
    z = spectral.spectrum_to_array(gene.coefficients.astype(np.float64), full, transformed_axes(gene.kinds),
                                   convention)
    bshape = (gene.depth,) + (1,) * len(gene.shape)
    return z * np.asarray(gene.stds, np.float64).reshape(bshape) + np.asarray(gene.means, np.float64).reshape(bshape)


def _take(z: np.ndarray, have: tuple[int, ...], shape: tuple[int, ...], leading: bool,
          heads: tuple[int, ...] = (), groups: dict[int, tuple[int, int]] | None = None,
          branches: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] | None = None) -> np.ndarray:
    """Select along each shorter axis of the stack ``z`` [depth, *have]; regrouped heads
    (``regroups``) take k whole source heads per target head, in order; grouped-query heads
    (``groups``: axis -> source and target key/value groups) stay with their key/value heads;
    concatenated channels (``branches``: axis -> source and target branches) each target
    branch from its own source branch (``branch_indices``), whatever the totals."""
    merged = {a: shape[a + 1] // have[a + 1] for a in regroups(tuple(have), tuple(shape), heads)}
    groups = groups or {}
    for a, (ns, nt) in enumerate(zip(have, shape)):
        if a - 1 in merged:
            continue
        n = nt * merged.get(a, 1)
        if branches and a in branches:
            idx = branch_indices(*branches[a], leading=leading)
            assert idx is not None
            if not np.array_equal(idx, np.arange(ns)):
                z = np.take(z, idx, axis=a + 1)
        elif n < ns:
            idx = head_indices(ns, n, leading, *groups[a]) if a in groups and a not in merged else \
                np.arange(n) if leading else uniform_indices(ns, n)
            z = np.take(z, idx, axis=a + 1)
        if a in merged:  # [.., n heads, size, ..] -> [.., nt heads, k * size, ..]: heads side by side
            z = z.reshape(z.shape[:a + 1] + (nt, merged[a] * have[a + 1]) + z.shape[a + 3:])
    return np.ascontiguousarray(z)
