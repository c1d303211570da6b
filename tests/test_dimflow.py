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
        assert _space(gs, flow, f"layers.{layer}.self_attn.k_proj", "linear.weight", 2) == resid  # (heads, head_dim, in)
        assert _space(gs, flow, f"layers.{layer}.mlp.down_proj", "linear.weight", 0) == resid
    # the MLP hidden width: gate and up outputs and down's input, one space per layer, not the residual
    hidden = _space(gs, flow, "layers.0.mlp.gate_proj", "linear.weight", 0)
    assert hidden != resid and _space(gs, flow, "layers.0.mlp.up_proj", "linear.weight", 0) == hidden
    assert _space(gs, flow, "layers.0.mlp.down_proj", "linear.weight", 1) == hidden
    assert _space(gs, flow, "layers.1.mlp.gate_proj", "linear.weight", 0) != hidden
    # heads: q is 4 heads of 8, grouped-query k and v are 2 heads of 8; the projections' out
    # axes are split by heads (their canonical axes 0 and 1 are one space's heads and head_dim)
    for proj, split in (("q_proj", [4, 8]), ("k_proj", [2, 8]), ("v_proj", [2, 8])):
        h = _space(gs, flow, f"layers.0.self_attn.{proj}", "linear.weight", 0)
        d = _space(gs, flow, f"layers.0.self_attn.{proj}", "linear.weight", 1)
        assert h.endswith("/h") and d == h[:-2] + "/d"
        assert split in by_id[h[:-2]].factors
    # o_proj's in axis merges the heads back: (out, heads, head_dim)
    assert _space(gs, flow, "layers.0.self_attn.o_proj", "linear.weight", 1).endswith("/h")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_grouped_query_projections_keep_whole_heads(exporter):
    """Shrinking Llama from 2 k/v heads to 1 (head_dim 8 on both sides) resamples the number
    of heads and copies head_dim: no target head is made of parts of several source heads'
    dimensions (a flat out axis would take rows 2i and 2i+1 of the source)."""
    import front_onnx

    root = MODELS / "llama" / exporter
    plan = front_onnx.plan(root / "source.onnx", root / "shrink.onnx", keep=1.0, method="front")
    k = [s for s in plan.written if s.role == "linear.weight" and "k_proj" in " ".join(s.evidence)]
    assert k, "no k_proj written"
    for s in k:
        assert s.shape and s.operations[1:3] == ["feature0: truncate 2->1", "feature1: copy 8"], s.operations
    # selection (the default when shrinking) takes one whole head of the two
    plan = front_onnx.plan(root / "source.onnx", root / "shrink.onnx", keep=1.0)
    k = [s for s in plan.written if s.role == "linear.weight" and "k_proj" in " ".join(s.evidence)]
    assert k and all(s.operations[1].startswith("axis 0: select 1 of 2 (") and s.operations[2] == "axis 1: 8 (copy)"
                     for s in k), [s.operations for s in k]


def test_layout_heads_round_trip():
    """A layout split by heads reads a stored tensor into canonical order and writes it back
    to the same bytes, for parts and transposes alike."""
    import numpy as np

    from front_onnx.analysis.slots import FEATURE, PARTS, Layout

    rng = np.random.default_rng(0)
    cases = [(Layout((1, 0), (FEATURE,) * 3, heads=(4, 0)), (16, 32), (4, 8, 16)),
             (Layout((1, 0), (FEATURE,) * 3, heads=(0, 4)), (32, 16), (16, 4, 8)),
             (Layout((1, 0), (PARTS,) + (FEATURE,) * 3, 3, heads=(2, 0)), (16, 48), (3, 2, 8, 16)),
             (Layout((0,), (FEATURE,) * 2, heads=(1,)), (8,), (1, 8))]
    for lay, stored, canon in cases:
        a = rng.normal(size=stored)
        c = lay.to_canonical(a)
        assert c.shape == canon == lay.canonical_shape(stored)
        np.testing.assert_array_equal(lay.from_canonical(c), a)
    # heads split the out axis head by head: canonical [h, d] is stored column h * D + d
    lay = Layout((1, 0), (FEATURE,) * 3, heads=(4, 0))
    a = rng.normal(size=(16, 32))
    np.testing.assert_array_equal(lay.to_canonical(a)[2, 5], a[:, 2 * 8 + 5])


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_resnet_conv_channels_follow_the_residual(exporter):
    _, gs, _, flow = _flow("resnet", exporter)
    convs = [(i, s) for i, s in enumerate(gs.slots) if s.role == "conv.weight"]
    # a BasicBlock: conv2's output joins the block's input through the residual Add, so the
    # out axis of the second conv of consecutive blocks of one stage is one space
    spaces = [flow.slot_axes[i][0] for i, s in convs]
    assert len(set(spaces)) < len(spaces)
    assert all(len(flow.slot_axes[i]) == len(s.layout.canonical_shape(s.shape)) for i, s in convs)


def test_a_node_that_contradicts_its_shapes_is_not_followed():
    """A damaged attribute (a Transpose perm out of range, found by fuzzing) makes the flow
    skip that node, not fail: the flow reads evidence, and such a node is evidence of nothing."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from front_onnx.analysis.slots import analyze_slots

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                           helper.make_node("Transpose", ["h"], ["y"], perm=[0, 4])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    flow = dimension_flow(m, analyze_slots(m))
    assert flow.slot_axes  # the weight's own axes are still reported


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("family", ["resnet", "efficientnet", "swin"])
def test_pooled_channels_reach_the_classifier(family, exporter):
    """Global pooling (a ReduceMean without kept dims, GlobalAveragePool then Flatten) keeps the
    channels: the classifier's in axis is the space of the last layer that produces them, so
    an alignment permutes the classifier's columns with the channels (else the space cannot be
    aligned without changing the function)."""
    _, gs, _, flow = _flow(family, exporter)
    weights = [(i, s) for i, s in enumerate(gs.slots) if s.role in ("conv.weight", "linear.weight") and not s.absent]
    head, last = weights[-1], weights[-2]
    assert head[1].module in ("fc", "classifier", "head.fc")
    assert flow.slot_axes[head[0]][1] == flow.slot_axes[last[0]][0]
