"""`front-onnx inspect` and `front_onnx.inspect`: structure, layouts and spectral energy."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx
from front_onnx.numeric import spectral
from front_onnx.cli import EXIT_INPUT, EXIT_OK, main
from front_onnx.analysis.inspection import KEEPS, corner_shares
from tests.graphs import IR_VERSION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vit(samples):
    return samples.get("vit", "base", "dynamo")


def _slow_cosines(n: int, m: int) -> np.ndarray:
    """A smooth [n, m] matrix: a few slow cosines (not exactly DCT basis vectors) and an offset."""
    i = np.arange(n)[:, None] / n
    j = np.arange(m)[None, :] / m
    return (1.0 + np.cos(np.pi * 1.3 * i + 0.2) * np.cos(np.pi * 0.8 * j)
            + 0.5 * np.cos(np.pi * 2.1 * i) * np.cos(np.pi * 2.6 * j + 0.4))


def _three_layer(path, w1: np.ndarray, w2: np.ndarray, classes: int = 10) -> None:
    """x -> MatMul w1 -> Relu -> MatMul w2 -> Relu -> MatMul head: w1 and w2 are hidden layers
    (two feature axes each), the head's out axis indexes classes."""
    d0, d1 = w1.shape
    d2 = w2.shape[1]
    head = np.random.default_rng(3).normal(size=(d2, classes))
    inits = [numpy_helper.from_array(a.astype(np.float32), name)
             for name, a in (("w1", w1), ("w2", w2), ("head", head))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "head"], ["y"])]
    graph = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", d0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _by_initializer(rep, name):
    key = next(s.template for s in rep.slots if s.initializer == name)
    return next(t for t in rep.templates if t.key == key)


def test_vit_structure_roles_and_energies(vit):
    rep = front_onnx.inspect(vit)
    stages = [s for s in rep.segments if s.kind == "stage"]
    assert len(stages) == 1 and stages[0].count == 4
    assert len(rep.stages) == 1 and len(next(iter(rep.stages.values()))) == 4
    assert stages[0].stage in rep.stages and stages[0].templates
    roles = {t.role for t in rep.templates}
    assert {"linear.weight", "norm.scale"} <= roles
    in_stage = [t for t in rep.templates if t.stage]
    assert in_stage and all(t.depth == 4 and len(t.initializers) == 4 for t in in_stage)
    qkv = next(t for t in in_stage if t.module == "attn.qkv" and t.role == "linear.weight")
    # fused q|k|v, each part split by heads (the dimension flow finds the Reshape into heads)
    assert qkv.kinds == ["parts", "feature", "feature", "feature"] and qkv.stored_shape == [64, 192]
    assert qkv.shape[0] == 3 and qkv.shape[1] * qkv.shape[2] == 64 and qkv.shape[1] > 1 and qkv.shape[3] == 64
    assert qkv.axes == [1, 2, 3] and qkv.dtype == "float32" and qkv.layout == "[in, out] by heads"
    measured = 0
    for t in rep.templates:
        per_keep = [t.energy[f"{k:g}"] for k in KEEPS]
        assert all(len(v) == t.depth for v in per_keep)
        for b in range(t.depth):
            vals = [v[b] for v in per_keep]
            if None in vals:
                assert not t.axes  # only tensors with nothing to cut have no share
                continue
            measured += 1
            assert all(0.0 <= v <= 1.0 for v in vals)
            assert vals == sorted(vals), (t.key, vals)
    assert measured > 20
    # every slot is placed in a template or says why it is not a weight
    assert all((s.template is None) == bool(s.reason) for s in rep.slots)
    assert {s.template for s in rep.slots if s.template} == {t.key for t in rep.templates}


def test_corner_shares_equal_out_of_band_energy():
    rng = np.random.default_rng(0)
    cases = [((64, 48), (0, 1)), ((3, 16, 24), (1, 2)), ((8, 4, 3, 3), (0, 1)), ((33,), (0,)), ((5, 7), ())]
    for shape, axes in cases:
        x = rng.normal(size=shape) + np.linspace(0.0, 4.0, shape[-1])
        for arr in (x, x.astype(np.float32), np.swapaxes(np.swapaxes(x, 0, -1).copy(), 0, -1)):
            shares, const = corner_shares(arr, axes)
            assert not const
            for keep, share in zip(KEEPS, shares):
                assert share == pytest.approx(1.0 - spectral.out_of_band_energy(arr, axes, keep), abs=1e-12)
    before = x.copy()
    corner_shares(x, (0,))
    assert np.array_equal(x, before)  # the input is not overwritten unless asked
    assert corner_shares(np.full((6, 5), 0.3), (0, 1)) == ([1.0, 1.0, 1.0], True)


def test_low_frequencies_stay_in_the_corner_and_noise_does_not(tmp_path):
    path = tmp_path / "three.onnx"
    noise = np.random.default_rng(1).normal(size=(48, 64))
    _three_layer(path, _slow_cosines(64, 48), noise)
    rep = front_onnx.inspect(path)
    smooth, white = _by_initializer(rep, "w1"), _by_initializer(rep, "w2")
    assert smooth.axes == [0, 1] and white.axes == [0, 1] and smooth.role == "linear.weight"
    assert smooth.energy["0.25"][0] > 0.99
    for k in KEEPS:
        assert white.energy[f"{k:g}"][0] == pytest.approx(k * k, abs=0.04)
        assert white.mean[f"{k:g}"] == white.energy[f"{k:g}"][0]
    head = _by_initializer(rep, "head")
    assert head.kinds == ["index", "feature"] and head.axes == [1]  # classes are never cut


def test_cli_json_has_per_block_energies(vit, capsys):
    assert main(["inspect", str(vit), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["keeps"] == list(KEEPS)
    assert {"segments", "stages", "templates", "slots"} <= set(data)
    stage_tpls = [t for t in data["templates"] if t["stage"]]
    assert stage_tpls
    for t in stage_tpls:
        assert set(t["energy"]) == {"0.25", "0.5", "0.75"}
        assert all(len(v) == 4 for v in t["energy"].values())
        assert len(t["constant"]) == 4 and set(t["mean"]) == set(t["energy"])
    assert all({"initializer", "role", "layout", "shape", "dtype", "template"} <= set(s) for s in data["slots"])


def test_cli_table_and_plot(vit, tmp_path, capsys):
    png = tmp_path / "fig" / "vit.png"
    png.parent.mkdir()
    assert main(["inspect", str(vit), "--plot", str(png)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "stage0" in out and "4 blocks" in out and "linear.weight" in out and "@0.5" in out
    assert out.rstrip().splitlines()[-1] == f"plot: {png}"
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["vit.png"]  # no temporary file left behind


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    path = tmp_path / "three.onnx"
    _three_layer(path, _slow_cosines(16, 8), np.ones((8, 16)))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["inspect", str(path), "--plot", str(tmp_path / "x.png")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "pip install 'front-onnx[plot]'" in err and not (tmp_path / "x.png").exists()


def test_not_an_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    assert main(["inspect", str(bad)]) == EXIT_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("front-onnx: error:") and "bad.onnx" in lines[0]
    assert captured.out == ""
