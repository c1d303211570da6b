"""Grouped convolutions (ResNeXt): a target group's convolution reads the channels of its own
group only, so a shrink must take each target group's channels from one source group, and
the grouped convolution's in-group columns must be those channels. A strongest-first order
followed by the leading channels took whole source groups 0 and 1 for the target's four
groups (8 of 16 rows of layer1's grouped convolution read other channels than their
weights were trained on). Checked on timm's ResNeXt through transfer_module, against the
source's own tensors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _resnext(base_width: int):
    from timm.models.resnet import Bottleneck, ResNet
    return ResNet(Bottleneck, layers=(1, 1, 1, 1), channels=(16, 32, 32, 32), cardinality=4, base_width=base_width,
                  num_classes=10, zero_init_last=False).eval()


def _row(rows: np.ndarray, row: np.ndarray) -> int:
    hits = [r for r in range(rows.shape[0]) if np.array_equal(rows[r], row)]
    assert len(hits) == 1, hits
    return hits[0]


def test_each_target_group_takes_its_channels_from_one_source_group():
    torch.manual_seed(0)
    src = _resnext(24)          # layer1: 24 mid channels in 4 groups of 6
    perturb(src)
    torch.manual_seed(1)
    tgt, plan = transfer_module(src, _resnext(16), torch.randn(2, 3, 32, 32))   # 4 groups of 4
    assert any("grouped convolution" in n for n in plan.notes), plan.notes
    s = {k: v.numpy() for k, v in src.state_dict().items()}
    t = {k: v.numpy() for k, v in tgt.state_dict().items()}
    for layer in ("layer1.0", "layer3.0"):
        c1s, c1t = s[f"{layer}.conv1.weight"], t[f"{layer}.conv1.weight"]
        mid = [_row(c1s.reshape(len(c1s), -1), r) for r in c1t.reshape(len(c1t), -1)]   # conv1's in axis is kept
        np.testing.assert_array_equal(t[f"{layer}.bn1.weight"], s[f"{layer}.bn1.weight"][mid])
        a, b = s[f"{layer}.conv2.weight"].shape[1], t[f"{layer}.conv2.weight"].shape[1]  # channels per group
        c2s, c2t = s[f"{layer}.conv2.weight"], t[f"{layer}.conv2.weight"]
        for j in range(len(c2t)):
            reads = mid[j // b * b:(j // b + 1) * b]           # the target channels its group reads
            group = {ch // a for ch in reads}
            assert len(group) == 1, (layer, j, reads)          # all from one source group
            g = group.pop()
            cols = [ch - g * a for ch in reads]
            r = [k for k in range(g * a, (g + 1) * a) if np.array_equal(c2s[k][cols], c2t[j])]
            assert len(r) == 1, (layer, j)                      # a row of that group, at those columns
