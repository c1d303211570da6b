"""`front-onnx weights`: initialized weights back into the training framework, keyed by its
parameter names (torch models exported with both torch exporters)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

import front_onnx
from front_onnx.cli import EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from front_onnx.analysis.naming import named_weights
from samples.models import build, example_input, perturb
from tests.conftest import file_digests, run_onnx, sample_feeds

EXPORTERS = ("dynamo", "legacy")
LOADABLE = [("vit", e) for e in EXPORTERS] + [("gpt", e) for e in EXPORTERS] + [("resnet", "dynamo")]


def _outputs(model: torch.nn.Module, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(example_input(family, batch=3, seed=5))


@pytest.mark.parametrize("family,exporter", LOADABLE)
def test_identity_transfer_loads_strictly_into_torch(samples, tmp_path, family, exporter):
    """source -> ONNX -> identity transfer into a fresh copy -> weights -> load_state_dict(strict)
    into a third torch model of the same config reproduces the source's outputs."""
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, "base", exporter)
    out = tmp_path / "out.onnx"
    front_onnx.transfer(src, tgt, out, keep=1.0)
    wfile = tmp_path / "w.safetensors"
    nw = front_onnx.weights(out, wfile)
    assert nw.unnamed == []
    model = build(family, "base", seed=7)
    model.load_state_dict(load_file(wfile), strict=True)
    want = _outputs(perturb(build(family, "base", seed=0), seed=0), family)
    got = _outputs(model.eval(), family)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_shared_tensor_written_under_every_parameter(samples):
    """A fresh dynamo export deduplicates all LayerNorm scales into one initializer: each
    LayerNorm still gets its own entry, and the model loads strictly and exactly."""
    path = samples.get("vit", "base", "dynamo")
    nw = named_weights(path)
    norms = [k for k in nw.tensors if k.endswith(("norm1.weight", "norm2.weight")) or k == "norm.weight"]
    assert len(norms) == 2 * 4 + 1
    assert len({nw.sources[k][0] for k in norms}) == 1, "expected one shared initializer behind them"
    model = build("vit", "base", seed=1)
    want = _outputs(model, "vit")
    fresh = build("vit", "base", seed=9)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in nw.tensors.items()}, strict=True)
    torch.testing.assert_close(_outputs(fresh, "vit"), want, rtol=0, atol=0)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_layouts_are_torch_layouts(samples, exporter):
    """Linear weights come back [out, in] whatever the exporter stored."""
    model = build("gpt", "base", seed=1)
    nw = named_weights(samples.get("gpt", "base", exporter))
    state = model.state_dict()
    assert set(nw.tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(nw.tensors[k], v.numpy(), err_msg=k)


def test_resnet_dynamo_batchnorm_as_identity(samples):
    nw = named_weights(samples.get("resnet", "base", "dynamo"))
    assert nw.unnamed == []
    np.testing.assert_array_equal(nw.tensors["layers.0.0.bn1.weight"], 1.0)
    np.testing.assert_array_equal(nw.tensors["layers.0.0.bn1.running_mean"], 0.0)
    np.testing.assert_allclose(nw.tensors["layers.0.0.bn1.running_var"], 1 - 1e-5)
    assert nw.tensors["layers.0.0.bn1.num_batches_tracked"].dtype == np.int64
    assert any("identity BatchNorm" in n for n in nw.notes)


def test_resnet_legacy_reports_folded_batchnorms(samples, capsys, tmp_path):
    """The legacy exporter leaves no BatchNorm name: the folded biases are reported, the
    Conv kernels named, and a strict load fails loudly rather than loading a wrong model."""
    path = samples.get("resnet", "base", "legacy")
    nw = named_weights(path)
    assert len(nw.unnamed) == 15
    assert all("BatchNorm" in why for _, why in nw.unnamed)
    assert "layers.0.0.conv1.weight" in nw.tensors and "fc.weight" in nw.tensors
    with pytest.raises(RuntimeError, match="Missing key"):
        build("resnet").load_state_dict({k: torch.from_numpy(v) for k, v in nw.tensors.items()}, strict=True)
    assert main(["weights", str(path), "-o", str(tmp_path / "w.safetensors"), "-q"]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    assert err.count("unnamed: onnx::Conv_") == 15
    assert main(["weights", str(path), "-o", str(tmp_path / "w.safetensors"), "-q", "--allow-partial"]) == EXIT_OK


def _unnamed_graph(path) -> None:
    """A MatMul weight with a generated name at a node without scope: nothing names it."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "onnx::MatMul_1")
    b = numpy_helper.from_array(np.ones(4, np.float32), "fc.bias")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["h"], name="MatMul_0"),
         helper.make_node("Add", ["h", "fc.bias"], ["y"], name="/fc/Add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, b])
    onnx.save(helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_unnamed_weights_are_reported(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    _unnamed_graph(path)
    nw = named_weights(path)
    assert [u[0] for u in nw.unnamed] == ["onnx::MatMul_1"]
    assert list(nw.tensors) == ["fc.bias"]
    assert main(["weights", str(path), "-o", str(tmp_path / "w.safetensors")]) == EXIT_PARTIAL
    captured = capsys.readouterr()
    assert "unnamed: onnx::MatMul_1:" in captured.err
    assert "1 weights unnamed" in captured.out
    assert (tmp_path / "w.safetensors").is_file(), "an incomplete file is still written"


def test_onnx_names_as_stored(samples, tmp_path):
    path = samples.get("vit", "base", "legacy")
    out = tmp_path / "w.safetensors"
    assert main(["weights", str(path), "-o", str(out), "--names", "onnx", "-q"]) == EXIT_OK
    got = load_numpy(out)
    m = onnx.load(str(path))
    floats = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert set(got) == set(floats)
    for k, v in floats.items():
        np.testing.assert_array_equal(got[k], v)


def test_atomic_write_and_input_untouched(samples, tmp_path, monkeypatch):
    path = samples.get("gpt", "base", "dynamo")
    before = file_digests(path)
    out = tmp_path / "sub" / "w.safetensors"
    calls = []
    real = os.replace

    def spy(a, b):
        calls.append((os.fspath(a), os.fspath(b)))
        return real(a, b)

    monkeypatch.setattr(os, "replace", spy)
    front_onnx.api.weights(path, out)
    # written in a hidden folder next to the output, then renamed into place
    assert len(calls) == 1 and os.path.dirname(os.path.dirname(calls[0][0])) == str(out.parent)
    assert calls[0][1] == str(out)
    assert file_digests(path) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["w.safetensors"]

    # a failure while writing leaves neither a temporary file nor a partial output
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save", boom)
    out2 = tmp_path / "sub" / "w2.safetensors"
    with pytest.raises(OSError, match="disk full"):
        front_onnx.weights(path, out2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["w.safetensors"]


def test_cli_exit_codes(samples, tmp_path, capsys):
    path = samples.get("vit", "base", "dynamo")
    with pytest.raises(SystemExit) as e:
        main(["weights", str(path), "-o", str(tmp_path / "w.safetensors"), "--names", "keras"])
    assert e.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(["weights", str(path)])
    assert e.value.code == EXIT_USAGE
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["weights", str(bad), "-o", str(tmp_path / "w.safetensors")]) == EXIT_INPUT
    assert main(["weights", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "w.safetensors")]) == EXIT_INPUT
    before = file_digests(path)
    assert main(["weights", str(path), "-o", str(path)]) == EXIT_INPUT
    assert main(["weights", str(path), "-o", str(path) + ".data"]) == EXIT_INPUT
    assert file_digests(path) == before
    err = capsys.readouterr().err
    assert "overwrite" in err and "Traceback" not in err


@pytest.mark.parametrize("family,exporter,size", [(f, e, s) for f, e in LOADABLE for s in ("narrow", "deep")])
def test_resized_target_loads_and_matches_onnxruntime(samples, tmp_path, family, exporter, size):
    """What benchmarks do: a front-onnx-initialized target of another size, loaded into torch,
    computes what onnxruntime computes with the initialized ONNX model."""
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, size, exporter)
    out = tmp_path / "out.onnx"
    front_onnx.transfer(src, tgt, out, keep=0.5)
    nw = named_weights(out)
    assert nw.unnamed == []
    model = build(family, size, seed=7)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in nw.tensors.items()}, strict=True)
    feeds = sample_feeds(family, out)
    want = run_onnx(out, feeds)[0]
    got = _outputs(model.eval(), family).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
