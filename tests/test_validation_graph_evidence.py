"""Validation that reads the graph's evidence: a check the original target fails too
(onnx.checker on an onnxruntime op in the default domain, as every onnxruntime-genai model
has) is reported, not held against the output; a symbolic input length a weight fixes takes
the weight's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx

pytest.importorskip("onnxruntime")


def _model(seed: int) -> onnx.ModelProto:
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(size=(8,)).astype(np.float32), "norm.weight"),
             numpy_helper.from_array(r.normal(size=(8, 8)).astype(np.float32), "fc.weight")]
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "norm.weight"], ["h"], axis=-1, epsilon=1e-6),
             helper.make_node("MatMul", ["h", "fc.weight"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_checker_complaint_the_target_shares_is_a_warning(tmp_path):
    onnx.save(_model(0), tmp_path / "s.onnx")
    onnx.save(_model(1), tmp_path / "t.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(tmp_path / "t.onnx"), full_check=True)  # the target itself fails it
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0, validate=True)
    checker = next(c for c in res.validation.checks if c.name == "checker")
    assert checker.status == "warn" and not checker.hard and "reference fails the check too" in checker.detail
    assert res.validation.ok and (tmp_path / "o.onnx").exists()


def test_an_op_onnx_does_not_know_is_a_warning_when_the_model_runs(tmp_path):
    """onnx.checker rejects an onnxruntime op in the default domain (every onnxruntime-genai
    model has one); the model runs, so ``validate`` passes an untouched export and says why."""
    onnx.save(_model(0), tmp_path / "m.onnx")
    rep = front_onnx.validate(tmp_path / "m.onnx")
    checker = next(c for c in rep.checks if c.name == "checker")
    assert checker.status == "warn" and "onnxruntime runs" in checker.detail and rep.ok


def test_another_checker_failure_of_the_output_alone_still_fails(tmp_path):
    """A complaint that is not about an unknown op, without a reference that fails it too,
    is held against the model even though onnxruntime runs it."""
    m = _model(0)
    m.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 5]))  # h is [2, 8]
    m.graph.node[0].op_type = "LayerNormalization"
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(Exception):
        onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    rep = front_onnx.validate(tmp_path / "m.onnx")
    checker = next(c for c in rep.checks if c.name == "checker")
    assert checker.status == "fail" and not rep.ok


def test_a_symbolic_channel_dimension_takes_the_weights_length(tmp_path):
    """An image input whose channel axis is symbolic (optimum's ViT: ``num_channels``) is
    synthesized with the channels its first Conv's kernel reads, not a default length."""
    r = np.random.default_rng(0)
    w = numpy_helper.from_array(r.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv.weight")
    mean = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "mean")
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", "num_channels", 8, 8])
    g = helper.make_graph([helper.make_node("Sub", ["pixel_values", "mean"], ["c"]),
                           helper.make_node("Conv", ["c", "conv.weight"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])], [w, mean])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    from front_onnx.validation.checks import synthesize_inputs

    assert synthesize_inputs(onnx.load(str(tmp_path / "m.onnx")))["pixel_values"].shape == (1, 3, 8, 8)
    rep = front_onnx.validate(tmp_path / "m.onnx")
    assert rep.ok, rep.table()
