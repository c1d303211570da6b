"""Graph analysis: what each initializer use (slot) is, and the model's repeated structure.

Roles and layouts come from the graph (``slots``); stages, blocks and templates from
comparing blocks (``structure``); framework parameter names from exporter evidence
(``naming``); the per-template spectral picture of a model (``inspection``).
Nothing here knows about learngenes or writes models.
"""
from __future__ import annotations

from front_onnx.analysis.dimflow import (dimension_flow, with_branches, with_cuts, with_heads, with_parts,
                                         with_unit_axes)
from front_onnx.analysis.slots import GraphSlots, analyze_slots, cut_into_pieces
from front_onnx.analysis.structure import Structure, find_structure
from front_onnx.onnxio import OnnxModel

__all__ = ["analyze", "weight_slots", "GraphSlots", "Structure"]


def weight_slots(model: OnnxModel) -> GraphSlots:
    """The slots of a model, attention projections split by heads (``dimflow``)."""
    gs = analyze_slots(model.proto, model.array)
    flow = dimension_flow(model.proto, gs)
    if flow.pieces:  # fused projections cut into pieces of unequal widths: one view per piece
        gs = cut_into_pieces(gs, flow.pieces)
        flow = dimension_flow(model.proto, gs)
    with_parts(gs, flow.parts)
    with_heads(gs, flow.heads, flow.groups)
    with_cuts(gs, flow.cuts)
    with_branches(gs, flow)
    with_unit_axes(gs, flow.unit_axes)
    return gs


def analyze(model: OnnxModel, known_blocks: dict[str, int] | None = None) -> tuple[GraphSlots, Structure]:
    """Slots and structure of a model; ``known_blocks`` (a source's stages, see
    ``structure.stage_blocks``) lets a target's one-block stages meet them."""
    gs = weight_slots(model)
    return gs, find_structure(gs, model.proto, known_blocks)
