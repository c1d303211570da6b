"""The MatMulNBits codec (front_onnx.numeric.quantization) against onnxruntime itself:
its quantizer (``quantize_matmul_{4,8}bits``, what ``MatMulNBitsQuantizer`` and the genai
builder call) and its ``MatMulNBits`` kernel, which is the definition of the layout."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from front_onnx.numeric.quantization import BlockQuant, dequantize, quantize

ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.capi import _pybind_state as C  # noqa: E402

CASES = [(bits, sym, k, n, bs) for bits in (4, 8) for sym in (False, True)
         for k, n, bs in ((64, 48, 32), (80, 16, 32), (128, 24, 16))]


def _ort_quantize(q: BlockQuant, w: np.ndarray):
    packed = np.zeros(q.packed_shape(), np.uint8)
    scales = np.zeros((q.n, q.k_blocks), np.float32)
    zps = np.zeros(q.zero_point_shape(), np.uint8)
    fn = {4: C.quantize_matmul_4bits, 8: C.quantize_matmul_8bits}[q.bits]
    fn(packed, w, scales, zps, q.block_size, q.n, q.k, not q.zero_points)
    return packed, scales, zps


def _ort_matmul(q: BlockQuant, a: np.ndarray, packed, scales, zps) -> np.ndarray:
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "S")]
    names = ["A", "B", "S"]
    if zps is not None:
        inits.append(numpy_helper.from_array(zps.reshape(-1), "Z"))
        names.append("Z")
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", K=q.k, N=q.n, bits=q.bits,
                            block_size=q.block_size)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(a.shape))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [a.shape[0], q.n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=9)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


@pytest.mark.parametrize("bits,sym,k,n,bs", CASES)
def test_dequantize_is_what_onnxruntime_computes(bits, sym, k, n, bs):
    rng = np.random.default_rng(bits * 1000 + k)
    q = BlockQuant(k, n, bits, bs, zero_points=not sym)
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed, scales, zps = _ort_quantize(q, w)
    a = rng.standard_normal((3, k)).astype(np.float32)
    y = _ort_matmul(q, a, packed, scales, None if sym else zps)
    ours = a @ dequantize(q, packed, scales, None if sym else zps)
    np.testing.assert_allclose(ours, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,sym,k,n,bs", CASES)
def test_quantize_matches_onnxruntimes_quantizer(bits, sym, k, n, bs):
    """The same codes as onnxruntime's quantizer wherever K fills whole blocks (padding bits
    of a last partial block carry nothing and may differ), the same scales everywhere."""
    rng = np.random.default_rng(bits * 7 + n)
    q = BlockQuant(k, n, bits, bs, zero_points=not sym)
    w = rng.standard_normal((k, n)).astype(np.float32)
    p_ref, s_ref, z_ref = _ort_quantize(q, w)
    packed, scales, zps = quantize(q, w)
    np.testing.assert_array_equal(scales, s_ref)
    full = (k // bs) * q.blob_size
    same = (packed.reshape(n, -1)[:, :full] == p_ref.reshape(n, -1)[:, :full]).mean()
    assert same >= 0.999, same                # a rounding tie may fall the other way
    np.testing.assert_allclose(dequantize(q, packed, scales, zps), dequantize(q, p_ref, s_ref, None if sym else z_ref),
                               atol=float(np.abs(s_ref).max()) + 1e-7)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), sym=st.booleans(), k=st.integers(1, 70), n=st.integers(1, 9),
       bs=st.sampled_from([16, 32]), seed=st.integers(0, 2**16))
def test_round_trip_error_is_half_a_step(bits, sym, k, n, bs, seed):
    """Every dequantized entry lies within half a quantization step of the weight (symmetric:
    the positive end has one code less, so up to one step there)."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    q = BlockQuant(k, n, bits, bs, zero_points=not sym)
    packed, scales, zps = quantize(q, w)
    assert packed.shape == q.packed_shape()
    back = dequantize(q, packed, scales, zps)
    step = np.repeat(np.abs(scales.T), bs, axis=0)[:k]
    bound = (1.0 if sym else 0.5) * step + 1e-6
    assert np.all(np.abs(back - w) <= bound)
