"""Block-wise n-bit weight quantization in onnxruntime's ``MatMulNBits`` layout, with numpy.

A quantized model stores a MatMul weight ``W`` [K, N] (in, out) column by column: each
output column is cut into blocks of ``block_size`` entries along K, and every block has a
scale and a zero point, ``W[k, n] = (q[k, n] - zp[block, n]) * scale[block, n]``. The codes
``q`` are packed little end first (4 bits: entry 2j in the low nibble of byte j, 2j+1 in the
high one) into ``B`` [N, k_blocks, block_size * bits / 8]; scales are [N, k_blocks] (stored
flat or 2-D); zero points, when present, are packed the same way per column
[N, ceil(k_blocks * bits / 8)]; absent ones are 2^(bits-1). (onnxruntime's contrib op
reference, ``MatMulNBits``.)

The transfer works on the dequantized float weight: a quantized source is dequantized
before its spectrum is taken, and a quantized target gets the transferred float weight
quantized with its own bits and block size. Quantization follows onnxruntime's
``MatMulNBitsQuantizer`` rules (asymmetric: the block's range including 0 over the code range;
symmetric: the signed value of largest magnitude maps to code 0), so a requantized weight
dequantizes like one the runtime's own tool made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockQuant:
    """The attributes of a ``MatMulNBits`` node that define its weight's encoding."""

    k: int                 # input features (rows of W)
    n: int                 # output features (columns of W)
    bits: int              # 2, 4 or 8
    block_size: int        # a power of two >= 16
    zero_points: bool      # explicit packed zero points (else 2^(bits-1): symmetric)

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block_size)

    @property
    def blob_size(self) -> int:
        return self.block_size * self.bits // 8

    def packed_shape(self) -> tuple[int, int, int]:
        return (self.n, self.k_blocks, self.blob_size)

    def zero_point_shape(self) -> tuple[int, int]:
        return (self.n, -(-self.k_blocks * self.bits // 8))


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes from bytes along the last axis, low bits first: [..., bytes] -> [..., count]."""
    b = np.asarray(packed, np.uint8)
    per = 8 // bits
    mask = (1 << bits) - 1
    codes = np.stack([(b >> (bits * i)) & mask for i in range(per)], axis=-1)
    return codes.reshape(b.shape[:-1] + (b.shape[-1] * per,))[..., :count]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Bytes from codes along the last axis (padded with zero codes to whole bytes)."""
    per = 8 // bits
    c = np.asarray(codes, np.uint8)
    pad = (-c.shape[-1]) % per
    if pad:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (pad,), np.uint8)], axis=-1)
    c = c.reshape(c.shape[:-1] + (c.shape[-1] // per, per))
    out = np.zeros(c.shape[:-1], np.uint8)
    for i in range(per):
        out |= (c[..., i] << (bits * i)).astype(np.uint8)
    return out


def dequantize(q: BlockQuant, packed: np.ndarray, scales: np.ndarray,
               zero_points: np.ndarray | None = None) -> np.ndarray:
    """W [K, N] in the scales' float type from a ``MatMulNBits`` weight."""
    codes = _unpack(np.asarray(packed).reshape(q.packed_shape()), q.bits, q.block_size)  # [N, kb, bs]
    s = np.asarray(scales).reshape(q.n, q.k_blocks)
    if zero_points is None:
        zp = np.full((q.n, q.k_blocks), 1 << (q.bits - 1), np.float32)
    elif np.asarray(zero_points).dtype == np.uint8:
        zp = _unpack(np.asarray(zero_points).reshape(q.n, -1), q.bits, q.k_blocks).astype(np.float32)
    else:  # zero points given as floats (the scales' type)
        zp = np.asarray(zero_points, np.float32).reshape(q.n, q.k_blocks)
    w = (codes.astype(np.float32) - zp[..., None]) * s.astype(np.float32)[..., None]
    return np.ascontiguousarray(w.reshape(q.n, -1)[:, : q.k].T).astype(s.dtype)


def quantize(q: BlockQuant, w: np.ndarray, dtype: np.dtype | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(packed [N, kb, blob], scales [N, kb], zero points [N, ceil(kb*bits/8)] or None) of W [K, N],
    by onnxruntime's rules: asymmetric when ``q.zero_points``, else symmetric."""
    w = np.asarray(w, np.float32)
    if w.shape != (q.k, q.n):
        raise ValueError(f"weight of shape {w.shape} does not fit a {q.k}x{q.n} MatMulNBits")
    levels = (1 << q.bits) - 1
    blocks = np.zeros((q.n, q.k_blocks * q.block_size), np.float32)
    blocks[:, : q.k] = w.T
    blocks = blocks.reshape(q.n, q.k_blocks, q.block_size)
    if q.zero_points:
        lo = np.minimum(blocks.min(axis=-1), 0.0)
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scale = (hi - lo) / levels
        safe = np.where(scale == 0, 1.0, scale)
        zp = np.where(scale == 0, 1 << (q.bits - 1), np.clip(np.round(-lo / safe), 0, levels))
    else:
        idx = np.abs(blocks).argmax(axis=-1)
        signed = np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0]
        scale = signed / -float(1 << (q.bits - 1))
        safe = np.where(scale == 0, 1.0, scale)
        zp = np.full(scale.shape, 1 << (q.bits - 1), np.float32)
    codes = np.clip(np.round(blocks / safe[..., None] + zp[..., None]), 0, levels).astype(np.uint8)
    packed = _pack(codes, q.bits)
    scales = scale.astype(dtype or np.float32)
    zps = _pack(zp.astype(np.uint8), q.bits) if q.zero_points else None
    return packed, scales, zps
