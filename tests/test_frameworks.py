"""Graphs in the TF/Keras, JAX and Paddle conventions: a transformer and a CNN family at two
sizes each, transferred both ways, pass the foundation's checks."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

import front_onnx
from tests.conftest import run_onnx
from tests.frameworks import cnn, example_input, transformer

STYLES = ("keras", "jax", "paddle")
BUILD = {"transformer": transformer, "cnn": cnn}
SMALL, LARGE = (8, 2), (16, 3)


def _save(m: onnx.ModelProto, path):
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("family,style", list(itertools.product(BUILD, STYLES)))
def test_transfer_both_ways(tmp_path, family, style):
    build = BUILD[family]
    small = _save(build(style, *SMALL, seed=0), tmp_path / "small.onnx")
    large = _save(build(style, *LARGE, seed=1), tmp_path / "large.onnx")
    x = example_input(family, style)
    for src, tgt in ((small, large), (large, small)):
        out = tmp_path / f"{src.stem}-to-{tgt.stem}.onnx"
        r = front_onnx.transfer(src, tgt, out, validate=True)
        assert r.validation.ok, r.validation.table()
        sm = r.plan.summary()
        assert sm["written_fraction"] >= 0.9, [(s.initializer, s.reason) for s in r.plan.left if s.role]
        assert all(s.reason for s in r.plan.left)
        y = run_onnx(out, {"x": x})[0]
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("family,style", list(itertools.product(BUILD, STYLES)))
def test_identity_on_equal_architectures(tmp_path, family, style):
    build = BUILD[family]
    src = _save(build(style, *LARGE, seed=0), tmp_path / "src.onnx")
    tgt = _save(build(style, *LARGE, seed=1), tmp_path / "tgt.onnx")
    out = tmp_path / "out.onnx"
    r = front_onnx.transfer(src, tgt, out, keep=1.0)
    assert r.plan.summary()["written_fraction"] == 1.0
    x = {"x": example_input(family, style)}
    want, got = run_onnx(src, x)[0], run_onnx(out, x)[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


@pytest.mark.parametrize("style", STYLES)
def test_stages_found_from_topology(style):
    """The transformer's blocks form one stage; the CNN's two stages are told apart by shape."""
    from front_onnx.analysis import analyze
    from front_onnx.onnxio import OnnxModel
    from pathlib import Path

    t = OnnxModel(Path("t.onnx"), transformer(style, 8, 3))
    _, st = analyze(t)
    assert sorted(len(b) for b in st.stages.values()) == [3]
    c = OnnxModel(Path("c.onnx"), cnn(style, 8, 3))
    _, st = analyze(c)
    assert sorted(len(b) for b in st.stages.values()) == [3, 3]


def _constants_and_inputs(m: onnx.ModelProto, as_constants: bool) -> onnx.ModelProto:
    """Old-style graphs: float weights moved into Constant nodes, or listed as graph inputs."""
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    weights = [t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1]
    if as_constants:
        keep = [t for t in g.initializer if t not in weights]
        nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{k}", value=t) for k, t in enumerate(weights)]
        del g.initializer[:]
        g.initializer.extend(keep)
        all_nodes = nodes + list(g.node)
        del g.node[:]
        g.node.extend(all_nodes)
    else:
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    return out


@pytest.mark.parametrize("as_constants", [True, False], ids=["constant-nodes", "initializers-as-inputs"])
def test_old_style_weights(tmp_path, as_constants):
    src = _save(_constants_and_inputs(transformer("keras", *LARGE, seed=0), as_constants), tmp_path / "s.onnx")
    tgt = _save(_constants_and_inputs(transformer("keras", *SMALL, seed=1), as_constants), tmp_path / "t.onnx")
    same = _save(_constants_and_inputs(transformer("keras", *LARGE, seed=1), as_constants), tmp_path / "same.onnx")
    r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", validate=True)
    assert r.validation.ok and r.plan.summary()["written_fraction"] >= 0.9
    front_onnx.transfer(src, same, tmp_path / "id.onnx")
    x = {"x": example_input("transformer", "keras")}
    want, got = run_onnx(src, x)[0], run_onnx(tmp_path / "id.onnx", x)[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5
    out = onnx.load(str(tmp_path / "id.onnx"))
    if as_constants:
        assert sum(n.op_type == "Constant" for n in out.graph.node) > 10
        assert not [t for t in out.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1]
    else:
        assert len(out.graph.input) > 10


@pytest.mark.parametrize("a,b", [("keras", "paddle"), ("paddle", "jax"), ("jax", "keras")])
def test_transformer_across_conventions(tmp_path, a, b):
    """Different decompositions of one family match: LayerNorm op vs ReduceMean/Sqrt/Div,
    Gemm vs MatMul + Add, kernels transposed before use or not."""
    for (sa, sizes_a), (sb, sizes_b) in (((a, LARGE), (b, SMALL)), ((b, SMALL), (a, LARGE))):
        src = _save(transformer(sa, *sizes_a, seed=0), tmp_path / f"{sa}-src.onnx")
        tgt = _save(transformer(sb, *sizes_b, seed=1), tmp_path / f"{sb}-tgt.onnx")
        r = front_onnx.transfer(src, tgt, tmp_path / "o.onnx", validate=True)
        assert r.plan.divergence == [] and r.plan.summary()["written_fraction"] == 1.0
        assert r.validation.ok
