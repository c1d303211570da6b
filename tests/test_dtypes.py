"""Targets in float16 and bfloat16 keep their dtypes; values follow the float32 result."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest

import front_onnx
from front_onnx.onnxio import load_model
from tests.conftest import run_onnx
from tests.graphs import mlp_stack


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.onnx"
    onnx.save(mlp_stack(16, 4, seed=0), path)
    return path


@pytest.mark.parametrize("dtype,cast", [("float16", False), ("float16", True), ("bfloat16", True), ("float64", True)])
def test_low_precision_targets(source, tmp_path, dtype, cast):
    ref_t, low_t = tmp_path / "t32.onnx", tmp_path / "tlow.onnx"
    onnx.save(mlp_stack(8, 2, seed=1), ref_t)
    onnx.save(mlp_stack(8, 2, seed=1, dtype=dtype, cast_weights=cast), low_t)
    ref_o, low_o = tmp_path / "o32.onnx", tmp_path / "olow.onnx"
    r32 = front_onnx.transfer(source, ref_t, ref_o)
    rlow = front_onnx.transfer(source, low_t, low_o)
    assert rlow.plan.summary()["written_fraction"] == r32.plan.summary()["written_fraction"] == 1.0
    onnx.checker.check_model(str(low_o), full_check=True)
    a, b = load_model(ref_o), load_model(low_o)
    want = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float64": np.float64}[dtype]
    tol = {"float16": 1e-3, "bfloat16": 8e-3, "float64": 1e-6}[dtype]
    for name in a.initializer_names():
        lo = b.array(name)
        assert lo.dtype == want, (name, lo.dtype)
        hi = np.asarray(a.array(name), dtype=np.float64)
        np.testing.assert_allclose(np.asarray(lo, dtype=np.float64), hi, rtol=tol, atol=tol * np.abs(hi).max())
    x = np.random.default_rng(0).normal(size=(3, 8))
    y32 = run_onnx(ref_o, {"x": x.astype(np.float32)})[0]
    ylow = run_onnx(low_o, {"x": x.astype(np.float16 if not cast else np.float32)})[0]
    assert np.all(np.isfinite(ylow))
    np.testing.assert_allclose(ylow.astype(np.float64), y32, rtol=0, atol=30 * tol * np.abs(y32).max())
