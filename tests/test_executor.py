"""front_onnx.torch.executor: ONNX graphs run in torch match onnxruntime, float weights are
trainable parameters in their stored layout and dtype, and unsupported ops are named up front."""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from front_onnx.onnxio import load_model, save_model
from front_onnx.torch.executor import OnnxModule, UnsupportedOpsError
from tests.conftest import run_onnx, sample_feeds
from tests.frameworks import cnn, example_input, transformer
from tests.graphs import IR_VERSION, mlp_stack

FLOAT = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
# every sample model: 3 families x 5 sizes x 2 exporters (the base ones as trained-like sources)
CASES = [(fam, size, exp, size == "base") for fam in ("vit", "resnet", "gpt") for exp in ("dynamo", "legacy")
         for size in ("base", "narrow", "wide", "shallow", "deep")]


def _rel(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _weights(path) -> set[str]:
    m = load_model(path)
    return {t.name for t in m.proto.graph.initializer if t.data_type in FLOAT and int(np.prod(t.dims)) >= 2}


def _run(module: OnnxModule, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("family,size,exporter,source", CASES, ids=lambda v: str(v))
def test_samples_match_onnxruntime(samples, family, size, exporter, source):
    path = samples.get(family, size, exporter, source=source)
    feeds = sample_feeds(family, path)
    module = OnnxModule(path)
    assert module.input_names == list(feeds) and module.output_names == ["logits"]
    assert _rel(_run(module, feeds)[0], run_onnx(path, feeds)[0]) <= 1e-5
    assert set(module.param_names) == _weights(path)
    assert len(list(module.parameters())) == len(module.param_names)  # shared initializers: one parameter each
    model = load_model(path)
    values = module.initializer_values()
    assert set(values) == set(module.param_names)
    for name, v in values.items():
        stored = model.array(name)
        assert v.dtype == stored.dtype and v.shape == stored.shape
        assert v.tobytes() == stored.tobytes(), name
        assert module.get_parameter(module.param_names[name]) is module.parameter(name)


def _used_weights(path) -> set[str]:
    """Weights the graph output depends on (backward reachability over nodes)."""
    g = load_model(path).proto.graph
    need = {o.name for o in g.output}
    for n in reversed(g.node):
        if any(o in need for o in n.output):
            need.update(n.input)
    return need & _weights(path)


@pytest.mark.parametrize("family,exporter", list(itertools.product(("vit", "resnet", "gpt"), ("dynamo", "legacy"))))
def test_gradients_flow(samples, family, exporter):
    path = samples.get(family, "base", exporter, source=True)
    feeds = sample_feeds(family, path)
    module = OnnxModule(path)
    out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    (out.square().mean()).backward()
    used = _used_weights(path)
    assert used == set(module.param_names)
    for name in used:
        g = module.parameter(name).grad
        assert g is not None, name
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_training_step_writes_back(samples, tmp_path):
    """A step of SGD changes the weights; written into the same graph, onnxruntime agrees with the module."""
    path = samples.get("vit", "base", "dynamo", source=True)
    feeds = sample_feeds("vit", path)
    module = OnnxModule(path)
    before = module.initializer_values()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).square().mean().backward()
    opt.step()
    after = module.initializer_values()
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    out = save_model(load_model(path), tmp_path / "trained.onnx", after)
    assert _rel(run_onnx(out, feeds)[0], _run(module, feeds)[0]) <= 1e-5


# ---------------------------------------------------------------- other frameworks' graphs
@pytest.mark.parametrize("family,style", list(itertools.product(("transformer", "cnn"), ("keras", "jax", "paddle"))))
def test_framework_graphs_match_onnxruntime(tmp_path, family, style):
    path = tmp_path / "m.onnx"
    onnx.save({"transformer": transformer, "cnn": cnn}[family](style, 8, 2, seed=0), str(path))
    feeds = {"x": example_input(family, style)}
    module = OnnxModule(path)
    assert _rel(_run(module, feeds)[0], run_onnx(path, feeds)[0]) <= 1e-5
    assert set(module.param_names) == _weights(path)


def test_unsupported_ops_named_up_front(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL  # data that is never read: the ops are checked first
    w.ClearField("raw_data")
    for k, v in (("location", "missing.data"), ("offset", "0"), ("length", "8")):
        w.external_data.add(key=k, value=v)
    nodes = [helper.make_node("FrobnicateX", ["x"], ["a"]), helper.make_node("FrobnicateX", ["a"], ["b"]),
             helper.make_node("Add", ["b", "w"], ["c"]), helper.make_node("Zork", ["c"], ["d"], domain="com.example"),
             helper.make_node("FrobnicateX", ["d"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOpsError) as e:
        OnnxModule(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"{path}: unsupported ONNX ops for the torch executor: "
                   "FrobnicateX (3 nodes), com.example:Zork (1 node)")


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,cast", [("float16", False), ("float16", True), ("bfloat16", True)])
def test_low_precision_round_trip(tmp_path, dtype, cast):
    path = tmp_path / "m.onnx"
    onnx.save(mlp_stack(8, 2, seed=1, dtype=dtype, cast_weights=cast), str(path))
    model = load_model(path)
    module = OnnxModule(path)
    assert set(module.param_names) == _weights(path)
    want = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    values = module.initializer_values()
    for name, v in values.items():
        assert v.dtype == want and v.tobytes() == model.array(name).tobytes(), name
        assert module.parameter(name).dtype == torch.float32  # float32 master copy
    x = np.random.default_rng(0).normal(size=(3, 8))
    feeds = {"x": x.astype(np.float16 if not cast else np.float32)}
    got = _run(module, feeds)[0]
    assert got.dtype == np.float32
    assert _rel(got, run_onnx(path, feeds)[0]) <= 2e-2  # onnxruntime computes in float16
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.5)
    out = save_model(model, tmp_path / "scaled.onnx", module.initializer_values())
    scaled = load_model(out)
    for name in values:
        assert scaled.array(name).dtype == want
        np.testing.assert_array_equal(scaled.array(name), (values[name].astype(np.float32) * 1.5).astype(want))


# ---------------------------------------------------------------- single ops against onnxruntime
def _graph(nodes, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray], outputs: list[str], opset: int = 18,
           functions=()):
    def vi(name, a):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))

    g = helper.make_graph(nodes, "g", [vi(k, v) for k, v in inputs.items()],
                          [helper.make_value_info(o, onnx.TypeProto()) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions[:1]]
    m = helper.make_model(g, opset_imports=opsets, functions=list(functions))
    m.ir_version = IR_VERSION
    return m


R = np.random.default_rng(3)


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _i(*vals):
    return np.array(vals, dtype=np.int64)


N = helper.make_node
OP_CASES = {
    "gemm-trans": ([N("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)],
                   {"a": _f(4, 3)}, {"b": _f(5, 4), "c": _f(5)}, 18),
    "conv-same-group": ([N("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=2)],
                        {"x": _f(2, 4, 7, 7)}, {"w": _f(6, 2, 3, 3), "b": _f(6)}, 18),
    "conv-asym-dil": ([N("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1], dilations=[2, 1])],
                      {"x": _f(1, 2, 9, 8)}, {"w": _f(3, 2, 3, 2)}, 18),
    "conv1d": ([N("Conv", ["x", "w"], ["y"], pads=[1, 1])], {"x": _f(2, 3, 10)}, {"w": _f(4, 3, 3)}, 13),
    "conv-transpose": ([N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1],
                          output_padding=[1, 1])], {"x": _f(1, 3, 4, 5)}, {"w": _f(3, 2, 3, 3), "b": _f(2)}, 18),
    "pools": ([N("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1),
               N("AveragePool", ["x"], ["a"], kernel_shape=[3, 2], pads=[1, 1, 0, 1]),
               N("AveragePool", ["x"], ["c"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
               N("GlobalAveragePool", ["x"], ["g"]), N("GlobalMaxPool", ["x"], ["h"]),
               N("Sum", ["g", "h"], ["s"]), N("Flatten", ["s"], ["y"], axis=1)],
              {"x": _f(2, 3, 7, 6)}, {}, 18),
    "norms": ([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
               N("InstanceNormalization", ["bn", "s", "b"], ["inn"]),
               N("LayerNormalization", ["inn", "ls", "lb"], ["y", "mean", "istd"], axis=2, epsilon=1e-4)],
              {"x": _f(2, 3, 4, 5)}, {"s": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.5,
                                      "ls": _f(4, 5), "lb": _f(4, 5)}, 18),
    "softmax-old": ([N("Softmax", ["x"], ["s"], axis=1), N("LogSoftmax", ["x"], ["l"], axis=2),
                     N("Concat", ["s", "l"], ["y"], axis=0)], {"x": _f(2, 3, 4)}, {}, 11),
    "split-slice": ([N("Split", ["x", "sp"], ["a", "b"], axis=1), N("Split", ["x"], ["c", "d", "e"], axis=2, num_outputs=3),
                     N("Slice", ["x", "st", "en", "ax", "stp"], ["f"]),
                     N("Concat", ["a", "b"], ["ab"], axis=1), N("Concat", ["c", "d", "e"], ["cde"], axis=2),
                     N("Add", ["ab", "cde"], ["g"]), N("ReduceSum", ["f", "ax"], ["y"], keepdims=0)],
                    {"x": _f(2, 5, 7)}, {"sp": _i(2, 3), "st": _i(-1, 1), "en": _i(-100, 6), "ax": _i(2, 1),
                                         "stp": _i(-2, 2)}, 18),
    "split-attr": ([N("Split", ["x"], ["a", "b"], axis=-1, split=[1, 3]), N("Squeeze", ["a"], ["s"], axes=[2]),
                    N("Unsqueeze", ["s"], ["u"], axes=[-1]), N("Mul", ["u", "b"], ["y"])], {"x": _f(3, 2, 4)}, {}, 11),
    "shape-ops": ([N("Shape", ["x"], ["sh"], start=1, end=-1), N("ConstantOfShape", ["sh"], ["z"],
                                                                  value=numpy_helper.from_array(np.array([2.5], np.float32))),
                   N("Size", ["x"], ["n"]), N("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
                   N("Add", ["z", "nf"], ["zz"]), N("Expand", ["zz", "ex"], ["e"]),
                   N("Reshape", ["x", "rs"], ["r"]), N("Tile", ["r", "tl"], ["t"]),
                   N("Squeeze", ["t", "sq"], ["y0"]), N("Unsqueeze", ["y0", "sq"], ["y1"]),
                   N("CastLike", ["e", "x"], ["e2"]), N("ReduceMean", ["e2"], ["em"], keepdims=1),
                   N("Add", ["y1", "em"], ["y"])],
                  {"x": _f(2, 3, 1, 4)}, {"ex": _i(2, 1, 3, 1), "rs": _i(0, -1, 1), "tl": _i(1, 2, 1),
                                          "sq": _i(-1)}, 18),
    "elementwise": ([N("Clip", ["x", "lo", "hi"], ["c"]), N("Pow", ["c", "two"], ["p"]), N("Sqrt", ["p"], ["s"]),
                     N("Gelu", ["x"], ["g"], approximate="tanh"), N("LeakyRelu", ["g"], ["lr"], alpha=0.2),
                     N("Where", ["cond", "s", "lr"], ["w"]), N("Max", ["w", "x", "s"], ["mx"]),
                     N("Min", ["mx", "hi"], ["mn"]), N("Mean", ["mn", "x"], ["me"]), N("Exp", ["me"], ["ex"]),
                     N("Log", ["ex"], ["lg"]), N("Tanh", ["lg"], ["th"]), N("Sigmoid", ["th"], ["sg"]),
                     N("Reciprocal", ["sg"], ["rc"]), N("Neg", ["rc"], ["ng"]), N("Erf", ["ng"], ["ef"]),
                     N("Div", ["ef", "hi"], ["dv"]), N("Sub", ["dv", "x"], ["y"])],
                    {"x": _f(3, 4)}, {"lo": np.array(-0.5, np.float32), "hi": np.array(1.5, np.float32),
                                      "two": np.array(2.0, np.float32), "cond": R.random((3, 4)) > 0.5}, 20),
    "logic-range-trilu": ([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "one"], ["n"], axis=0),
                           N("Range", ["zero", "n", "one"], ["r"]), N("Unsqueeze", ["r", "ax0"], ["ri"]),
                           N("Unsqueeze", ["r", "ax1"], ["rj"]), N("Less", ["ri", "rj"], ["lt"]),
                           N("Greater", ["ri", "rj"], ["gt"]), N("Or", ["lt", "gt"], ["ne"]), N("Not", ["ne"], ["eq"]),
                           N("Equal", ["ri", "rj"], ["eq2"]), N("And", ["eq", "eq2"], ["diag"]),
                           N("Trilu", ["x", "kk"], ["tr"], upper=0), N("Where", ["diag", "zf", "tr"], ["y"])],
                          {"x": _f(5, 5)}, {"one": np.array(1, np.int64), "zero": np.array(0, np.int64),
                                            "ax0": _i(1), "ax1": _i(0), "kk": np.array(1, np.int64),
                                            "zf": np.array(0.0, np.float32)}, 18),
    "gather-einsum-reduce": ([N("Gather", ["emb", "idx"], ["g"], axis=0), N("GatherElements", ["x", "ge"], ["gel"], axis=1),
                              N("Einsum", ["g", "x"], ["es"], equation="bij,jk->bik"),
                              N("ReduceMax", ["es"], ["rm"], axes=[-1], keepdims=1),
                              N("ReduceSum", ["gel"], ["rs"], keepdims=0), N("Add", ["rm", "rs"], ["y0"]),
                              N("Transpose", ["y0"], ["y1"]), N("ArgMax", ["es"], ["am"], axis=2),
                              N("Cast", ["am"], ["amf"], to=TensorProto.FLOAT), N("Add", ["y1", "amf"], ["y"])],
                             {"x": _f(3, 4)}, {"emb": _f(6, 3), "idx": np.array([[0, -1, 2], [5, 1, 1]], np.int64),
                                               "ge": np.array([[0, 3], [1, -1], [2, 2]], np.int64)}, 13),
    "pad-dropout": ([N("Pad", ["x", "pads", "cv"], ["p"]), N("Pad", ["x", "pads2"], ["q"], mode="reflect"),
                     N("Dropout", ["p"], ["d"]), N("Identity", ["q"], ["i"]), N("ReduceSum", ["d"], ["s"], keepdims=0),
                     N("ReduceSum", ["i"], ["t"], keepdims=0), N("Add", ["s", "t"], ["y"])],
                    {"x": _f(2, 3, 4)}, {"pads": _i(0, 1, 2, 0, 0, 1), "cv": np.array(0.5, np.float32),
                                         "pads2": _i(0, 0, 1, 0, 0, 2)}, 18),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_ops_match_onnxruntime(tmp_path, case):
    nodes, inputs, inits, opset = OP_CASES[case]
    produced = [o for n in nodes for o in n.output]
    outs = ["y"] + [o for o in ("mean", "istd") if o in produced]
    path = tmp_path / "m.onnx"
    onnx.save(_graph(nodes, inputs, inits, outs, opset), str(path))
    module = OnnxModule(path)
    got = _run(module, inputs)
    want = run_onnx(path, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert _rel(g, w) <= 1e-5


def test_local_functions_are_inlined(tmp_path):
    """A model-local function (attribute reference, default attribute) runs inlined; its caller's weights are parameters."""
    leaky = N("LeakyRelu", ["h"], ["y"])
    leaky.attribute.append(onnx.AttributeProto(name="alpha", ref_attr_name="slope", type=onnx.AttributeProto.FLOAT))
    fn = helper.make_function("custom", "ScaledLinear", ["x", "w"], ["y"], [N("MatMul", ["x", "w"], ["h"]), leaky],
                              [helper.make_opsetid("", 18)], attribute_protos=[helper.make_attribute("slope", 0.05)])
    nodes = [N("ScaledLinear", ["x", "w1"], ["h"], domain="custom", slope=0.3),
             N("ScaledLinear", ["h", "w2"], ["y"], domain="custom")]
    inputs, inits = {"x": _f(3, 4)}, {"w1": _f(4, 5), "w2": _f(5, 2)}
    path = tmp_path / "f.onnx"
    onnx.save(_graph(nodes, inputs, inits, ["y"], functions=[fn]), str(path))
    module = OnnxModule(path)
    assert set(module.param_names) == {"w1", "w2"}
    assert _rel(_run(module, inputs)[0], run_onnx(path, inputs)[0]) <= 1e-5


def test_inputs_positional_named_and_errors(samples):
    path = samples.get("gpt", "base", "legacy", source=True)
    feeds = sample_feeds("gpt", path)
    module = OnnxModule(load_model(path))
    (name, x), = feeds.items()
    a = module(torch.from_numpy(x))
    b = module(**{name: torch.from_numpy(x)})
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        module()
    with pytest.raises(TypeError):
        module(torch.from_numpy(x), **{name: torch.from_numpy(x)})
    with pytest.raises(KeyError):
        module.parameter("no such weight")


def test_awkward_names_and_float64_compute(tmp_path):
    """Initializer names that are not attribute names (or clash with ParameterDict/Module methods) get unique keys."""
    names = ["onnx::MatMul_12", "onnx_MatMul_12", "blocks.0.attn.qkv.weight", "keys", "training", "0"]
    inputs = {"x": _f(3, 4)}
    inits = {n: _f(4, 4) for n in names}
    nodes, cur = [], "x"
    for k, n in enumerate(names):
        nodes.append(N("MatMul", [cur, n], [f"h{k}"]))
        cur = f"h{k}"
    nodes.append(N("Identity", [cur], ["y"]))
    path = tmp_path / "n.onnx"
    onnx.save(_graph(nodes, inputs, inits, ["y"]), str(path))
    module = OnnxModule(path, dtype=torch.float64)
    assert set(module.param_names) == set(names)
    assert len(set(module.param_names.values())) == len(names)
    for n in names:
        assert module.get_parameter(module.param_names[n]) is module.parameter(n)
        assert module.parameter(n).dtype == torch.float64
        assert module.initializer_values()[n].dtype == np.float32
    got = _run(module, inputs)[0]
    assert got.dtype == np.float64
    assert _rel(got, run_onnx(path, inputs)[0]) <= 1e-5
