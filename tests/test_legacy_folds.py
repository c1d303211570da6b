"""The legacy torch exporter (``dynamo=False``) constant-folds what it computes from the
module's state into initializers named ``onnx::<Op>_<N>``: a layer scale
``gamma.reshape(1, -1, 1, 1)`` (timm ConvNeXt), a relative-position bias table gathered at
its constant index and permuted (timm Swin). They are parameters. What tracing computes
from no state (literals, ``arange``, non-persistent buffers such as Swin's window mask)
stays a ``Constant`` node and is left alone. Before these folds were told apart from
constants, identity transfers of ConvNeXt and Swin left them with the fresh target's
values (relative error 5.7e-05 and 8.2e-04 on the corpus)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import front_onnx
from tests.conftest import run_onnx

torch = pytest.importorskip("torch")
nn = torch.nn

W, H, D = 3, 2, 8   # window, heads, width


class _Block(nn.Module):
    """Attention over W*W tokens with a Swin-style relative-position bias and a fixed mask,
    then a ConvNeXt-style layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.table = nn.Parameter(0.02 * torch.randn((2 * W - 1) ** 2, H))
        c = torch.stack(torch.meshgrid(torch.arange(W), torch.arange(W), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (W - 1)
        self.register_buffer("index", rel[..., 0] * (2 * W - 1) + rel[..., 1], persistent=False)
        mask = torch.zeros(W * W, W * W)
        mask[:, -W:] = -100.0  # a window mask, as Swin's shifted windows have: finite, a constant
        self.register_buffer("mask", mask, persistent=False)
        self.gamma = nn.Parameter(1e-6 * torch.ones(D))

    def forward(self, x):  # x [B, W*W, D]
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index.view(-1)].view(n, n, H).permute(2, 0, 1).unsqueeze(0)
        a = torch.softmax(q @ k.transpose(-2, -1) + bias + self.mask, dim=-1)
        y = self.proj((a @ v).transpose(1, 2).reshape(b, n, D))
        return x + y.transpose(1, 2).reshape(b, D, W, W).mul(self.gamma.reshape(1, -1, 1, 1)).flatten(2).transpose(1, 2)


def _model(seed: int, trained: bool) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(_Block(), _Block()).eval()
    if trained:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return m


def _export(model, x, path):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    return path


def test_legacy_folds_of_parameters_are_transferred_and_constants_kept(tmp_path):
    x = torch.randn(2, W * W, D)
    src = _export(_model(0, True), x, tmp_path / "src.onnx")
    tgt = _export(_model(1, False), x, tmp_path / "tgt.onnx")
    t = onnx.load(str(tgt))
    folds = [i.name for i in t.graph.initializer if i.name.startswith("onnx::") and "MatMul" not in i.name]
    assert any(n.startswith("onnx::Mul_") for n in folds) and any(n.startswith("onnx::Add_") for n in folds)

    out = tmp_path / "out.onnx"
    r = front_onnx.transfer(src, tgt, out, keep=1.0)
    fold_slots = [s for s in r.plan.slots if s.initializer in folds]
    assert fold_slots and all(s.status == "written" for s in fold_slots), fold_slots
    masks = [s for s in r.plan.slots if "Constant" in s.initializer and s.shape == [W * W, W * W]]
    assert masks and all(s.status == "left" and s.reason.startswith("constant") for s in masks), masks
    want = run_onnx(src, {"x": x.numpy()})[0]
    got = run_onnx(out, {"x": x.numpy()})[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5

    # the window mask is a Constant node (or an initializer made from one): byte-identical
    o = onnx.load(str(out))
    consts = {n.output[0]: n.attribute[0].t.SerializeToString() for n in t.graph.node if n.op_type == "Constant"}
    consts_out = {n.output[0]: n.attribute[0].t.SerializeToString() for n in o.graph.node if n.op_type == "Constant"}
    assert consts == consts_out
    t_inits = {i.name: numpy_helper.to_array(i) for i in t.graph.initializer}
    o_inits = {i.name: numpy_helper.to_array(i) for i in o.graph.initializer}
    for name, a in t_inits.items():
        if not name.startswith("onnx::") and "." not in name:
            assert np.array_equal(o_inits[name], a), name
