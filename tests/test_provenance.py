"""Parameters and constants are told apart before any role is given: only parameters are
rewritten; constants (masks, rotary tables, folded computations) stay byte-identical and are
reported as such with the evidence."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx
from front_onnx.analysis.provenance import FOLDED_KEY, KIND_KEY, Marks, classify, reads_as_words
from front_onnx.analysis.slots import analyze_slots
from front_onnx.cli import main


def _meta(target, **kv):
    for k, v in kv.items():
        e = target.metadata_props.add()
        e.key, e.value = k, v


def _graph(width: int, seed: int, mask: np.ndarray | None = None, marks: bool = False,
           add_name: str = "onnx::Add_7", weight_name: str = "onnx::MatMul_3") -> onnx.ModelProto:
    """x[1,T,w] -> MatMul(W[w,w]) -> Add(A[1,T,w] or a mask) -> y: the shape of a projection
    followed by a folded table, the way exporters leave them."""
    rng = np.random.default_rng(seed)
    T = 4
    w = rng.standard_normal((width, width)).astype(np.float32)
    a = mask if mask is not None else rng.standard_normal((1, T, width)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "fc.weight" if marks else weight_name),
             numpy_helper.from_array(a, add_name)]
    nodes = [helper.make_node("MatMul", ["x", inits[0].name], ["h"]),
             helper.make_node("Add", ["h", add_name], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, width])], inits)
    if marks:
        vi = helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [width, width])
        _meta(vi, **{KIND_KEY: "PARAMETER"})
        g.value_info.append(vi)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def _classify(m: onnx.ModelProto, name: str, role: str):
    from front_onnx.analysis.slots import is_generated_name

    arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return classify(name, role, is_generated_name(name), Marks(m.graph), arrays.__getitem__)


def test_mask_like_values_are_constants():
    mask = np.zeros((1, 4, 8), np.float32)
    mask[..., 5:] = -np.inf
    p = _classify(_graph(8, 0, mask=mask), "onnx::Add_7", "parameter")
    assert not p.parameter and "mask-like" in p.evidence
    big = np.full((1, 4, 8), np.finfo(np.float32).min, np.float32)
    assert not _classify(_graph(8, 0, mask=big), "onnx::Add_7", "parameter").parameter


def test_generated_name_without_marks_is_not_shown_to_be_a_parameter():
    m = _graph(8, 0, add_name="val_7")
    assert not _classify(m, "val_7", "parameter").parameter
    assert not _classify(_graph(8, 0, add_name="const_7"), "const_7", "scale").parameter
    assert _classify(_graph(8, 0, add_name="pos_embed"), "pos_embed", "parameter").parameter
    # a layer's weight is a parameter whatever its name
    assert _classify(m, "onnx::MatMul_3", "linear.weight").parameter


def test_legacy_torch_fold_is_a_parameter_unless_mask_like():
    """``onnx::<Op>_<N>``: the legacy torch exporter's fold of the module's state (constants
    stay Constant nodes); a mask among them is still told by its values."""
    p = _classify(_graph(8, 0), "onnx::Add_7", "parameter")
    assert p.parameter and "legacy torch exporter" in p.evidence
    assert _classify(_graph(8, 0, add_name="onnx::Mul_9"), "onnx::Mul_9", "scale").parameter
    mask = np.zeros((1, 4, 8), np.float32)
    mask[..., 5:] = -np.inf
    assert not _classify(_graph(8, 0, mask=mask), "onnx::Add_7", "parameter").parameter
    # a name with '::' from elsewhere is not the legacy exporter's
    assert not _classify(_graph(8, 0, add_name="pkg::table"), "pkg::table", "parameter").parameter


def test_rotary_frequencies_are_constants_by_their_values():
    """optimum's Llama keeps ``inv_freq`` as a legacy-exporter initializer (``onnx::Expand_N``,
    [1, d/2, 1]): a geometric sequence from 1 is computed from the configuration. A tensor of
    trained values, or a near-geometric one, is not taken for it."""
    d = 16
    inv_freq = (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(np.float32).reshape(1, d // 2, 1)
    m = _graph(8, 0)
    arrays = {"onnx::Expand_108": inv_freq}
    from front_onnx.analysis.provenance import classify as cl
    p = cl("onnx::Expand_108", "token", True, Marks(m.graph), arrays.__getitem__)
    assert not p.parameter and "rotary frequencies" in p.evidence
    trained = inv_freq * (1 + 0.01 * np.random.default_rng(0).standard_normal(inv_freq.shape)).astype(np.float32)
    p = cl("onnx::Expand_108", "token", True, Marks(m.graph), {"onnx::Expand_108": trained}.__getitem__)
    assert p.parameter
    ones = np.ones_like(inv_freq)  # ratio 1: not rotary frequencies (a fresh layer scale)
    assert "rotary" not in cl("onnx::Mul_3", "scale", True, Marks(m.graph), {"onnx::Mul_3": ones}.__getitem__).evidence


@pytest.mark.parametrize("name,words", [
    ("pos_embed", True), ("blocks.0.attn.relative_position_bias_table", True), ("conv2d_1", True),
    ("res2a_branch2a", True), ("functional_1/block0_fc1_1/MatMul", True), ("s1b0_c1_bn_scale_12", True),
    ("nfd7dee6ffa", False), ("ne098a16799", False), ("na271939112", False),
])
def test_a_token_name_is_no_evidence_of_a_parameter(name, words):
    """A scrambler's or obfuscator's token (letters and digits alternating) is not a module
    path: an ambiguous tensor so named, with no mark, is left."""
    assert reads_as_words(name) is words
    prov = _classify(_graph(8, 0, add_name=name), name, "parameter")
    assert prov.parameter is words
    if not words:
        assert "a name that is no module path (a token)" in prov.evidence
    # the consuming op still decides for a layer's weight
    assert _classify(_graph(8, 0, add_name=name), "onnx::MatMul_3", "linear.weight").parameter


@pytest.mark.parametrize("folded,role,parameter,says", [
    (["blocks.0.fc.weight"], "linear.weight", True, "layout view of the parameter blocks.0.fc.weight"),
    (["blocks.0.gamma", "view"], "scale", True, "layout view"),
    (["arange", "val_1", "wpe.weight"], "parameter", True, "rows of the parameter wpe.weight"),
    (["_to_copy_1", "arange", "cat", "cos", "model.rotary_emb.inv_freq", "mul"], "scale", False, "computed by"),
    (["add_1", "arange_3", "le", "new_ones"], "parameter", False, "computed by"),
])
def test_folded_from_decides(folded, role, parameter, says):
    m = _graph(8, 0, marks=True)
    _meta(m.graph.initializer[1], **{FOLDED_KEY: repr(folded)})
    p = _classify(m, "onnx::Add_7", role)
    assert p.parameter is parameter and says in p.evidence


def test_unmarked_tensor_in_a_graph_that_marks_parameters_is_a_constant():
    m = _graph(8, 0, marks=True)
    p = _classify(m, "onnx::Add_7", "parameter")
    assert not p.parameter and "marks every parameter" in p.evidence
    assert _classify(m, "fc.weight", "linear.weight").parameter


def test_constant_slots_have_no_role_and_say_why():
    gs = analyze_slots(_graph(8, 0, marks=True))
    add = next(s for s in gs.slots if s.op == "Add")
    assert add.role is None and add.reason.startswith("constant, not a parameter:")
    mm = next(s for s in gs.slots if s.op == "MatMul")
    assert mm.role == "linear.weight" and "marks it a parameter" in mm.provenance


def test_transfer_leaves_a_mask_byte_identical_and_accepts_inf(tmp_path):
    """A source whose folded mask holds -inf is not 'non-finite', and the target's mask is
    left as it was; the projection is written."""
    mask = np.zeros((1, 4, 8), np.float32)
    mask[..., 3:] = -np.inf
    tmask = np.zeros((1, 4, 8), np.float32)
    tmask[..., 6:] = -np.inf
    src, tgt, out = tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx"
    onnx.save(_graph(8, 0, mask=mask), src)
    onnx.save(_graph(8, 1, mask=tmask), tgt)
    r = front_onnx.transfer(src, tgt, out, keep=1.0)
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert np.array_equal(got["onnx::Add_7"], tmask)
    np.testing.assert_allclose(got["onnx::MatMul_3"], numpy_helper.to_array(onnx.load(str(src)).graph.initializer[0]),
                               rtol=1e-6, atol=1e-7)  # keep 1.0: the source's weight, to float32 rounding
    left = [s for s in r.plan.left if s.initializer == "onnx::Add_7"]
    assert left and left[0].reason.startswith("constant, not a parameter: mask-like")
    assert any("constant, not a parameter" in line for line in r.detail_lines())


def test_plan_gives_the_verdict_transfer_gives(tmp_path, capsys):
    """A target with nothing the source can write: transfer refuses, and plan shows its plan
    and exits 3 with the same line."""
    src, tgt = tmp_path / "s.onnx", tmp_path / "t.onnx"
    onnx.save(_graph(8, 0, add_name="val_7", weight_name="val_3"), src)
    m = _graph(8, 1, add_name="val_7", weight_name="val_3")
    m.graph.node[0].op_type = "Mul"  # no projection: only ambiguous tensors with generated names
    onnx.save(m, tgt)
    with pytest.raises(front_onnx.FrontError) as e:
        front_onnx.transfer(src, tgt, tmp_path / "o.onnx")
    p = front_onnx.plan(src, tgt)
    assert p.verdict == str(e.value)
    assert main(["plan", str(src), str(tgt)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"front-onnx: error: {p.verdict}"]

