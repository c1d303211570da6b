"""Channels concatenated side by side (DenseNet's features, a U-Net's skip connections): the
layer reading the concatenation must take, from each branch, the channels that branch's
own selection took. Each branch is ordered and selected by itself, so the leading channels
of the concatenation took the first branch whole and the second short (DenseNet 8 -> 6
growth: norm1 and conv1 of the second layer read source channels 0-17 where 0-11 and 16-21
were selected). Evenly spaced channels keep every branch's share where the branches shrink
alike; checked on timm's DenseNet through transfer_module, against the source's tensors."""
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


@pytest.mark.parametrize("a,b,said", [(12, 6, False), (12, 4, True)])
def test_branches_that_shrink_by_different_ratios_are_named(a, b, said):
    """Evenly spaced channels take each branch's own only where the branches shrink alike
    (16 | 8 -> 12 | 6); 16 | 8 -> 12 | 4 is named in the align line, not left silent."""
    torch.manual_seed(0)
    src = _TwoBranches(16, 8).eval()
    torch.manual_seed(1)
    _, plan = transfer_module(src, _TwoBranches(a, b).eval(), torch.randn(2, 3, 8, 8))
    line = next(n for n in plan.notes if n.startswith("align"))
    assert ("shrink by different ratios" in line) == said, line
    if said:
        assert "16 | 8 -> 12 | 4" in line
