"""A Keras CNN with parallel side branches (HED-like), exported with tf2onnx: every kernel is
written, each from its own branch of the source.

The models are committed in tests/corpus/keras (built by tests/corpus/keras_side_branches.py,
which needs TensorFlow; these tests do not). The source is trained-like (every bias non-zero)
and each side branch's kernel is planted at a distinct constant; the targets are fresh, so
tf2onnx dropped their zero biases, and it emitted the side branches in another order in
the node list than in the source. Loose layers must be matched by their place in the
dataflow, not by their position in the node list.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import front_onnx
from tests.corpus.scoreboard import RESTORABLE, rel_error

ort = pytest.importorskip("onnxruntime")

KERAS = Path(__file__).parent / "corpus" / "keras"
MANIFEST = json.loads((KERAS / "manifest.json").read_text())
SIDES = ("side0", "side1", "side2", "fuse")


def _path(role: str) -> Path:
    return KERAS / MANIFEST["models"][role]["path"]


def _run(path: Path) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    return sess.run(None, {inp.name: x})


def _convs(model: onnx.ModelProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Layer name (from the kernel's name, which keeps the Keras layer) -> (node index, Conv)."""
    out = {}
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Conv":
            layer = n.input[1].split("/")[1].rsplit("_", 1)[0]  # hed_1/side0_1/convolution/... -> side0
            out[layer] = (i, n)
    return out


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_corpus_has_the_reordered_side_branches():
    """The case the files stand for: the same Keras code, side branches in another node order."""
    src, half = MANIFEST["models"]["source"]["side_order"], MANIFEST["models"]["half"]["side_order"]
    assert sorted(src) == sorted(half) == sorted(SIDES) and src != half
    assert sum(f.stat().st_size for f in KERAS.glob("*.onnx")) < 1_000_000


@pytest.fixture(scope="module")
def half_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras") / "half.onnx"
    return front_onnx.transfer(_path("source"), _path("half"), out, keep=1.0), out


def test_every_kernel_written_from_its_own_branch(half_result):
    result, out = half_result
    tgt, got, src = onnx.load(str(_path("half"))), onnx.load(str(out)), onnx.load(str(_path("source")))
    t_convs, o_convs, s_convs = _convs(tgt), _convs(got), _convs(src)
    assert set(t_convs) == set(s_convs) and len(t_convs) == 11
    t_inits, o_inits, s_inits = _inits(tgt), _inits(got), _inits(src)
    for layer, (i, node) in t_convs.items():
        kernel = o_inits[o_convs[layer][1].input[1]]
        assert kernel.shape == t_inits[node.input[1]].shape
        assert not np.array_equal(kernel, t_inits[node.input[1]]), f"{layer}: kernel not written"
        # each kernel is made of its own source layer's entries (selected: the default shrinks by
        # selection), not another layer's: every entry is one of the source kernel's
        want = s_inits[s_convs[layer][1].input[1]].reshape(-1)
        gap = np.abs(kernel.reshape(-1, 1) - want.reshape(1, -1)).min(axis=1)
        assert gap.max() <= 1e-5 * max(1.0, float(np.abs(want).max())), layer
    for layer, planted in MANIFEST["planted"].items():  # the side branches tell apart by their constant
        kernel = o_inits[o_convs[layer][1].input[1]]
        assert abs(kernel.mean() - planted) < 0.05, f"{layer} got another branch's kernel ({kernel.mean():.3f})"
    # the plan says so: nothing padded inside a shrink, every weight element written
    for s in result.plan.written:
        assert not any(" pad " in op for op in s.operations), (s.initializer, s.operations)
    assert result.plan.summary()["written_fraction"] == 1.0
    assert result.plan.divergence == []


def test_the_transform_restores_each_kernels_source_mean(tmp_path):
    """``method="front"``: each kernel has its own source layer's mean (restored by the transfer)."""
    out = tmp_path / "half.onnx"
    front_onnx.transfer(_path("source"), _path("half"), out, keep=1.0, method="front")
    got, src = onnx.load(str(out)), onnx.load(str(_path("source")))
    o_convs, s_convs = _convs(got), _convs(src)
    o_inits, s_inits = _inits(got), _inits(src)
    for layer in s_convs:
        kernel = o_inits[o_convs[layer][1].input[1]]
        want = s_inits[s_convs[layer][1].input[1]]
        assert kernel.mean() == pytest.approx(float(want.mean()), abs=1e-4), layer
    for layer, planted in MANIFEST["planted"].items():
        assert abs(o_inits[o_convs[layer][1].input[1]].mean() - planted) < 0.05, layer


def test_half_output_is_valid(half_result):
    result, out = half_result
    outs = _run(out)
    assert len(outs) == 4 and all(np.isfinite(o).all() for o in outs)
    onnx.checker.check_model(str(out), full_check=True)
    # nodes unchanged except restored optional bias inputs
    tgt, got = onnx.load(str(_path("half"))), onnx.load(str(out))
    assert len(tgt.graph.node) == len(got.graph.node)
    restored = 0
    for a, b in zip(tgt.graph.node, got.graph.node):
        assert (a.op_type, list(a.output), list(a.attribute)) == (b.op_type, list(b.output), list(b.attribute))
        assert list(b.input[:len(a.input)]) == list(a.input) or all(
            x == y or y in {t.name for t in tgt.graph.initializer} for x, y in zip(b.input, a.input))
        if len(b.input) > len(a.input):
            assert (a.op_type, len(a.input)) in RESTORABLE
            restored += 1
    assert restored == 11  # every conv's bias, dropped by tf2onnx as zero, now the source's
    assert front_onnx.plan(_path("source"), _path("half"), keep=1.0).summary()["written_fraction"] == \
        result.plan.summary()["written_fraction"]


def test_identity_reproduces_the_source(tmp_path):
    out = tmp_path / "same.onnx"
    result = front_onnx.transfer(_path("source"), _path("same"), out, keep=1.0)
    assert result.plan.summary()["written_fraction"] == 1.0
    err = rel_error(_run(_path("source")), _run(out))
    assert err <= 1e-5, f"relative error {err:.2e}"
    assert front_onnx.plan(_path("source"), _path("same"), keep=1.0).summary() == result.plan.summary()
