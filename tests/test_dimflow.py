"""Channel spaces from the dimension flow (front_onnx.analysis.dimflow), checked on real
exports: the residual width is one space across every block, each block's MLP hidden
width and attention projections are spaces of their own, and a Reshape into heads shows
the factoring (heads x head_dim, grouped-query k/v with fewer heads)."""
from __future__ import annotations

import pytest

from front_onnx.analysis import analyze
from front_onnx.analysis.dimflow import dimension_flow
from front_onnx.onnxio import load_model
from tests.corpus.build import MODELS


def _flow(family: str, exporter: str):
    m = load_model(MODELS / family / exporter / "source.onnx")
    gs, st = analyze(m)
    return m, gs, st, dimension_flow(m.proto, gs)


def _space(gs, flow, module_part: str, role: str, axis: int) -> str | None:
    for i, s in enumerate(gs.slots):
        if s.role == role and s.module and s.module.endswith(module_part) and not s.absent:
            return flow.slot_axes[i][axis]
    raise AssertionError(f"no {role} slot of a module ending in {module_part}")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_llama_spaces(exporter):
    _, gs, _, flow = _flow("llama", exporter)
    by_id = {c.id: c for c in flow.spaces}
    resid = _space(gs, flow, "layers.0.input_layernorm", "norm.scale", 0)
    # the residual width: every norm, the in axis of q/k/v/gate/up and the out axis of o/down, in every layer
    for layer in range(3):
        assert _space(gs, flow, f"layers.{layer}.post_attention_layernorm", "norm.scale", 0) == resid
        assert _space(gs, flow, f"layers.{layer}.self_attn.k_proj", "linear.weight", 1) == resid
        assert _space(gs, flow, f"layers.{layer}.mlp.down_proj", "linear.weight", 0) == resid
    # the MLP hidden width: gate and up outputs and down's input, one space per layer, not the residual
    hidden = _space(gs, flow, "layers.0.mlp.gate_proj", "linear.weight", 0)
    assert hidden != resid and _space(gs, flow, "layers.0.mlp.up_proj", "linear.weight", 0) == hidden
    assert _space(gs, flow, "layers.0.mlp.down_proj", "linear.weight", 1) == hidden
    assert _space(gs, flow, "layers.1.mlp.gate_proj", "linear.weight", 0) != hidden
    # heads: q is 4 heads of 8, grouped-query k and v are 2 heads of 8
    assert [4, 8] in by_id[_space(gs, flow, "layers.0.self_attn.q_proj", "linear.weight", 0)].factors
    assert [2, 8] in by_id[_space(gs, flow, "layers.0.self_attn.k_proj", "linear.weight", 0)].factors
    assert [2, 8] in by_id[_space(gs, flow, "layers.0.self_attn.v_proj", "linear.weight", 0)].factors


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_resnet_conv_channels_follow_the_residual(exporter):
    _, gs, _, flow = _flow("resnet", exporter)
    convs = [(i, s) for i, s in enumerate(gs.slots) if s.role == "conv.weight"]
    # a BasicBlock: conv2's output joins the block's input through the residual Add, so the
    # out axis of the second conv of consecutive blocks of one stage is one space
    spaces = [flow.slot_axes[i][0] for i, s in convs]
    assert len(set(spaces)) < len(spaces)
    assert all(len(flow.slot_axes[i]) == len(s.layout.canonical_shape(s.shape)) for i, s in convs)
