"""Matching that tolerates what exporters and model sizes vary: stages of one block meet
stages of several, depthwise convolutions match whatever their width, and a block's last
projection is not taken for an output layer because its stream reaches a graph output."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx
from front_onnx.analysis.slots import FEATURE, INDEX, analyze_slots
from tests.graphs import mlp_stack


def _save(m: onnx.ModelProto, path) -> str:
    onnx.save(m, path)
    return str(path)


def test_a_one_block_target_meets_the_source_stage(tmp_path):
    src = _save(mlp_stack(16, 4, seed=0), tmp_path / "s.onnx")
    tgt = _save(mlp_stack(8, 1, seed=1), tmp_path / "t.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", keep=1.0, depth="nearest", method="front")
    stage = [s for s in r.plan.written if s.template.startswith("S")]
    assert len(stage) == 6 and all(any(op.startswith("depth: nearest 4->1") for op in s.operations) for s in stage)
    assert r.plan.summary()["written_fraction"] == 1.0
    # the default selects the stage's first block (narrower and shallower: nothing grows)
    h = front_onnx.transfer(src, tgt, tmp_path / "h.onnx", keep=1.0)
    stage = [s for s in h.plan.written if s.template.startswith("S")]
    assert len(stage) == 6 and all("layers: first 1 of 4" in s.operations for s in stage)
    assert h.plan.summary() == r.plan.summary()
    # the same from a learngene file: the target's side knows the learngene's stages
    gene = tmp_path / "g.safetensors"
    front_onnx.extract(src, keep=1.0, output=gene)
    r2 = front_onnx.initialize(tgt, gene, tmp_path / "o2.onnx", depth="nearest", method="front")
    assert r2.plan.summary() == r.plan.summary()


def test_a_one_block_source_meets_the_target_stage_in_transfer(tmp_path):
    src = _save(mlp_stack(16, 1, seed=0), tmp_path / "s.onnx")
    tgt = _save(mlp_stack(8, 3, seed=1), tmp_path / "t.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", keep=1.0)
    assert r.plan.summary()["written_fraction"] == 1.0
    assert front_onnx.plan(src, tgt).summary() == r.plan.summary()


def _depthwise(width: int, seed: int) -> onnx.ModelProto:
    """x -> pointwise conv (3 -> width) -> depthwise 3x3 (group = width) -> pointwise -> y."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("pw1", (width, 3, 1, 1)), ("dw", (width, 1, 3, 3)), ("dwb", (width,)), ("pw2", (4, width, 1, 1))]]
    nodes = [helper.make_node("Conv", ["x", "pw1"], ["a"]),
             helper.make_node("Conv", ["a", "dw", "dwb"], ["b"], group=width, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Conv", ["c", "pw2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def test_depthwise_convolutions_match_whatever_their_width(tmp_path):
    src = _save(_depthwise(8, 0), tmp_path / "s.onnx")
    tgt = _save(_depthwise(12, 1), tmp_path / "t.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx")
    dw = [s for s in r.plan.slots if s.initializer in ("dw", "dwb")]
    assert all(s.status == "written" for s in dw), [s.reason for s in dw]


def _residual(with_norm: bool) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Add(x) [-> LayerNormalization] -> y: a block's last projection whose
    stream is the graph output, and with_norm=False: the same without a residual."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "g", "b"], ["y"], axis=-1)]
    if not with_norm:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"])]
        inits = inits[:1]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("residual,kind", [(True, FEATURE), (False, INDEX)], ids=["block-end", "head"])
def test_an_output_layer_is_one_with_nothing_between_it_and_the_output(residual, kind):
    w = next(s for s in analyze_slots(_residual(residual)).slots if s.initializer == "w1")
    assert w.layout.kinds[0] == kind


def test_blocks_whose_bias_layouts_differ_are_not_stacked(samples, tmp_path):
    """Fuzz finding: one integer attribute changed in a ViT makes a bias's layout differ
    between the blocks of a stage. Biases are not part of a block's signature, so
    the blocks still form a stage; the biases that differ must be left, not stacked along
    depth (that was an internal error: 'could not broadcast (2,32) into (3,32)')."""
    from front_onnx.cli import main

    src = onnx.load(str(samples.get("vit", "base", "legacy", source=True)))
    nodes = [n for n in src.graph.node if n.attribute]
    nodes[271 % len(nodes)].attribute[0].i = 1
    bad = _save(src, tmp_path / "s.onnx")
    tgt = samples.get("vit", "narrow", "dynamo")
    rc = main(["transfer", bad, str(tgt), "-o", str(tmp_path / "o.onnx"), "--no-validate", "-q"])
    assert rc in (0, 3)


def test_a_plain_conv_of_one_input_channel_has_a_feature_axis():
    """A squeeze-excite expansion of a narrow model has one input channel: a feature axis of
    width 1, as in a wider model (else the unit's signature depends on the width)."""
    m = _depthwise(8, 0)
    m.graph.initializer.append(numpy_helper.from_array(np.ones((8, 1, 1, 1), np.float32), "se"))
    m.graph.node.append(helper.make_node("Conv", ["y", "se"], ["z"]))  # not wired to an output: analysis only
    gs = analyze_slots(m, lambda n: numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == n)))
    kinds = {s.initializer: s.layout.kinds for s in gs.slots if s.layout is not None}
    assert kinds["se"][:2] == (FEATURE, FEATURE)
    assert kinds["dw"][:2] == (FEATURE, INDEX)  # a depthwise conv's one channel per group indexes nothing


