"""Layouts of deployment graphs (tests/corpus/deploy) and honest accounting of what is left.

- The onnxruntime-genai builder packs q, k and v into one projection feeding
  ``GroupQueryAttention`` with parts of different widths (4 query heads, 2 key/value heads of
  16 in the source; 2 and 1 in the shrink target). A transfer that reads the parts apart and
  keeps heads whole fills a target row of the k part (head h, dim i) from source k rows of
  dim i, never from q or v rows; the same for q and v. Measured by correlation, in float
  and from the int4 model (dequantized).
- A parameter read by an op the transfer does not support is counted in the totals and left
  with a reason that says so; a transfer that cannot write every parameter does not report
  100%.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx
from front_onnx.analysis import analyze
from front_onnx.numeric.spectral import resample
from front_onnx.onnxio import load_model
from tests.corpus.deploy_scoreboard import DeployCorpus

pytest.importorskip("onnxruntime")

CORPUS = DeployCorpus()
HEAD = 16


def _packed_rows(path, layer: str) -> np.ndarray:
    """The packed q|k|v weight of a layer as rows of the out axis [(h + 2 kv) * 16, in],
    dequantized when the model is int4."""
    m = load_model(path)
    gs, _ = analyze(m)
    parts = [s for s in gs.slots if s.role == "linear.weight" and s.view is not None
             and layer in s.initializer and "qkv" in s.initializer]
    assert [s.view.ops[0].split()[0] for s in parts] == ["q", "k", "v"], [s.view.ops for s in parts]
    from front_onnx.analysis.slots import slot_array

    rows = [slot_array(m.array, s).astype(np.float64).T for s in parts]  # [in, out part] -> [out part, in]
    return np.concatenate(rows, axis=0)


@pytest.mark.parametrize("family", ["genai_llama_fp32", "genai_llama_int4"])
def test_packed_qkv_parts_and_heads_are_kept_apart(family, tmp_path):
    src_e, tgt_e = CORPUS.model(family, "source"), CORPUS.model(family, "shrink")
    out = tmp_path / "out.onnx"
    front_onnx.transfer(CORPUS.path(src_e), CORPUS.path(tgt_e), out, keep=1.0, validate=False, method="front")
    src = _packed_rows(CORPUS.path(src_e), "layers.0.")
    got = _packed_rows(out, "layers.0.")
    assert src.shape[0] == (4 + 2 * 2) * HEAD and got.shape[0] == (2 + 2 * 1) * HEAD
    src_in = resample(src, (src.shape[0], got.shape[1]), axes=[1], convention="ortho")

    def z(a):
        return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    corr = np.abs(z(got) @ z(src_in).T) / got.shape[1]
    best = corr.argmax(axis=1)
    # the output projection reads the attention op's output: its in axis is split by the query heads
    gs, _ = analyze(load_model(out))
    o_proj = [x for x in gs.slots if x.role == "linear.weight" and "o_proj" in x.initializer]
    assert o_proj and all(x.layout.heads == (0, 2) for x in o_proj), [x.layout.heads for x in o_proj]
    src_parts = {"q": range(0, 64), "k": range(64, 96), "v": range(96, 128)}
    tgt_parts = {"q": range(0, 32), "k": range(32, 48), "v": range(48, 64)}
    for part, rows in tgt_parts.items():
        for r in rows:
            b = int(best[r])
            assert b in src_parts[part], f"target {part} row {r} draws on source row {b}"
            assert (b - src_parts[part].start) % HEAD == (r - rows.start) % HEAD, \
                f"target {part} row {r} (dim {(r - rows.start) % HEAD}) draws on source row {b}"


def _model_with(op_nodes, inits, seed: int) -> onnx.ModelProto:
    g = helper.make_graph(op_nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _pair(seed: int) -> onnx.ModelProto:
    """A MatMul the transfer supports, then an Einsum with a weight (not supported) and an
    int8 weight behind DequantizeLinear (a form the transfer does not read)."""
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(size=(8, 8)).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(r.normal(size=(8, 8)).astype(np.float32), "mix.weight"),
             numpy_helper.from_array(r.integers(-100, 100, size=(8, 8)).astype(np.int8), "q.weight"),
             numpy_helper.from_array(np.array(0.01, np.float32), "q.scale")]
    nodes = [helper.make_node("MatMul", ["x", "fc.weight"], ["h"]),
             helper.make_node("Einsum", ["h", "mix.weight"], ["e"], equation="bi,ij->bj"),
             helper.make_node("DequantizeLinear", ["q.weight", "q.scale"], ["w"]),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    return _model_with(nodes, inits, seed)


def test_parameters_behind_unsupported_ops_are_counted_and_left(tmp_path):
    onnx.save(_pair(0), tmp_path / "s.onnx")
    onnx.save(_pair(1), tmp_path / "t.onnx")
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0,
                              validate=False)
    sm = res.plan.summary()
    assert sm["weight_elements"] == 3 * 64                 # fc, mix and the int8 codes
    assert sm["written_elements"] == 64 and sm["written_fraction"] == pytest.approx(1 / 3)
    reasons = {s.initializer: s.reason for s in res.plan.left}
    assert "Einsum (input 1), an op front-onnx does not transfer" in reasons["mix.weight"]
    assert "quantized parameter read by DequantizeLinear" in reasons["q.weight"]
    lines = "\n".join(res.detail_lines())
    assert "an op front-onnx does not transfer" in lines and "DequantizeLinear" in lines
    # left means untouched
    t, o = onnx.load(str(tmp_path / "t.onnx")), onnx.load(str(tmp_path / "o.onnx"))
    ti = {x.name: numpy_helper.to_array(x) for x in t.graph.initializer}
    oi = {x.name: numpy_helper.to_array(x) for x in o.graph.initializer}
    assert np.array_equal(ti["mix.weight"], oi["mix.weight"]) and np.array_equal(ti["q.weight"], oi["q.weight"])
    assert not np.array_equal(ti["fc.weight"], oi["fc.weight"])


def test_weights_of_genai_models_are_float_in_the_modules_layout():
    """``front_onnx.weights`` on the builder's exports: int4 weights come out dequantized
    (float, [out, in] like torch's Linear, not the builder's [in, out] MatMul layout nor the
    packed codes), the same names as the fp32 export of the same checkpoint, within the
    quantization error; the rotary caches are constants and never named."""
    nw = front_onnx.weights(CORPUS.path(CORPUS.model("genai_llama_int4", "source")))
    nf = front_onnx.weights(CORPUS.path(CORPUS.model("genai_llama_fp32", "source")))
    assert "cos_cache" not in nw.tensors and "cos_cache" not in nf.tensors
    down = "model.layers.0.mlp.down_proj.weight"          # Linear(128 -> 64): torch stores [64, 128]
    assert nf.tensors[down].shape == (64, 128) and nw.tensors[down].shape == (64, 128)
    assert nw.tensors[down].dtype == np.float32
    for name, a in nf.tensors.items():
        if name in nw.tensors and a.ndim == 2 and "embed" not in name:
            b = nw.tensors[name]
            assert b.shape == a.shape, name
            assert np.abs(b - a).max() <= 0.15 * np.abs(a).max(), name   # 4-bit blocks: within a step
