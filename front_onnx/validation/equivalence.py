"""Does a rewritten source still compute the source's function? Used by alignment
(``method.alignment``): a permutation of a channel space that some tensor outside the weights
also indexes would change the outputs, and such a space is left in its order. A graph output
that holds a space's units (an embedding model's output is its residual width) is compared
in the permuted order: the permuted source computes the same function up to the order of
those output units."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from front_onnx.analysis.slots import GraphSlots
from front_onnx.analysis.structure import Structure
from front_onnx.errors import FrontError, OnnxFileError
from front_onnx.method.alignment import ORDERS, Alignment, ordered_blocks, outputs_kept, plan_alignment, write_aligned
from front_onnx.method.extraction import file_sha256
from front_onnx.method.learngene import Learngene
from front_onnx.method.pipeline import pair_learngene, selects_any
from front_onnx.method.selection import reads_whole
from front_onnx.numeric.spectral import PICKING_MODES
from front_onnx.method.planning import Plan
from front_onnx.onnxio import OnnxModel, load_model
from front_onnx.validation.checks import synthesize_inputs
from front_onnx.validation.runtime import open_session, run_or_refuse

R = TypeVar("R")

TOLERANCE = 1e-4  # relative to the largest output value: float32 sums in another order


def _outputs(m: OnnxModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = open_session(m.path, "cpu", model_dir=m.path.parent).session
    return run_or_refuse(sess, feeds, str(m.path), "synthesized inputs that check --align keeps its function")


def _feeds(m: OnnxModel) -> dict[str, np.ndarray]:
    return synthesize_inputs(m.proto, {"batch": 1})  # a permutation mixes no samples: one is enough


def same_function(a: OnnxModel, b: OnnxModel, reference: list[np.ndarray] | None = None) -> bool:
    """Whether ``b`` gives ``a``'s outputs on synthesized inputs (``reference``: ``a``'s, if known)."""
    feeds = _feeds(a)
    want = reference if reference is not None else _outputs(a, feeds)
    got = _outputs(b, feeds)
    for x, y in zip(want, got):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x64.shape != y64.shape or not np.all(np.isfinite(y64)):
            return False
        if np.max(np.abs(x64 - y64)) > TOLERANCE * max(float(np.max(np.abs(x64))), 1e-30):
            return False
    return True


def expansion_note(expanded: int, why: str = "") -> str:
    """The plan's note on a checked expansion: kept (``why`` empty), or transformed, and why."""
    if not why:
        return (f"expand: {expanded} grown templates expanded; the target computes the source's outputs (checked on "
                "synthesized inputs)")
    return f"expand: expanding the growth would change the source's outputs ({why}): the growth is transformed, as " \
        "--method hybrid"


def checked_expansion(source: OnnxModel, write: Callable[[str], tuple[R, Plan, Path]]) -> tuple[R, Plan]:
    """``method='expand'``, checked: ``write(method)`` writes the target with that method and
    returns (its result, plan, written file). Written with 'expand'; when that expanded a
    growth, it is kept only if the written target computes the source's outputs
    (``keeps_function``), else written again with 'hybrid' (the growth transformed). The
    kept plan's notes say which, and why."""
    result, plan, path = write("expand")
    if plan.expanded:
        kept, why = keeps_function(source, load_model(path))
        expanded = len(plan.expanded)
        if not kept:
            result, plan, _ = write("hybrid")
        plan.notes.append(expansion_note(expanded, "" if kept else why))
    return result, plan


def keeps_function(source: OnnxModel, grown: OnnxModel) -> tuple[bool, str]:
    """Whether a grown target gives the source's outputs on the source's synthesized inputs
    (``method.expansion``), and if not, why, in words."""
    feeds = _feeds(source)
    want = _outputs(source, feeds)
    try:
        got = _outputs(grown, feeds)
    except FrontError as e:
        return False, f"it cannot run on the source's inputs: {e}"
    for x, y, o in zip(want, got, grown.proto.graph.output):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x64.shape != y64.shape:
            return False, f"output {o.name} has shape {list(y64.shape)}, the source's {list(x64.shape)}"
        scale = max(float(np.max(np.abs(x64))), 1e-30) if x64.size else 1.0
        err = float(np.max(np.abs(x64 - y64))) / scale if x64.size else 0.0
        if not err <= TOLERANCE:
            return False, f"output {o.name} differs by {err:.2g} of its largest value"
    return True, ""