def _cnn(stages: list[tuple[int, int]], seed: int, layer_scale: bool = False) -> onnx.ModelProto:
    """A stem, then per (channels, blocks) stage: a strided first block with no residual
    (pointwise -> depthwise 3x3 stride 2 -> pointwise) and its repeats with stride 1 and a
    residual Add, as an inverted-residual CNN; ``layer_scale`` multiplies each block's
    output by a per-channel tensor (ConvNeXt's gamma, a parameter to one exporter only)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, shape: tuple, **attrs) -> str:
        name = f"w{len(inits)}"
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name))
        nodes.append(helper.make_node("Conv", [x, name], [name + "_y"], **attrs))
        return name + "_y"

    x, c_prev, size = conv("x", (stages[0][0], 3, 3, 3), pads=[1, 1, 1, 1]), stages[0][0], 16
    for c, n in stages:
        for b in range(n):
            stride = 2 if b == 0 else 1
            h = conv(x, (2 * c, c_prev, 1, 1))
            h = conv(h, (2 * c, 1, 3, 3), group=2 * c, pads=[1, 1, 1, 1], strides=[stride, stride])
            h = conv(h, (c, 2 * c, 1, 1))
            if layer_scale:
                name = f"gamma{len(inits)}"
                inits.append(numpy_helper.from_array(rng.standard_normal((1, c, 1, 1)).astype(np.float32), name))
                nodes.append(helper.make_node("Mul", [h, name], [name + "_y"]))
                h = name + "_y"
            if b:
                nodes.append(helper.make_node("Add", [h, x], [h + "_res"]))
                h = h + "_res"
            x, c_prev, size = h, c, size // stride
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c_prev, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def test_a_stage_grown_from_its_first_block_draws_on_that_block(tmp_path):
    """EfficientNet's compound scaling: a stage of one (strided) block becomes a stage of two.
    The new block, which differs from the first by its strides, draws on the source's first
    block of that stage, unit by unit; the other stages keep their own counterparts."""
    src = _save(_cnn([(8, 1), (12, 1), (16, 2)], 0), tmp_path / "s.onnx")
    tgt = _save(_cnn([(10, 2), (14, 2), (20, 2)], 1), tmp_path / "t.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", keep=1.0)
    assert r.plan.summary()["written_fraction"] == 1.0
    assert front_onnx.plan(src, tgt).summary() == r.plan.summary()
    fed = {s.initializer: r.plan.sources[s.template] for s in r.plan.written}
    src_of = {s.template: s.initializer for s in front_onnx.plan(src, src).written}  # source template -> weight
    # target weights w1..w3: stage 1's first block, w4..w6: its second; source w1..w3: stage 1's one block
    assert [src_of[fed[f"w{k}"]] for k in (1, 2, 3, 4, 5, 6)] == ["w1", "w2", "w3", "w1", "w2", "w3"]
    # stage 2's first block (target w7..w9) from the source's stage 2 (w4..w6), not stage 1
    assert [src_of[fed[f"w{k}"]] for k in (7, 8, 9)] == ["w4", "w5", "w6"]


def test_identity_of_a_cnn_with_irregular_first_blocks_is_exact(tmp_path):
    src = _save(_cnn([(8, 1), (12, 3)], 0), tmp_path / "s.onnx")
    tgt = _save(_cnn([(8, 1), (12, 3)], 1), tmp_path / "t.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", keep=1.0)
    out, ref = onnx.load(tmp_path / "o.onnx"), onnx.load(src)
    got = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    for i in ref.graph.initializer:
        np.testing.assert_allclose(got[i.name], numpy_helper.to_array(i), rtol=1e-5, atol=1e-6)
    assert all(r.plan.sources[t] == t for t in r.plan.sources)


def test_blocks_that_differ_by_one_layer_still_match(tmp_path):
    """One side's blocks have a layer the other's lack (ConvNeXt's layer scale is a parameter
    to the dynamo exporter and a constant to the legacy one): the stages still meet, layer by
    layer, instead of sharing nothing."""
    for a, b in ((True, False), (False, True)):
        src = _save(_cnn([(8, 1), (12, 3)], 0, layer_scale=a), tmp_path / "s.onnx")
        tgt = _save(_cnn([(8, 1), (12, 3)], 1, layer_scale=b), tmp_path / "t.onnx")
        r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", keep=1.0)
        assert any(s.template.startswith("S") for s in r.plan.written)
        left = {s.initializer for s in r.plan.left}
        assert left == ({i.name for i in onnx.load(tgt).graph.initializer if i.name.startswith("gamma")})
        assert all("aligns" in s.reason for s in r.plan.left)
