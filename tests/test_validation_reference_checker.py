"""A check the original target fails too (onnx.checker on an onnxruntime op in the default
domain, as every onnxruntime-genai model has) is reported, not held against the output."""
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


def test_a_checker_failure_of_the_output_alone_still_fails(tmp_path):
    """Without a reference that fails it too, the complaint is held against the model."""
    onnx.save(_model(0), tmp_path / "m.onnx")
    rep = front_onnx.validate(tmp_path / "m.onnx")
    checker = next(c for c in rep.checks if c.name == "checker")
    assert checker.status == "fail" and not rep.ok
