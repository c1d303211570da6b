"""Run an ONNX graph as a torch module whose float weights are trainable parameters.

FRONT+ refines a source model with a spectral regularizer; this executor is the torch side
of that round trip: ONNX file -> :class:`OnnxModule` -> train -> :meth:`OnnxModule.initializer_values`
-> :func:`front_onnx.onnxio.model.save_model` into the same graph.

Rules
    * Weights. Every float tensor (float16 / bfloat16 / float32 / float64) of at least two
      elements held in a graph initializer, or in the ``value`` of a main-graph ``Constant`` node
      (front-onnx treats those as weights too, see :meth:`OnnxModel.constant_node`), becomes one
      ``nn.Parameter`` in its stored ONNX layout (no transposes: the graph consumes it as
      stored). A shared (deduplicated) initializer is one parameter. Float tensors of zero or
      one element (epsilons, scales, scalars of shape computations), integer and bool
      tensors are non-persistent buffers.
    * Parameters are float32 master copies (float64 where the stored tensor or the compute
      dtype is float64); they are cast to the compute dtype inside ``forward``.
    * Compute dtype. Every float value of the graph (inputs, weights, ``Cast`` to any float
      type) is computed in ``dtype`` (float32 by default), so an fp16 graph runs in float32.
      Integer/bool values keep their ONNX type (uint32/uint64 as int64); shape subgraphs run
      eagerly and are converted to Python ints where torch needs sizes.
    * Ops are checked before anything is loaded: every unsupported op type (default domain
      only; model-local functions are inlined) is named in one :class:`UnsupportedOpsError`.
    * Graph inputs that also have an initializer (old IR overridable defaults) are not inputs.

Names of a weight in ``param_names`` are initializer names (or the Constant node's output
name); writing Constant-node values back goes through ``save_model(constants={node index:
array})`` with the index from ``OnnxModel.constant_node(name)``.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from front_onnx.errors import UnsupportedOpsError
from front_onnx.onnxio import OnnxModel, load_model

__all__ = ["OnnxModule", "UnsupportedOpsError", "SUPPORTED_OPS"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_INT_TORCH = {
    TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8, TensorProto.INT16: torch.int16,
    TensorProto.UINT16: torch.int32, TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64,
    TensorProto.UINT32: torch.int64, TensorProto.UINT64: torch.int64, TensorProto.BOOL: torch.bool,
}
_DEFAULT_DOMAINS = ("", "ai.onnx")




# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #

def _ints(t) -> list[int]:
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _scalar(t):
    return t.reshape(-1)[0].item() if isinstance(t, torch.Tensor) else t


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _sanitize(name: str, taken: set[str], container: torch.nn.Module) -> str:
    """A valid, unused attribute name for ``name`` in ``container``."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if key[0].isdigit():
        key = "t" + key
    base, k = key, 1
    while key in taken or hasattr(container, key):
        k += 1
        key = f"{base}_{k}"
    taken.add(key)
    return key


class _Node:
    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "opset", "index")

    def __init__(self, op: str, name: str, inputs: list[str], outputs: list[str], attrs: dict, opset: int, index: int):
        self.op, self.name, self.inputs, self.outputs = op, name, inputs, outputs
        self.attrs, self.opset, self.index = attrs, opset, index

    def a(self, key: str, default=None):
        return self.attrs.get(key, default)


