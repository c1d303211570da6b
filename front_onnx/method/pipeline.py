"""The steps of ``transfer`` on loaded models, shared by ``front_onnx.transfer`` (files, guards,
validation: ``api.py``) and ``front_onnx.torch.transfer_module`` (torch modules exported into a
temporary folder), so that both compute the same plan and write the same bytes."""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from front_onnx.analysis import weight_slots
from front_onnx.analysis.pairing import one_structure, promote_differing
from front_onnx.analysis.slots import GraphSlots, slot_dtype
from front_onnx.analysis.structure import Structure, find_structure, single_layer_stages, stage_blocks
from front_onnx.method.amplitude import SCALES
from front_onnx.method.extraction import extract_learngene
from front_onnx.method.learngene import Learngene
from front_onnx.method.materialize import needed_shapes, slot_values, target_shapes, write_initialized
from front_onnx.method.planning import Plan, check_overlap, make_plan, source_templates
from front_onnx.method.expansion import expandable
from front_onnx.method.selection import fits, reads_whole
from front_onnx.onnxio import OnnxModel, load_model

# ``scale='calibrated'``: (the target as first written, its plan) -> an object with ``factors``
# (slot -> factor) and ``describe()``; ``validation.calibration`` measures them with onnxruntime.
Calibrator = Callable[[OnnxModel, Plan], object]

DEFAULT_KEEP = 1.0          # the defaults are the convergence benchmark's best (docs/results.md)
DEFAULT_CONVENTION = "ortho"
DEFAULT_DEPTH = "identity"    # measured best (docs/results.md): blocks the source lacks start as identities
DEFAULT_METHOD = "expand"     # measured best (docs/results.md): selection when shrinking; when growing,
#                               expansion where it keeps the source's function (checked), else FRONT
DEFAULT_SCALE = "none"

__all__ = ["DEFAULT_CONVENTION", "DEFAULT_DEPTH", "DEFAULT_KEEP", "DEFAULT_METHOD", "DEFAULT_SCALE",
           "expansion_blocked", "initialize_into", "pair_analysis", "pair_learngene", "selects_any"]


def pair_analysis(s: OnnxModel, t: OnnxModel) -> tuple[tuple, tuple]:
    """Source and target analyzed together: each side's stages are looked for in the other,
    so a stage of one block on either side meets its counterpart of several; and single
    layers feeding one another that only one side repeats are a coincidence of widths there,
    not a stage (``find_structure``'s ``lone``)."""
    target_slots = weight_slots(t)  # the slot analysis once; structure per side
    source_slots = weight_slots(s)
    alone = find_structure(source_slots, s.proto), find_structure(target_slots, t.proto)
    if one_structure(*alone) and promote_differing(source_slots, s.array, target_slots, t.array):
        alone = find_structure(source_slots, s.proto), find_structure(target_slots, t.proto)  # evidence only such a pair has
    singles = single_layer_stages(alone[0]), single_layer_stages(alone[1])
    target_own = stage_blocks(alone[1].templates)
    source_analysis = (source_slots, find_structure(source_slots, s.proto, target_own, singles[0] - singles[1]))
    known = stage_blocks(source_analysis[1].templates)
    return source_analysis, (target_slots, find_structure(target_slots, t.proto, known, singles[1] - singles[0]))


def pair_learngene(s: OnnxModel, source_analysis, analysis, *, keep: float, convention: str, depth: str,
                   allow_nonfinite: bool, method: str = "front") -> Learngene:
    """The source's learngene, holding only what the target's plan needs: the corner of the
    spectrum each transformed template reads, and where the transfer selects (Weight
    Selection, and 'hybrid' at keep 1.0) the source's tensors themselves (no transform)."""
    sources = source_templates([asdict(seg) for seg in source_analysis[1].segments], analysis[1].segments,
                               analysis[1].templates)
    needed = needed_shapes(*analysis, depth, sources)
    picked: frozenset[str] = frozenset()
    whole = reads_whole(method, keep)
    if whole:
        selected = _selected_targets(source_analysis, analysis, sources)
        if method == "expand":
            selected |= _expandable_targets(source_analysis, analysis, sources)
        picked = frozenset(sources[k] for k in selected)
        transformed = {sources[k] for k in sources if k not in selected}
        needed = {k: v for k, v in needed.items() if k in transformed}
    return extract_learngene(s, keep=1.0 if whole else keep, convention=convention, needed=needed,
                             allow_nonfinite=allow_nonfinite, structure=source_analysis, values_for=picked)


def _selected_targets(source_analysis, analysis, sources: dict[str, str]) -> set[str]:
    """The target templates selection can fill: nowhere longer than their source template."""
    have = target_shapes(*source_analysis)
    gs, st = analysis
    sgs, sst = source_analysis

    def layout(g: GraphSlots, s: Structure, key: str):
        return g.slots[s.templates[key].blocks[0][0]].layout

    return {k for k, shape in target_shapes(*analysis).items()
            if k in sources and sources[k] in have
            and fits(have[sources[k]], shape, layout(gs, st, k).head_axes,
                     (dict(layout(sgs, sst, sources[k]).branches), dict(layout(gs, st, k).branches)))}


