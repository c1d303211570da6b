"""Evidence from the pair (front_onnx.analysis.pairing): a tensor nothing in the graph shows
to be a parameter is taken for one when it differs between the source and a target of the
same structure; one equal in both (a constant of the architecture) is not."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx

ort = pytest.importorskip("onnxruntime")


def _model(token: np.ndarray, mask: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """y = softmax(x + token + mask) @ W, with token and mask named like a scrambler names
    (no module path, no exporter mark)."""
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "nfd7dee6ffa"], ["a"]),
         helper.make_node("Add", ["a", "ne098a16799"], ["b"]),
         helper.make_node("Softmax", ["b"], ["c"], axis=-1),
         helper.make_node("MatMul", ["c", "na271939112"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(token, "nfd7dee6ffa"), numpy_helper.from_array(mask, "ne098a16799"),
         numpy_helper.from_array(w, "na271939112")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _pair(tmp_path, same_token: bool):
    r = np.random.default_rng(0)
    mask = np.where(np.tril(np.ones((4, 6))) > 0, 0.0, -1e9).astype(np.float32)[None]
    tok_s = r.normal(size=(1, 4, 6)).astype(np.float32)
    tok_t = tok_s.copy() if same_token else r.normal(size=(1, 4, 6)).astype(np.float32)
    onnx.save(_model(tok_s, mask, r.normal(size=(6, 3)).astype(np.float32)), tmp_path / "s.onnx")
    onnx.save(_model(tok_t, mask, r.normal(size=(6, 3)).astype(np.float32)), tmp_path / "t.onnx")
    return tok_s, tok_t, mask


def test_a_tensor_that_differs_is_transferred_and_an_equal_mask_kept(tmp_path):
    tok_s, _, mask = _pair(tmp_path, same_token=False)
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0)
    token = next(s for s in res.plan.slots if s.initializer == "nfd7dee6ffa")
    assert token.status == "written" and "differs between the source and the target" in " ".join(token.evidence)
    out = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "o.onnx").graph.initializer}
    np.testing.assert_allclose(out["nfd7dee6ffa"], tok_s, rtol=1e-5, atol=1e-6)
    assert out["ne098a16799"].tobytes() == mask.tobytes()  # equal in both models: a constant
    x = np.random.default_rng(1).normal(size=(2, 4, 6)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(tmp_path / "o.onnx"), run(tmp_path / "s.onnx"), rtol=1e-5, atol=1e-6)


def test_without_the_pair_nothing_unproven_is_written(tmp_path):
    """``init`` from a learngene has no second model: the unproven token is left, with the reason."""
    _pair(tmp_path, same_token=False)
    gene = front_onnx.extract(tmp_path / "s.onnx", keep=1.0)
    res = front_onnx.initialize(tmp_path / "t.onnx", gene, tmp_path / "o.onnx")
    token = next(s for s in res.plan.slots if s.initializer == "nfd7dee6ffa")
    assert token.status == "left" and "not shown to be a parameter" in token.reason
