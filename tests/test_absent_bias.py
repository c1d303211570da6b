"""An absent bias is a zero bias: exporters drop all-zero bias inputs (the dynamo exporter's
optimizer, and BatchNorm folding of a fresh model), so a trained source and a fresh target
differ by design. Blocks still match; a bias the source has is restored into the target
node's optional input (Conv, Gemm); a bias whose Add node the exporter removed is left,
with the reason and the fix."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest

import front_onnx
from tests.conftest import run_onnx

torch = pytest.importorskip("torch")
nn = torch.nn


def _cnn(seed: int, trained: bool) -> "nn.Module":
    torch.manual_seed(seed)
    layers = []
    for cin in (3, 8, 8):
        layers += [nn.Conv2d(cin, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
    m = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    if trained:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.1)
                    mod.running_var.uniform_(0.5, 1.5)
    return m


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _mlp(seed: int, trained: bool) -> "nn.Module":
    torch.manual_seed(seed)
    m = _Mlp().eval()
    with torch.no_grad():
        for lin in (m.fc1, m.fc2, m.fc3):
            lin.bias.copy_(0.1 * torch.randn_like(lin.bias) if trained else torch.zeros_like(lin.bias))
    return m


def _export(model, x, path, dynamo: bool):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["x"])
    return path


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_folded_batchnorm_biases_are_restored_and_identity_holds(tmp_path, dynamo):
    x = torch.randn(2, 3, 16, 16)
    src = _export(_cnn(0, True), x, tmp_path / "src.onnx", dynamo)
    tgt = _export(_cnn(1, False), x, tmp_path / "tgt.onnx", dynamo)
    out = tmp_path / "out.onnx"
    r = front_onnx.transfer(src, tgt, out, keep=1.0, validate=True)
    assert r.plan.summary()["written_fraction"] == 1.0
    want = run_onnx(src, {"x": x.numpy()})[0]
    got = run_onnx(out, {"x": x.numpy()})[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5
    t, o = onnx.load(str(tgt), load_external_data=False), onnx.load(str(out), load_external_data=False)
    assert [n.op_type for n in t.graph.node] == [n.op_type for n in o.graph.node]  # no node added or removed
    restored = [s for s in r.plan.written if s.absent]
    if dynamo:  # the fresh target's folded biases are zero and were dropped: each conv gets its bias back
        assert len(restored) == 3 and all("restored" in s.operations[-1] for s in restored)
        convs = [n for n in o.graph.node if n.op_type == "Conv"]
        assert all(len(n.input) == 3 for n in convs)
    else:
        assert restored == []


def _mlp_graph(seed: int, with_bias: bool) -> onnx.ModelProto:
    """x -> 3 x (MatMul [+ Add bias] -> Relu) -> y, as an exporter that removed the bias Adds
    (``with_bias=False``) leaves it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, v = [], [], "x"
    for k in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("MatMul", [v, f"w{k}"], [f"m{k}"]))
        v = f"m{k}"
        if with_bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), f"b{k}"))
            nodes.append(helper.make_node("Add", [v, f"b{k}"], [f"a{k}"]))
            v = f"a{k}"
        nodes.append(helper.make_node("Relu", [v], [f"r{k}"]))
        v = f"r{k}"
    nodes.append(helper.make_node("Identity", [v], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def test_a_removed_bias_add_is_left_with_the_fix(tmp_path):
    """A projection whose bias Add the target's exporter removed: nothing can take the source's
    bias. It is left, counted, and the reason says why and how to keep it."""
    src, tgt = tmp_path / "src.onnx", tmp_path / "tgt.onnx"
    onnx.save(_mlp_graph(0, True), src)
    onnx.save(_mlp_graph(1, False), tgt)
    r = front_onnx.transfer(src, tgt, tmp_path / "out.onnx", keep=1.0)
    assert len([s for s in r.plan.written if s.role == "linear.weight"]) == 3  # the blocks still match
    left = [s for s in r.plan.left if s.absent]
    assert len(left) == 3 and all("optimize=False" in s.reason for s in left)
    assert r.plan.summary()["written_fraction"] == pytest.approx(3 * 64 / (3 * 64 + 3 * 8))
    assert any("optimize=False" in line for line in r.detail_lines())


def test_a_source_without_biases_gives_zeros(tmp_path):
    x = torch.randn(1, 4, 8)
    src = _export(_mlp(0, False), x, tmp_path / "src.onnx", True)     # zero biases: dropped
    tgt = _export(_mlp(1, True), x, tmp_path / "tgt.onnx", False)     # legacy: biases kept
    out = tmp_path / "out.onnx"
    r = front_onnx.transfer(src, tgt, out, keep=1.0)
    biases = [s for s in r.plan.written if s.role == "linear.bias"]
    assert len(biases) == 3
    got = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert all(not np.any(got[s.written_as or s.initializer]) for s in biases)


def test_a_block_without_bias_on_both_sides_is_nothing_to_write(tmp_path):
    """A stage whose first block's projection has no bias and whose second has one (Swin's
    bias-free patch-merging reduction beside an MLP projection): the first block's absent
    bias gets zeros from the source's first block, so it is absent, not left with a reason
    about an exporter that removed an Add."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import front_onnx

    def model(seed):
        r = np.random.default_rng(seed)
        inits = [numpy_helper.from_array(r.normal(size=(4, 4)).astype(np.float32), f"w{i}") for i in range(3)]
        inits += [numpy_helper.from_array(r.normal(size=(4,)).astype(np.float32), f"b{i}") for i in (1, 2)]
        nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
                 helper.make_node("MatMul", ["r0", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["h1"]),
                 helper.make_node("Relu", ["h1"], ["r1"]),
                 helper.make_node("MatMul", ["r1", "w2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    onnx.save(model(0), tmp_path / "s.onnx")
    onnx.save(model(1), tmp_path / "t.onnx")
    plan = front_onnx.plan(tmp_path / "s.onnx", tmp_path / "t.onnx", keep=1.0)
    absent = [s for s in plan.slots if s.absent]
    assert [s.template for s in absent] == [next(s.template for s in plan.slots if s.initializer == "b1")]
    assert all(s.status == "absent" for s in absent), [(s.initializer, s.status, s.reason) for s in absent]
    assert not plan.left
