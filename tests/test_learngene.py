"""The learngene file: round trip, metadata, and refusal of bad files."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import front_onnx
from front_onnx.errors import LearngeneError
from front_onnx.method.learngene import FORMAT_VERSION, Learngene
from tests.graphs import mlp_stack


@pytest.fixture
def gene(tmp_path):
    src = tmp_path / "src.onnx"
    onnx.save(mlp_stack(16, 4, seed=0), src)
    return front_onnx.extract(src, keep=0.5, convention="paper")


def _header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


def test_round_trip(gene, tmp_path):
    path = gene.save(tmp_path / "g.safetensors")
    back = Learngene.load(path)
    assert back.keep == 0.5 and back.convention == "paper" and back.source_sha256 == gene.source_sha256
    assert sorted(back.templates) == sorted(gene.templates)
    for k, t in gene.templates.items():
        b = back.templates[k]
        assert (b.role, b.kinds, b.shape, b.depth, b.layout) == (t.role, t.kinds, t.shape, t.depth, t.layout)
        np.testing.assert_array_equal(b.coefficients, t.coefficients)
        np.testing.assert_array_equal(b.means, t.means)
        np.testing.assert_array_equal(b.stds, t.stds)
    # keep 0.5 on the [4, 32, 16] fc1 stack keeps [2, 16, 8]
    fc1 = [t for t in gene.templates.values() if t.role == "linear.weight" and t.shape == (32, 16)]
    assert len(fc1) == 1 and fc1[0].depth == 4 and fc1[0].coefficients.shape == (2, 16, 8)


def test_metadata_fields(gene, tmp_path):
    path = gene.save(tmp_path / "g.safetensors")
    _, _, header = _header(path)
    meta = json.loads(header["__metadata__"]["front_onnx"])
    assert meta["format_version"] == FORMAT_VERSION and meta["tool_version"] == front_onnx.__version__
    assert len(meta["source_sha256"]) == 64 and meta["keep"] == 0.5 and meta["convention"] == "paper"
    t = meta["templates"][0]
    assert {"key", "role", "layout", "kinds", "shape", "depth", "kept", "dtype"} <= set(t)


def test_other_format_version_refused(gene, tmp_path):
    path = gene.save(tmp_path / "g.safetensors")
    raw, n, header = _header(path)
    meta = json.loads(header["__metadata__"]["front_onnx"])
    meta["format_version"] = 99
    header["__metadata__"]["front_onnx"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    bad = tmp_path / "v99.safetensors"
    bad.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    with pytest.raises(LearngeneError, match="version 99"):
        Learngene.load(bad)


@pytest.mark.parametrize("cut", [0, 7, 100, -5])
def test_truncated_file_refused(gene, tmp_path, cut):
    raw = gene.save(tmp_path / "g.safetensors").read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(LearngeneError, match=str(bad)):
        Learngene.load(bad)


def test_plain_safetensors_is_not_a_learngene(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "w.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, p)
    with pytest.raises(LearngeneError, match="not a front-onnx learngene"):
        Learngene.load(p)