def _permuted(reference: list[np.ndarray], names: list[str], al: Alignment,
              only: set[str] | None = None) -> list[np.ndarray]:
    """The source's outputs as the aligned copy gives them: an output axis that holds a
    permuted space's units in that space's order."""
    out = list(reference)
    for sp in al.spaces:
        if only is None or sp.id in only:
            for name, axis in sp.outputs:
                j = names.index(name)
                out[j] = np.take(out[j], sp.order, axis=axis)
    return out


def aligned_source(model: OnnxModel, gs: GraphSlots, folder: Path, across_depth: bool = False,
                   order: str = "smooth", kept_outputs: frozenset[tuple[str, int]] = frozenset()
                   ) -> tuple[OnnxModel, Alignment]:
    """The source with every channel space that can be aligned permuted into a smooth order,
    checked to compute the same function; a space whose permutation changes the outputs is
    left (checked one by one when the whole alignment does not hold). ``across_depth``: blocks'
    spaces matched along depth too (``alignment._match_depth``), for depth modes that mix blocks.
    ``kept_outputs``: as in ``plan_alignment``."""
    al = plan_alignment(model, gs, across_depth, order, kept_outputs)
    if not al.spaces:
        return model, al
    feeds = _feeds(model)
    reference = _outputs(model, feeds)
    names = [o.name for o in model.proto.graph.output]
    whole = write_aligned(model, al, folder / "all")
    if same_function(model, whole, _permuted(reference, names, al)):
        return whole, al
    sorted_heads = {id(sp): sp.heads_state() for sp in al.spaces}
    if any(sp.heads_group >= 0 for sp in al.spaces):  # heads paired wrongly: heads stay, units within them move
        for sp in al.spaces:
            sp.heads_in_place()
        whole = write_aligned(model, al, folder / "all-heads-kept")
        if same_function(model, whole, _permuted(reference, names, al)):
            return _heads_group_by_group(model, al, whole, sorted_heads, reference, names, folder, True), al
    kept = []
    for sp in al.spaces:
        one = write_aligned(model, al, folder / f"one-{sp.id}", {sp.id})
        if same_function(model, one, _permuted(reference, names, al, {sp.id})):
            kept.append(sp)
        else:
            al.skipped[sp.id] = "permuting it changes the source's outputs (something besides the weights indexes it)"
    al.spaces = kept
    if not kept:
        return model, al
    joint = write_aligned(model, al, folder / "kept")
    if not same_function(model, joint, _permuted(reference, names, al)):  # spaces that hold alone but not together
        for sp in kept:
            al.skipped[sp.id] = "aligned alone, but not together with the other spaces"
        al.spaces = []
        return model, al
    return _heads_group_by_group(model, al, joint, sorted_heads, reference, names, folder), al


