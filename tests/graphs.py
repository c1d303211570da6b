"""Hand-built test graphs (onnx.helper), with the IR version onnxruntime reads."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10


def _tensor(name: str, a: np.ndarray, dtype) -> onnx.TensorProto:
    if dtype == "bfloat16":
        t = numpy_helper.from_array(a.astype(np.float32), name)
        t.data_type = TensorProto.BFLOAT16
        t.raw_data = a.astype(ml_dtypes.bfloat16).tobytes()
        return t
    return numpy_helper.from_array(a.astype(dtype), name)


def mlp_stack(dim: int, depth: int, *, dtype="float32", seed: int = 0, classes: int = 4,
              cast_weights: bool = False) -> onnx.ModelProto:
    """x -> depth x [LayerNorm -> fc1 (MatMul [in, out] + bias Add) -> Relu -> fc2 -> residual] -> head.

    Named like the legacy torch exporter (``/blocks.0/fc1/MatMul``, ``onnx::MatMul_N``).
    With ``cast_weights`` the weights are stored in ``dtype`` and Cast to float32 before
    use (mixed-precision exports); otherwise the whole graph runs in ``dtype``."""
    rng = np.random.default_rng(seed)
    compute = "float32" if cast_weights else dtype
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[compute]
    nodes, inits = [], []
    counter = iter(range(1000, 10**6))
    casts = iter(range(10**6))

    def weight(name: str, shape, std: float, node_scope: str) -> str:
        a = rng.normal(0.0, std, size=shape)
        inits.append(_tensor(name, a, dtype))
        if not cast_weights:
            return name
        out = f"{name}_cast"
        nodes.append(helper.make_node("Cast", [name], [out], name=f"{node_scope}/Cast_{next(casts)}",
                                      to=TensorProto.FLOAT))
        return out

    x = "x"
    for i in range(depth):
        s = f"/blocks.{i}"
        g = weight(f"blocks.{i}.norm.weight", (dim,), 0.1, f"{s}/norm")
        b = weight(f"blocks.{i}.norm.bias", (dim,), 0.1, f"{s}/norm")
        nodes.append(helper.make_node("LayerNormalization", [x, g, b], [f"{s}/ln"], name=f"{s}/norm/LayerNormalization",
                                      axis=-1))
        w1 = weight(f"onnx::MatMul_{next(counter)}", (dim, 2 * dim), dim ** -0.5, f"{s}/fc1")
        b1 = weight(f"blocks.{i}.fc1.bias", (2 * dim,), 0.02, f"{s}/fc1")
        nodes += [helper.make_node("MatMul", [f"{s}/ln", w1], [f"{s}/h0"], name=f"{s}/fc1/MatMul"),
                  helper.make_node("Add", [b1, f"{s}/h0"], [f"{s}/h1"], name=f"{s}/fc1/Add"),
                  helper.make_node("Relu", [f"{s}/h1"], [f"{s}/h2"], name=f"{s}/act/Relu")]
        w2 = weight(f"onnx::MatMul_{next(counter)}", (2 * dim, dim), (2 * dim) ** -0.5, f"{s}/fc2")
        b2 = weight(f"blocks.{i}.fc2.bias", (dim,), 0.02, f"{s}/fc2")
        nodes += [helper.make_node("MatMul", [f"{s}/h2", w2], [f"{s}/h3"], name=f"{s}/fc2/MatMul"),
                  helper.make_node("Add", [b2, f"{s}/h3"], [f"{s}/h4"], name=f"{s}/fc2/Add"),
                  helper.make_node("Add", [x, f"{s}/h4"], [f"{s}/out"], name=f"{s}/Add")]
        x = f"{s}/out"
    wh = weight(f"onnx::MatMul_{next(counter)}", (dim, classes), dim ** -0.5, "/head")
    nodes.append(helper.make_node("MatMul", [x, wh], ["logits"], name="/head/MatMul"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["batch", dim])],
                              [helper.make_tensor_value_info("logits", elem, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = IR_VERSION
    return model