def _expandable_targets(source_analysis, analysis, sources: dict[str, str]) -> set[str]:
    """The target templates expansion can fill (``expansion.expandable``)."""
    return {k for k, why in _expansion_verdicts(source_analysis, analysis, sources).items() if not why}


def _expansion_verdicts(source_analysis, analysis, sources: dict[str, str]) -> dict[str, str]:
    """Target template -> why expansion cannot fill it ('' when it can), for those with a source."""
    have = target_shapes(*source_analysis)
    gs, st = analysis
    out = {}
    for k, shape in target_shapes(*analysis).items():
        src = have.get(sources.get(k, ""))
        first = gs.slots[st.templates[k].blocks[0][0]]
        if src is not None and len(src) == len(shape) and first.layout is not None:
            out[k] = expandable(st.templates[k].role, first.layout, src[1:], shape[1:])
    return out


def expansion_blocked(source_analysis, analysis) -> str:
    """Why 'expand' cannot keep this pair's growth ('' when it may: the written target is then
    checked): a template the target holds more of that expansion cannot fill is transformed,
    and a transformed growth does not compute the source's function."""
    sources = source_templates([asdict(seg) for seg in source_analysis[1].segments], analysis[1].segments,
                               analysis[1].templates)
    selected = _selected_targets(source_analysis, analysis, sources)
    blocked = {k: why for k, why in _expansion_verdicts(source_analysis, analysis, sources).items()
               if why and k not in selected}
    if not blocked:
        return ""
    key = sorted(blocked)[0]
    return f"{len(blocked)} grown templates cannot be expanded ({key}: {blocked[key]})"


def selects_any(source_analysis, analysis) -> bool:
    """Whether 'hybrid' would select anything: a target template smaller than its source
    template and nowhere larger (depth included). Without one (a pure growth) no unit is selected, and
    ordering the source's units by importance would only cost time."""
    have = target_shapes(*source_analysis)
    sources = source_templates([asdict(seg) for seg in source_analysis[1].segments], analysis[1].segments,
                               analysis[1].templates)
    shapes = target_shapes(*analysis)
    return any(shapes[k] != have[sources[k]] for k in _selected_targets(source_analysis, analysis, sources))


def initialize_into(t: OnnxModel, gene: Learngene, output: Path, analysis, depth: str, *,
                    external_data: bool | None = None, release: bool = False, label: str = "",
                    method: str = "front", scale: str = "none",
                    calibrate: Calibrator | None = None) -> tuple[Plan, int]:
    """Plan ``t`` from ``gene``, refuse a plan without overlap (FrontError), and write the
    initialized model to ``output``; returns the plan and the number of shared initializers split.
    With ``scale='calibrated'`` the values are first written to a temporary folder, where
    ``calibrate`` measures each layer's factor, and written again scaled."""
    gs, st = analysis
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    if scale == "calibrated" and calibrate is None:
        raise ValueError("scale 'calibrated' needs the source model to measure against (transfer, not a learngene)")
    p = make_plan(gene, gs, st, [n.name for n in t.proto.graph.node], depth, method)
    check_overlap(p, st, str(t.path), label or gene.source or "the source")
    dtypes = {s.initializer: slot_dtype(s) for s in gs.slots}
    unknown: dict = {}
    values = slot_values(gene, gs, st, p, dtypes, depth, release=release,  # release: gene is transfer's own
                         unknown=unknown, method=method, scale=scale)
    values = {i: v for i, v in values.items() if p.slots[i].status == "written"}  # absent biases may be left
    if scale == "calibrated":
        assert calibrate is not None
        with tempfile.TemporaryDirectory(prefix="front-onnx-calibrate-") as tmp:
            first = Path(tmp) / "uncalibrated.onnx"
            info = write_initialized(t, gs, values, first, external_data=external_data, unknown=dict(unknown))
            for i, name in info["renamed"].items():
                p.slots[i].written_as = name
            cal = calibrate(load_model(first), p)
        for i, f in cal.factors.items():  # type: ignore[attr-defined]
            values[i] = (np.asarray(values[i], np.float64) * f).astype(values[i].dtype)
            p.slots[i].operations.append(f"calibrated x{f:.4g}")
        p.notes.append(cal.describe())  # type: ignore[attr-defined]
    info = write_initialized(t, gs, values, output, external_data=external_data, unknown=unknown)
    for i, name in info["renamed"].items():
        p.slots[i].written_as = name
    p.requantized = info["requantized"]
    if info["unified"]:
        names = info["unified"]
        p.notes.append(f"one tensor: {len(names)} parameter{'s' if len(names) > 1 else ''} that several layers read "
                       f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) got different values for its "
                       "uses; it holds its first use's, as one tensor (a shared projection, a tied table)")
    return p, info["split"]
