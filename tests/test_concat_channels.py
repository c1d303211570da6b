"""Channels concatenated side by side (DenseNet's features, a U-Net's skip connections): the
layer reading the concatenation must take, from each branch, the channels that branch's
own selection took. Each branch ordered and selected by itself, the leading channels of the
concatenation took the first branch whole and the second short (DenseNet 8 -> 6 growth:
norm1 and conv1 of the second layer read source channels 0-17 where 0-11 and 16-21 were
selected); evenly spaced channels across it keep every branch's share only where the
branches shrink alike. The readers' axes carry their branches (``Layout.branches``): each
target branch is taken from its own source branch, the first ones where the target has
fewer. Checked on timm's DenseNet and two-branch modules, against the source's tensors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _densenet(growth: int):
    from timm.models.densenet import DenseNet
    return DenseNet(growth_rate=growth, block_config=(2, 2), bn_size=2, num_classes=10).eval()


def _taken(source: np.ndarray, target: np.ndarray) -> list[int]:
    """Which source entry each target entry of a 1-D tensor is (perturbed values are distinct)."""
    return [int(np.flatnonzero(source == v)[0]) for v in target]


def test_a_concatenations_reader_takes_each_branchs_own_channels():
    torch.manual_seed(0)
    src = _densenet(8)                      # stem 16 channels, each layer adds 8
    perturb(src)
    torch.manual_seed(1)
    tgt, plan = transfer_module(src, _densenet(6), torch.randn(2, 3, 32, 32))   # stem 12, each layer adds 6
    assert any("concatenation" in n for n in plan.notes), plan.notes
    s = {k: v.numpy() for k, v in src.state_dict().items()}
    t = {k: v.numpy() for k, v in tgt.state_dict().items()}
    b1 = "features.denseblock1."
    stem = _taken(s["features.norm0.weight"], t["features.norm0.weight"])
    first = _taken(s[b1 + "denselayer1.conv2.weight"].reshape(8, -1)[:, 0], t[b1 + "denselayer1.conv2.weight"][:, 0, 0, 0])
    reads = _taken(s[b1 + "denselayer2.norm1.weight"], t[b1 + "denselayer2.norm1.weight"])
    assert reads == stem + [16 + c for c in first]


class _TwoBranches(torch.nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, a, 3, padding=1), torch.nn.Conv2d(3, b, 1)
        self.mix = torch.nn.Conv2d(a + b, 8, 1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.mix(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("a,b", [(12, 6), (12, 4), (16, 4)])
def test_each_branch_is_read_from_its_own(a, b):
    """16 | 8 concatenated channels into a | b: the layer reading them takes, from each branch,
    the channels that branch's own selection took, whatever the ratios (evenly spaced channels
    across the concatenation took 16 | 8 -> 12 | 4's second branch partly from the first)."""
    torch.manual_seed(0)
    src = _TwoBranches(16, 8).eval()
    perturb(src)
    torch.manual_seed(1)
    tgt, plan = transfer_module(src, _TwoBranches(a, b).eval(), torch.randn(2, 3, 8, 8))
    assert plan.summary()["written_fraction"] == 1.0
    s = {k: v.numpy() for k, v in src.state_dict().items()}
    t = {k: v.numpy() for k, v in tgt.state_dict().items()}
    first, second = _taken(s["a.bias"], t["a.bias"]), _taken(s["b.bias"], t["b.bias"])
    reads = _taken(s["mix.weight"][0, :, 0, 0], t["mix.weight"][0, :, 0, 0])
    assert reads == first + [16 + c for c in second]
    ops = next(x.operations for x in plan.slots if x.initializer == "mix.weight")
    assert any(f"16 | 8 -> {a} | {b}" in o for o in ops), ops


def test_a_dense_block_of_fewer_layers_computes_the_source_function(tmp_path):
    """A DenseNet block of 3 layers into one of 2 (exported at the dynamo defaults), the
    source's third layer planted inert (nothing reads its channels): the target must compute
    the source's function. Its layers pair with the source's first two, which read as many
    branches (they took the last two: 0.76 relative error), and the layers after the block
    take the stem's and the first two layers' channels, not evenly spaced ones across all four
    branches (1.1)."""
    import onnxruntime as ort

    import front_onnx
    from timm.models.densenet import DenseNet

    def densenet(layers: int):
        return DenseNet(growth_rate=8, block_config=(layers,), bn_size=2, num_classes=10).eval()

    torch.manual_seed(0)
    src = densenet(3)
    perturb(src)
    with torch.no_grad():
        src.classifier.weight[:, 32:40] = 0              # the third layer's 8 channels: read by nothing
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    for name, m in (("s", src), ("t", densenet(2))):
        torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=True)
    for kw in ({}, {"method": "select", "align": "none"}):
        r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", **kw)
        assert r.plan.summary()["written_fraction"] == 1.0

        def run(p):
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        want = run(tmp_path / "s.onnx")
        err = float(np.abs(run(tmp_path / "o.onnx") - want).max() / np.abs(want).max())
        assert err < 1e-5, (kw, err)


def test_a_branch_that_grows_is_not_selected_and_a_learngene_keeps_the_branches(tmp_path):
    """16 | 8 into 8 | 12: fewer channels in all, but the second branch grows, so no selection
    takes each branch from its own: `select` leaves the reader with that reason (`hybrid`
    transforms it). The source's branches are in its learngene, through a save and a load."""
    import front_onnx
    from front_onnx.method.learngene import Learngene

    torch.manual_seed(0)
    src = _TwoBranches(16, 8).eval()
    perturb(src)
    x = torch.randn(2, 3, 8, 8)
    for name, m in (("s", src), ("t", _TwoBranches(8, 12).eval())):
        torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=True, optimize=False)
    plan = front_onnx.plan(tmp_path / "s.onnx", tmp_path / "t.onnx", method="select")
    mix = next(s for s in plan.slots if s.initializer == "mix.weight")
    assert mix.status == "left" and "branches 16 | 8 -> 8 | 12" in mix.reason, mix.reason
    gene = front_onnx.extract(tmp_path / "s.onnx", keep=1.0)
    branched = {k: t.branches for k, t in gene.templates.items() if t.branches}
    assert branched and all(b == {1: (16, 8)} for b in branched.values()), branched
    back = Learngene.load(gene.save(tmp_path / "g.safetensors"))
    assert {k: t.branches for k, t in back.templates.items() if t.branches} == branched