def _heads_group_by_group(model: OnnxModel, al: Alignment, whole: OnnxModel, sorted_heads: dict,
                          reference: list[np.ndarray], names: list[str], folder: Path,
                          all_failed: bool = False) -> OnnxModel:
    """With every head in place the permuted source holds (``whole``): sort the heads again,
    groups of attentions (``SpaceOrder.heads_group``; ``sorted_heads``: the orders as
    planned, by space) kept when the function still holds: all at once, else each half in
    turn (bisection: a few full-model checks, not one per attention). So one attention whose
    heads something else indexes that the flow does not see (T5's decoder, whose position
    bias the legacy export computes), or a space that fails on its own (Swin's residual
    width), leaves the other attentions' heads sorted. ``all_failed``: all at once is known
    to fail (the whole alignment just did), start with the halves."""
    def sort(groups: list[int], known_to_fail: bool = False) -> None:
        nonlocal whole
        if not known_to_fail:
            before = {id(sp): sp.heads_state() for sp in al.spaces}
            for sp in al.spaces:
                if sorted_heads[id(sp)][3] in groups:
                    sp.restore_heads(sorted_heads[id(sp)])
            trial = write_aligned(model, al, folder / f"heads-{groups[0]}-{len(groups)}")
            if same_function(model, trial, _permuted(reference, names, al)):
                whole = trial
                return
            for sp in al.spaces:
                sp.restore_heads(before[id(sp)])
        if len(groups) > 1:
            sort(groups[:len(groups) // 2])
            sort(groups[len(groups) // 2:])

    groups = sorted({v[3] for v in sorted_heads.values() if v[3] >= 0})
    if groups:
        sort(groups, all_failed)
    return whole


def ordered_learngene(s: OnnxModel, analysis: tuple[GraphSlots, Structure] | None, folder: Path, order: str | None,
                      extract: Callable[[OnnxModel], Learngene], across_depth: bool = False,
                      kept_outputs: frozenset[tuple[str, int]] = frozenset()) -> tuple[Learngene, Alignment | None]:
    """``extract`` of the source with its units put in ``order`` first (``aligned_source``; none
    when None), the learngene recording the order (``unit_order``) and naming the user's source,
    not the aligned temporary copy (in errors too: the copy holds the source's values, permuted),
    and per template which axes the order covers (``ordered_blocks``; ``analysis``: the
    source's slots and structure, whose templates ``extract`` makes); and the alignment (None
    when none was done)."""
    if not order:
        return extract(s), None
    assert analysis is not None
    gs, st = analysis
    aligned, note = aligned_source(s, gs, folder, across_depth, order, kept_outputs)
    try:
        gene = extract(aligned)
    except OnnxFileError as e:
        if aligned is s:
            raise
        raise OnnxFileError(str(e).replace(str(aligned.path), str(s.path))) from None
    if note.spaces:
        gene.unit_order = order
        ordered = ordered_blocks(note, gs, {key: st.templates[key].blocks for key in gene.templates})
        for key, t in gene.templates.items():
            t.ordered = ordered[key]
        gene.source = s.path.name
        gene.source_sha256 = "" if gene.partial else file_sha256(s.path)
    return gene, note


def alignment_order(align: bool | str | None, method: str) -> str | None:
    """The unit order a transfer puts the source in: ``align`` None is the method's own
    ('importance' for 'hybrid' and 'expand', whose selection keeps the leading units; none otherwise),
    True is 'smooth', False or 'none' none."""
    if align is None:
        return "importance" if method in ("hybrid", "expand") else None
    if align is True:
        return "smooth"
    if align is False or align == "none":
        return None
    if align not in ORDERS:
        raise ValueError(f"unknown alignment {align!r}; use one of none, {', '.join(ORDERS)}")
    return str(align)


def transfer_learngene(s: OnnxModel, source_analysis, analysis, folder: Path, *, align: bool | str | None,
                       keep: float, convention: str, depth: str, allow_nonfinite: bool, method: str,
                       target: OnnxModel) -> tuple[Learngene, Alignment | None]:
    """A transfer's learngene, of the source aligned first as ``align`` asks
    (``alignment_order``), and the alignment (None when none was done). 'hybrid' does not
    order a source it selects nothing from (a pure growth, or keep < 1). A space whose units
    a graph output holds stays in order where the ``target``'s output keeps them all."""
    order = alignment_order(align, method)
    if order == "importance" and align is None:  # the method's own order: only for what it selects
        if not (reads_whole(method, keep) and selects_any(source_analysis, analysis)):
            order = None  # a pure growth, or keep < 1: nothing is selected
    across = depth not in PICKING_MODES and order == "smooth"  # blocks picked whole: nothing mixes them

    def extract(m: OnnxModel) -> Learngene:
        return pair_learngene(m, source_analysis, analysis, keep=keep, convention=convention, depth=depth,
                              allow_nonfinite=allow_nonfinite, method=method)
    return ordered_learngene(s, source_analysis, folder, order, extract, across_depth=across,
                             kept_outputs=outputs_kept(s, target) if order else frozenset())
