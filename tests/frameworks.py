"""Hand-built graphs in the conventions other exporters use (tf2onnx/Keras, jax2onnx, paddle2onnx),
so the topology-based analysis is tested on more than torch's two exporters.

Each builder makes one model of a family at a given width and depth:
- transformer: token features -> in-projection -> depth x [LN -> q, k, v -> attention ->
  out-projection -> residual -> LN -> MLP -> residual] -> mean over tokens -> classifier;
- cnn: image -> stem conv -> stage 1 (depth x conv) -> stride-2 conv -> stage 2 -> pool -> classifier.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
TOKENS, FEATURES, CLASSES, IMAGE, CHANNELS = 6, 5, 4, 8, 3


class _G:
    def __init__(self, style: str, seed: int) -> None:
        self.style, self.nodes, self.inits = style, [], []
        self.rng = np.random.default_rng(seed)
        self.k = 0

    def name(self, hint: str) -> str:
        self.k += 1
        if self.style == "keras":
            return f"functional_1/{hint}_{self.k}/ReadVariableOp"
        if self.style == "paddle":
            return f"{hint}_{self.k}.w_0"
        return f"const_{self.k}"

    def init(self, hint: str, a: np.ndarray) -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32), n))
        return n

    def const(self, a) -> str:
        n = f"c{self.k}_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(a), n))
        return n

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.k += 1
        out = f"v{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.k}", **attrs))
        return out

    def weight(self, hint: str, shape, std: float) -> np.ndarray:
        return self.rng.normal(0, std, size=shape)

    # ---------------------------------------------------------------- layers
    def dense(self, x: str, din: int, dout: int, hint: str, two_d: bool = False) -> str:
        w = self.weight(hint, (din, dout), din ** -0.5)
        b = self.weight(hint, (dout,), 0.02)
        if self.style == "jax":  # Gemm with an [in, out] kernel and no transB, on 2-D rows
            flat = self.op("Reshape", [x, self.const(np.array([-1, din], dtype=np.int64))]) if not two_d else x
            y = self.op("Gemm", [flat, self.init(hint, w), self.init(hint + "_b", b)])
            return y if two_d else self.op("Reshape", [y, self.const(np.array([-1, TOKENS, dout], dtype=np.int64))])
        if self.style == "paddle":  # the kernel stored [out, in] and transposed before the MatMul
            wt = self.op("Transpose", [self.init(hint, w.T)], perm=[1, 0])
            return self.op("Add", [self.op("MatMul", [x, wt]), self.init(hint + "_b", b)])
        return self.op("Add", [self.op("MatMul", [x, self.init(hint, w)]), self.init(hint + "_b", b)])

    def layer_norm(self, x: str, d: int, hint: str) -> str:
        g = self.init(hint + "_gamma", 1 + self.weight(hint, (d,), 0.1))
        b = self.init(hint + "_beta", self.weight(hint, (d,), 0.1))
        if self.style == "paddle":
            return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)
        mean = self.op("ReduceMean", [x, self.const(np.array([-1], dtype=np.int64))], keepdims=1)
        c = self.op("Sub", [x, mean])
        var = self.op("ReduceMean", [self.op("Mul", [c, c]), self.const(np.array([-1], dtype=np.int64))], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.array(1e-5, dtype=np.float32))])])
        if self.style == "keras":
            normed = self.op("Mul", [c, self.op("Reciprocal", [std])])
        else:
            normed = self.op("Div", [c, std])
        return self.op("Add", [self.op("Mul", [normed, g]), b])

    def conv(self, x: str, cin: int, cout: int, stride: int, hint: str) -> str:
        w = self.weight(hint, (cout, cin, 3, 3), (cin * 9) ** -0.5)
        if self.style == "keras":  # kernel stored HWIO, transposed to OIHW; BN folded into Mul/Add
            k = self.op("Transpose", [self.init(hint, w.transpose(2, 3, 1, 0))], perm=[3, 2, 0, 1])
            y = self.op("Conv", [x, k], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
            s = self.init(hint + "_bn_scale", (1 + self.weight(hint, (cout,), 0.1)).reshape(1, cout, 1, 1))
            t = self.init(hint + "_bn_shift", self.weight(hint, (cout,), 0.1).reshape(1, cout, 1, 1))
            return self.op("Relu", [self.op("Add", [self.op("Mul", [y, s]), t])])
        if self.style == "jax":  # NHWC activations wrapped in Transposes around an OIHW conv
            nchw = self.op("Transpose", [x], perm=[0, 3, 1, 2])
            y = self.op("Conv", [nchw, self.init(hint, w), self.init(hint + "_b", self.weight(hint, (cout,), 0.02))],
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
            return self.op("Relu", [self.op("Transpose", [y], perm=[0, 2, 3, 1])])
        y = self.op("Conv", [x, self.init(hint, w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
        bn = [self.init(hint + s, v) for s, v in (("_scale", 1 + self.weight(hint, (cout,), 0.1)),
                                                   ("_bias", self.weight(hint, (cout,), 0.1)),
                                                   ("_mean", self.weight(hint, (cout,), 0.1)),
                                                   ("_var", 0.5 + self.rng.random(cout)))]
        return self.op("Relu", [self.op("BatchNormalization", [y, *bn], epsilon=1e-5)])


def _model(g: _G, inp: onnx.ValueInfoProto, out: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, "model", [inp], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", CLASSES])],
                              g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name=f"tests-{g.style}")
    m.ir_version = IR_VERSION
    return m


def transformer(style: str, dim: int, depth: int, seed: int = 0) -> onnx.ModelProto:
    g = _G(style, seed)
    x = g.dense("x", FEATURES, dim, "embed")
    for i in range(depth):
        h = g.layer_norm(x, dim, f"block{i}_ln1")
        q, k, v = (g.dense(h, dim, dim, f"block{i}_attn_{n}") for n in "qkv")
        scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]),
                              g.const(np.array(np.sqrt(dim), dtype=np.float32))])
        att = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        x = g.op("Add", [x, g.dense(att, dim, dim, f"block{i}_attn_out")])
        h = g.layer_norm(x, dim, f"block{i}_ln2")
        h = g.op("Relu", [g.dense(h, dim, 2 * dim, f"block{i}_fc1")])
        x = g.op("Add", [x, g.dense(h, 2 * dim, dim, f"block{i}_fc2")])
    pooled = g.op("ReduceMean", [g.layer_norm(x, dim, "final_ln"), g.const(np.array([1], dtype=np.int64))], keepdims=0)
    logits = g.dense(pooled, dim, CLASSES, "head", two_d=True)
    return _model(g, helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS, FEATURES]), logits)


def cnn(style: str, width: int, depth: int, seed: int = 0) -> onnx.ModelProto:
    g = _G(style, seed)
    nhwc = style == "jax"
    x = g.conv("x", CHANNELS, width, 1, "stem")
    for i in range(depth):
        x = g.conv(x, width, width, 1, f"s1b{i}_c1")
    x = g.conv(x, width, 2 * width, 2, "down")
    for i in range(depth):
        x = g.conv(x, 2 * width, 2 * width, 1, f"s2b{i}_c1")
    pooled = g.op("ReduceMean", [x, g.const(np.array([1, 2] if nhwc else [2, 3], dtype=np.int64))], keepdims=0)
    logits = g.dense(pooled, 2 * width, CLASSES, "head", two_d=True)
    shape = ["batch", IMAGE, IMAGE, CHANNELS] if nhwc else ["batch", CHANNELS, IMAGE, IMAGE]
    return _model(g, helper.make_tensor_value_info("x", TensorProto.FLOAT, shape), logits)


def example_input(family: str, style: str, batch: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if family == "transformer":
        return rng.standard_normal((batch, TOKENS, FEATURES)).astype(np.float32)
    shape = (batch, IMAGE, IMAGE, CHANNELS) if style == "jax" else (batch, CHANNELS, IMAGE, IMAGE)
    return rng.standard_normal(shape).astype(np.float32)