def _attr_value(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


# --------------------------------------------------------------------------- #
# Op implementations: fn(ex, node, xs) -> tensor or list of tensors
# --------------------------------------------------------------------------- #

_OPS: dict[str, Callable[["OnnxModule", _Node, list], Any]] = {}


def _op(*names: str):
    def deco(fn):
        for n in names:
            _OPS[n] = fn
        return fn
    return deco


def _unary(name: str, fn):
    _OPS[name] = lambda ex, n, xs: fn(xs[0])


for _name, _fn in {
    "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log,
    "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Abs": torch.abs,
    "Ceil": torch.ceil, "Floor": torch.floor, "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin,
    "Cos": torch.cos, "Tan": torch.tan, "Atan": torch.atan, "Softplus": F.softplus, "Softsign": F.softsign,
    "Not": torch.logical_not, "IsNaN": torch.isnan, "Mish": F.mish,
}.items():
    _unary(_name, _fn)


@_op("Identity", "Dropout")
def _identity(ex, n, xs):
    out = [xs[0]]
    if len(n.outputs) > 1:
        out.append(torch.ones_like(xs[0], dtype=torch.bool))
    return out


@_op("Add")
def _add(ex, n, xs):
    return xs[0] + xs[1]


@_op("Sub")
def _sub(ex, n, xs):
    return xs[0] - xs[1]


@_op("Mul")
def _mul(ex, n, xs):
    return xs[0] * xs[1]


@_op("Div")
def _div(ex, n, xs):
    a, b = xs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@_op("Mod")
def _mod(ex, n, xs):
    return torch.fmod(xs[0], xs[1]) if n.a("fmod", 0) else torch.remainder(xs[0], xs[1])


@_op("Pow")
def _pow(ex, n, xs):
    a, b = xs
    if isinstance(b, torch.Tensor) and b.numel() == 1 and b.dim() == 0 and not b.requires_grad:
        e = b.item()
        if e == 2:
            return a * a
        return torch.pow(a, e).to(a.dtype)
    return torch.pow(a, b).to(a.dtype)


for _name, _fn in {"Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or}.items():
    _OPS[_name] = (lambda f: (lambda ex, n, xs: f(xs[0], xs[1])))(_fn)


@_op("Max", "Min", "Sum", "Mean")
def _variadic(ex, n, xs):
    xs = [x for x in xs if x is not None]
    out = xs[0]
    f = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[n.op]
    for x in xs[1:]:
        out = f(out, x)
    return out / len(xs) if n.op == "Mean" else out


@_op("Where")
def _where(ex, n, xs):
    return torch.where(xs[0].bool(), xs[1], xs[2])


@_op("Clip")
def _clip(ex, n, xs):
    x = xs[0]
    if n.opset < 11:
        lo, hi = n.a("min"), n.a("max")
    else:
        lo = xs[1] if len(xs) > 1 else None
        hi = xs[2] if len(xs) > 2 else None
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
    return x


@_op("Gelu")
def _gelu(ex, n, xs):
    return F.gelu(xs[0], approximate=n.a("approximate", "none"))


@_op("LeakyRelu")
def _leaky(ex, n, xs):
    return F.leaky_relu(xs[0], n.a("alpha", 0.01))


@_op("Elu")
def _elu(ex, n, xs):
    return F.elu(xs[0], n.a("alpha", 1.0))


@_op("HardSigmoid")
def _hsig(ex, n, xs):
    return torch.clamp(xs[0] * n.a("alpha", 0.2) + n.a("beta", 0.5), 0, 1)


@_op("HardSwish")
def _hswish(ex, n, xs):
    return F.hardswish(xs[0])


@_op("PRelu")
def _prelu(ex, n, xs):
    return torch.where(xs[0] < 0, xs[0] * xs[1], xs[0])


@_op("MatMul")
def _matmul(ex, n, xs):
    return torch.matmul(xs[0], xs[1])


@_op("Gemm")
def _gemm(ex, n, xs):
    a, b = xs[0], xs[1]
    if n.a("transA", 0):
        a = a.t()
    if n.a("transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = n.a("alpha", 1.0), n.a("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if len(xs) > 2 and xs[2] is not None:
        c = xs[2]
        y = y + (c * beta if beta != 1.0 else c)
    return y


@_op("Einsum")
def _einsum(ex, n, xs):
    return torch.einsum(n.a("equation"), *xs)


def _softmax_like(fn):
    def run(ex, n, xs):
        x = xs[0]
        if n.opset >= 13:
            return fn(x, dim=n.a("axis", -1))
        axis = _axis(n.a("axis", 1), x.dim())
        shape = x.shape
        return fn(x.reshape(math.prod(shape[:axis]), -1), dim=-1).reshape(shape)
    return run


_OPS["Softmax"] = _softmax_like(torch.softmax)
_OPS["LogSoftmax"] = _softmax_like(torch.log_softmax)


@_op("LayerNormalization")
def _layer_norm(ex, n, xs):
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    axis = _axis(n.a("axis", -1), x.dim())
    eps = n.a("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    wants_stats = len(n.outputs) > 1 and any(n.outputs[1:])
    if not wants_stats:
        w = scale.expand(shape) if tuple(scale.shape) != shape else scale
        b = None if bias is None else (bias.expand(shape) if tuple(bias.shape) != shape else bias)
        return F.layer_norm(x, shape, w, b, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv]


@_op("BatchNormalization")
def _batch_norm(ex, n, xs):
    x, scale, bias, mean, var = xs[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=n.a("epsilon", 1e-5))


@_op("InstanceNormalization")
def _instance_norm(ex, n, xs):
    return F.instance_norm(xs[0], weight=xs[1], bias=xs[2], eps=n.a("epsilon", 1e-5))


def _conv_pads(n: _Node, spatial_in: list[int], kernel: list[int], strides: list[int], dil: list[int]) -> list[int]:
    """ONNX pads [b1.., e1..] from pads / auto_pad."""
    k = len(kernel)
    auto = n.a("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(k):
            out = -(-spatial_in[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial_in[i])
            small = total // 2
            b = small if auto == "SAME_UPPER" else total - small
            begins.append(b)
            ends.append(total - b)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * k)
    return list(n.a("pads", [0] * (2 * k)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] for the last len/2 axes -> F.pad order (last axis first)."""
    k = len(pads) // 2
    out = []
    for i in reversed(range(k)):
        out += [pads[i], pads[i + k]]
    return out


@_op("Conv")
def _conv(ex, n, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    k = w.dim() - 2
    kernel = list(n.a("kernel_shape", list(w.shape[2:])))
    strides = list(n.a("strides", [1] * k))
    dil = list(n.a("dilations", [1] * k))
    pads = _conv_pads(n, list(x.shape[2:]), kernel, strides, dil)
    if pads[:k] == pads[k:]:
        padding = pads[:k]
    else:
        x = F.pad(x, _torch_pad(pads))
        padding = 0
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dil, groups=n.a("group", 1))


@_op("ConvTranspose")
def _conv_transpose(ex, n, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    k = w.dim() - 2
    if n.a("output_shape") is not None or n.a("auto_pad", "NOTSET") != "NOTSET":
        raise NotImplementedError(f"ConvTranspose {n.name!r}: output_shape/auto_pad are not supported")
    strides = list(n.a("strides", [1] * k))
    dil = list(n.a("dilations", [1] * k))
    pads = list(n.a("pads", [0] * (2 * k)))
    opad = list(n.a("output_padding", [0] * k))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[k]
    y = fn(x, w, b, stride=strides, padding=0, output_padding=opad, groups=n.a("group", 1), dilation=dil)
    idx = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[i + k]) for i in range(k)]
    return y[tuple(idx)]


def _pool_setup(n: _Node, x: torch.Tensor):
    kernel = list(n.a("kernel_shape"))
    k = len(kernel)
    strides = list(n.a("strides", [1] * k))
    dil = list(n.a("dilations", [1] * k))
    pads = _conv_pads(n, list(x.shape[2:]), kernel, strides, dil)
    return kernel, strides, dil, pads, k


@_op("MaxPool")
def _max_pool(ex, n, xs):
    x = xs[0]
    kernel, strides, dil, pads, k = _pool_setup(n, x)
    if any(pads):
        x = F.pad(x, _torch_pad(pads), value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
    return fn(x, kernel, strides, 0, dil, ceil_mode=bool(n.a("ceil_mode", 0)))


@_op("AveragePool")
def _avg_pool(ex, n, xs):
    x = xs[0]
    kernel, strides, dil, pads, k = _pool_setup(n, x)
    if any(d != 1 for d in dil):
        raise NotImplementedError(f"AveragePool {n.name!r}: dilations are not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    ceil = bool(n.a("ceil_mode", 0))
    if not any(pads):
        return fn(x, kernel, strides, 0, ceil_mode=ceil)
    xp = F.pad(x, _torch_pad(pads))
    y = fn(xp, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if n.a("count_include_pad", 0):
        return y
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), _torch_pad(pads))
    return y / fn(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)


@_op("GlobalAveragePool")
def _gap(ex, n, xs):
    return xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)


@_op("GlobalMaxPool")
def _gmp(ex, n, xs):
    return xs[0].amax(dim=tuple(range(2, xs[0].dim())), keepdim=True)


@_op("Flatten")
def _flatten(ex, n, xs):
    x = xs[0]
    axis = _axis(n.a("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_op("Reshape")
def _reshape(ex, n, xs):
    x = xs[0]
    shape = _ints(xs[1]) if n.opset >= 5 else list(n.a("shape"))
    if not n.a("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("Transpose")
def _transpose(ex, n, xs):
    x = xs[0]
    perm = n.a("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


@_op("Concat")
def _concat(ex, n, xs):
    return torch.cat([x for x in xs if x is not None], dim=n.a("axis"))


@_op("Split")
def _split(ex, n, xs):
    x = xs[0]
    axis = _axis(n.a("axis", 0), x.dim())
    parts = None
    if n.opset >= 13 and len(xs) > 1 and xs[1] is not None:
        parts = _ints(xs[1])
    elif n.opset < 13 and n.a("split") is not None:
        parts = list(n.a("split"))
    if parts is None:
        num = n.a("num_outputs", len(n.outputs))
        size = -(-x.shape[axis] // num)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, parts, dim=axis))


@_op("Slice")
def _slice(ex, n, xs):
    x = xs[0]
    if n.opset < 10:
        starts, ends = list(n.a("starts")), list(n.a("ends"))
        axes = list(n.a("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, x.dim())
        r = range(*slice(s, e, st).indices(x.shape[a]))
        if st > 0:
            idx = [slice(None)] * a + [slice(r.start, r.stop if r.stop >= r.start else r.start, st)]
            x = x[tuple(idx)]
        else:
            x = x.index_select(a, torch.tensor(list(r), dtype=torch.long, device=x.device))
    return x


def _gather_args(n, x, idx):
    """The axis and the indices of a Gather-like node, negative indices counted from the end."""
    axis = _axis(n.a("axis", 0), x.dim())
    idx = idx.long()
    return axis, torch.where(idx < 0, idx + x.shape[axis], idx)


@_op("Gather")
def _gather(ex, n, xs):
    x, idx = xs
    axis, idx = _gather_args(n, x, idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@_op("GatherElements")
def _gather_elements(ex, n, xs):
    x, idx = xs
    axis, idx = _gather_args(n, x, idx)
    return torch.gather(x, axis, idx)


@_op("Unsqueeze")
def _unsqueeze(ex, n, xs):
    x = xs[0]
    axes = _ints(xs[1]) if n.opset >= 13 else list(n.a("axes"))
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@_op("Squeeze")
def _squeeze(ex, n, xs):
    x = xs[0]
    if n.opset >= 13:
        axes = _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else None
    else:
        axes = n.a("axes")
    if axes is None:
        return x.squeeze()
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@_op("Shape")
def _shape(ex, n, xs):
    shape = list(xs[0].shape)
    rank = len(shape)
    start = n.a("start", 0)
    end = n.a("end", rank)
    start = min(max(_axis(start, rank), 0), rank)
    end = min(max(_axis(end, rank), 0), rank)
    return torch.tensor(shape[start:end], dtype=torch.int64, device=ex._device())


@_op("Size")
def _size(ex, n, xs):
    return torch.tensor(xs[0].numel(), dtype=torch.int64, device=ex._device())


@_op("Constant")
def _constant(ex, n, xs):
    return ex._value(n.outputs[0])


@_op("ConstantOfShape")
def _constant_of_shape(ex, n, xs):
    shape = _ints(xs[0])
    t = n.a("value")
    if t is None:
        return torch.zeros(shape, dtype=ex.dtype, device=ex._device())
    v = ex._to_torch(numpy_helper.to_array(t), t.data_type)
    return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype, device=ex._device())


@_op("Expand")
def _expand(ex, n, xs):
    x = xs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(xs[1])))
    return x.expand(shape)


@_op("Tile")
def _tile(ex, n, xs):
    return xs[0].repeat(*_ints(xs[1]))


@_op("Cast")
def _cast(ex, n, xs):
    return xs[0].to(ex._torch_dtype(n.a("to")))


@_op("CastLike")
def _cast_like(ex, n, xs):
    return xs[0].to(xs[1].dtype)


def _reduce(fn, attr_axes_below: int):
    def run(ex, n, xs):
        x = xs[0]
        if n.opset >= attr_axes_below:
            axes = _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else []
        else:
            axes = list(n.a("axes", []))
        keep = bool(n.a("keepdims", 1))
        if not axes:
            if n.a("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted(_axis(a, x.dim()) for a in axes))
        return fn(x, dims, keep)
    return run


for _name, _fn, _since in [
    ("ReduceMean", lambda x, d, k: x.mean(dim=d, keepdim=k), 18),
    ("ReduceSum", lambda x, d, k: x.sum(dim=d, keepdim=k), 13),
    ("ReduceMax", lambda x, d, k: x.amax(dim=d, keepdim=k), 18),
    ("ReduceMin", lambda x, d, k: x.amin(dim=d, keepdim=k), 18),
    ("ReduceProd", lambda x, d, k: _prod(x, d, k), 18),
    ("ReduceL2", lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)), 18),
    ("ReduceL1", lambda x, d, k: x.abs().sum(dim=d, keepdim=k), 18),
    ("ReduceSumSquare", lambda x, d, k: (x * x).sum(dim=d, keepdim=k), 18),
    ("ReduceLogSumExp", lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k), 18),
]:
    _OPS[_name] = _reduce(_fn, _since)


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


@_op("ArgMax", "ArgMin")
def _arg(ex, n, xs):
    x = xs[0]
    axis = _axis(n.a("axis", 0), x.dim())
    keep = bool(n.a("keepdims", 1))
    if n.a("select_last_index", 0):
        x = x.flip(axis)
        i = (x.argmax if n.op == "ArgMax" else x.argmin)(dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - i
    return (x.argmax if n.op == "ArgMax" else x.argmin)(dim=axis, keepdim=keep)


@_op("Range")
def _range(ex, n, xs):
    start, limit, delta = xs
    dtype = start.dtype
    s, l, d = _scalar(start), _scalar(limit), _scalar(delta)
    count = max(int(math.ceil((l - s) / d)), 0)
    if dtype.is_floating_point:
        return start.reshape(()) + torch.arange(count, dtype=dtype, device=ex._device()) * delta.reshape(())
    return torch.arange(s, s + count * d, d, dtype=dtype, device=ex._device())[:count]


@_op("Trilu")
def _trilu(ex, n, xs):
    k = int(_scalar(xs[1])) if len(xs) > 1 and xs[1] is not None else 0
    return torch.triu(xs[0], k) if n.a("upper", 1) else torch.tril(xs[0], k)


@_op("Pad")
def _pad(ex, n, xs):
    x = xs[0]
    mode = n.a("mode", "constant")
    if n.opset < 11:
        pads, value, axes = list(n.a("pads")), n.a("value", 0.0), None
    else:
        pads = _ints(xs[1])
        value = _scalar(xs[2]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else None
    r = x.dim()
    axes = list(range(r)) if axes is None else [_axis(a, r) for a in axes]
    k = len(axes)
    full = [0] * (2 * r)
    for i, a in enumerate(axes):
        full[a], full[a + r] = pads[i], pads[i + k]
    # F.pad pads trailing axes only: skip leading axes without padding
    first = next((a for a in range(r) if full[a] or full[a + r]), r)
    if first == r:
        return x
    tp = _torch_pad(full[first:r] + full[r + first:])
    if mode == "constant":
        return F.pad(x, tp, value=value)
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, tp, mode=tmode)


# --------------------------------------------------------------------------- #
# The module
# --------------------------------------------------------------------------- #

SUPPORTED_OPS = frozenset(_OPS)


def _check_node(n: onnx.NodeProto) -> str | None:
    """Why a supported op type cannot run with these attributes (None if it can)."""
    if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
        return "MaxPool(Indices)"
    if n.op_type == "BatchNormalization" and len(n.output) > 1 and any(n.output[1:]):
        return "BatchNormalization(training_mode)"
    if n.op_type == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in n.attribute):
        return "Constant(string/sparse)"
    return None


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch module: float weights are trainable ``nn.Parameter`` s.

    ``model``: a path or a :class:`front_onnx.onnxio.model.OnnxModel` (an ``onnx.ModelProto`` with
    inline data works too). ``dtype``: the compute dtype of every float value.
    See the module docstring for which tensors become parameters.
    """

    def __init__(self, model: "str | Path | OnnxModel", dtype: torch.dtype = torch.float32):
        super().__init__()
        if isinstance(model, onnx.ModelProto):
            model = OnnxModel(Path("<memory>"), model)
        elif not isinstance(model, OnnxModel):
            model = load_model(model)
        if not dtype.is_floating_point:
            raise ValueError(f"compute dtype must be a float type, got {dtype}")
        self.dtype = dtype
        self.source_path = model.path
        proto = model.proto
        graph = proto.graph
        opsets = {o.domain: o.version for o in proto.opset_import}
        opset = opsets.get("", opsets.get("ai.onnx", 1))
        functions = {(f.domain, f.name): f for f in proto.functions}

        # -- all ops first, before any tensor is read
        bad: Counter[str] = Counter()
        self._scan(list(graph.node), functions, bad, set())
        if bad:
            parts = ", ".join(f"{op} ({c} node{'s' if c != 1 else ''})"
                              for op, c in sorted(bad.items(), key=lambda kv: (-kv[1], kv[0])))
            raise UnsupportedOpsError(f"{model.path}: unsupported ONNX ops for the torch executor: {parts}")

        init_names = [t.name for t in graph.initializer]
        init_set = set(init_names)
        self.input_names: list[str] = [i.name for i in graph.input if i.name not in init_set]
        self.output_names: list[str] = [o.name for o in graph.output]
        self._input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input}

        # -- weights, buffers
        self.params = torch.nn.ParameterDict()
        self.consts = torch.nn.Module()
        self.register_buffer("_anchor", torch.zeros(0, dtype=dtype), persistent=False)
        self.param_names: dict[str, str] = {}
        self._stored: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}  # name -> (dtype, shape, elem type)
        self._key: dict[str, tuple[str, str]] = {}  # value name -> ("p"|"b", key)
        taken_p: set[str] = set()
        taken_b: set[str] = set()

        def add(name: str, arr: np.ndarray, elem: int, weight_ok: bool) -> None:
            arr = np.asarray(arr)
            if elem in _FLOAT_TYPES and weight_ok and arr.size >= 2:
                pdt = torch.float64 if (elem == TensorProto.DOUBLE or dtype == torch.float64) else torch.float32
                t = torch.tensor(np.asarray(arr, dtype=np.float64 if pdt == torch.float64 else np.float32))
                key = _sanitize(name, taken_p, self.params)
                self.params[key] = torch.nn.Parameter(t)
                self.param_names[name] = f"params.{key}"
                self._stored[name] = (arr.dtype, tuple(arr.shape), elem)
                self._key[name] = ("p", key)
            else:
                key = _sanitize(name, taken_b, self.consts)
                self.consts.register_buffer(key, self._to_torch(arr, elem), persistent=False)
                self._key[name] = ("b", key)

        for t in graph.initializer:
            if t.data_type == TensorProto.STRING:
                continue
            add(t.name, model.array(t.name), t.data_type, True)

        # -- nodes (functions inlined)
        self._nodes: list[_Node] = []
        counter = [0]
        for i, node in enumerate(graph.node):
            self._inline(node, opset, opsets, functions, {}, {}, "", i, counter, add, model)

        # last use of each value, to drop intermediates during forward
        keep = set(self.output_names)
        last: dict[str, int] = {}
        for k, n in enumerate(self._nodes):
            for x in n.inputs:
                if x:
                    last[x] = k
        self._free: list[list[str]] = [[] for _ in self._nodes]
        for x, k in last.items():
            if x not in keep and x not in self._key:
                self._free[k].append(x)

    # ---------------------------------------------------------------- setup
    @staticmethod
    def _scan(nodes, functions, bad: Counter, seen: set) -> None:
        for n in nodes:
            fkey = (n.domain, n.op_type)
            if fkey in functions:
                if fkey not in seen:
                    seen.add(fkey)
                    OnnxModule._scan(list(functions[fkey].node), functions, bad, seen)
                continue
            if n.domain not in _DEFAULT_DOMAINS:
                bad[f"{n.domain}:{n.op_type}"] += 1
            elif n.op_type not in _OPS:
                bad[n.op_type] += 1
            else:
                why = _check_node(n)
                if why:
                    bad[why] += 1

    def _inline(self, node, opset, opsets, functions, rename: dict, fattrs: dict, prefix: str, index: int,
                counter, add, model) -> None:
        """Append ``node`` (a main-graph node, or a function body node under ``rename``) to the plan."""
        def rn(x: str) -> str:
            if not x:
                return x
            return rename.get(x, prefix + x) if prefix else x

        attrs = {}
        for a in node.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in fattrs:
                    attrs[a.name] = fattrs[a.ref_attr_name]
                continue
            attrs[a.name] = _attr_value(a)
        fkey = (node.domain, node.op_type)
        if fkey in functions:
            f = functions[fkey]
            counter[0] += 1
            sub_prefix = f"{prefix}__{f.name}_{counter[0]}/"
            sub_rename = {fi: rn(ci) for fi, ci in zip(f.input, node.input)}
            sub_rename.update({fo: rn(co) for fo, co in zip(f.output, node.output)})
            sub_attrs = {a.name: _attr_value(a) for a in f.attribute_proto}
            sub_attrs.update(attrs)
            fops = {o.domain: o.version for o in f.opset_import}
            fopset = fops.get("", fops.get("ai.onnx", opset))
            for fn in f.node:
                self._inline(fn, fopset, opsets, functions, sub_rename, sub_attrs, sub_prefix, index, counter, add, model)
            return
        n = _Node(node.op_type, node.name, [rn(x) for x in node.input], [rn(x) for x in node.output], attrs, opset, index)
        if n.op == "Constant":
            out = n.outputs[0]
            t = attrs.get("value")
            if t is not None:
                add(out, numpy_helper.to_array(t) if prefix else model.array(out), t.data_type, not prefix)
            else:
                for key, elem in (("value_float", TensorProto.FLOAT), ("value_floats", TensorProto.FLOAT),
                                  ("value_int", TensorProto.INT64), ("value_ints", TensorProto.INT64)):
                    if key in attrs:
                        arr = np.array(attrs[key], dtype=np.float32 if elem == TensorProto.FLOAT else np.int64)
                        add(out, arr, elem, False)
                        break
        self._nodes.append(n)

    def _torch_dtype(self, elem: int) -> torch.dtype:
        if elem in _FLOAT_TYPES:
            return self.dtype
        if elem in _INT_TORCH:
            return _INT_TORCH[elem]
        raise TypeError(f"{self.source_path}: ONNX element type {elem} is not supported by the torch executor")

    def _to_torch(self, arr: np.ndarray, elem: int) -> torch.Tensor:
        arr = np.asarray(arr)
        if elem in _FLOAT_TYPES:
            np_dt = np.float64 if self.dtype == torch.float64 else np.float32
            return torch.tensor(np.asarray(arr, dtype=np_dt)).to(self.dtype)
        tdt = self._torch_dtype(elem)
        if tdt == torch.bool:
            return torch.tensor(np.asarray(arr, dtype=np.bool_))
        return torch.tensor(np.asarray(arr).astype(np.int64)).to(tdt)

    def _device(self) -> torch.device:
        return self._anchor.device

    def _value(self, name: str) -> torch.Tensor:
        kind, key = self._key[name]
        if kind == "p":
            p = self.params[key]
            return p if p.dtype == self.dtype else p.to(self.dtype)
        return getattr(self.consts, key)

    # ---------------------------------------------------------------- API
    def parameter(self, initializer: str) -> torch.nn.Parameter:
        """The trainable parameter of a float weight initializer (KeyError if it is not one)."""
        if initializer not in self.param_names:
            raise KeyError(f"{self.source_path}: {initializer!r} is not a float weight initializer of this module")
        return self.params[self._key[initializer][1]]

    def initializer_values(self) -> dict[str, np.ndarray]:
        """Every weight's current value, in its stored ONNX dtype (float16, bfloat16, float32,
        float64) and shape, keyed by initializer name (or Constant node output name)."""
        out = {}
        for name, (np_dt, shape, _) in self._stored.items():
            a = self.params[self._key[name][1]].detach().cpu().numpy()
            out[name] = np.ascontiguousarray(a.astype(np_dt, copy=True).reshape(shape))
        return out

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor):
        if len(inputs) > len(self.input_names):
            raise TypeError(f"expected at most {len(self.input_names)} inputs ({self.input_names}), got {len(inputs)}")
        feeds = dict(zip(self.input_names, inputs))
        for k, v in named.items():
            if k not in self.input_names:
                raise TypeError(f"unknown input {k!r}; inputs are {self.input_names}")
            if k in feeds:
                raise TypeError(f"input {k!r} given twice")
            feeds[k] = v
        missing = [k for k in self.input_names if k not in feeds]
        if missing:
            raise TypeError(f"missing inputs {missing}")
        env: dict[str, torch.Tensor] = {}
        for k, v in feeds.items():
            v = torch.as_tensor(v, device=self._device())
            elem = self._input_types.get(k, 0)
            if elem in _FLOAT_TYPES or (elem == 0 and v.is_floating_point()):
                v = v.to(self.dtype)
            elif elem in _INT_TORCH:
                v = v.to(_INT_TORCH[elem])
            env[k] = v

        def get(x: str):
            if not x:
                return None
            v = env.get(x)
            if v is None:
                if x in self._key:
                    return self._value(x)
                raise KeyError(f"{self.source_path}: value {x!r} is not computed before its use")
            return v

        for k, n in enumerate(self._nodes):
            xs = [get(x) for x in n.inputs]
            while xs and xs[-1] is None:
                xs.pop()
            try:
                ys = _OPS[n.op](self, n, xs)
            except NotImplementedError:
                raise
            except Exception as e:
                raise RuntimeError(f"{self.source_path}: node {n.name or k} ({n.op}) failed: {e}") from e
            if isinstance(ys, torch.Tensor):
                ys = [ys]
            for name, y in zip(n.outputs, ys):
                if name:
                    env[name] = y
            for x in self._free[k]:
                env.pop(x, None)
        outs = tuple(get(o) for o in self.output_names)
        return outs[0] if len(outs) == 1 else outs
