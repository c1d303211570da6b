"""A projection shortcut is never paired with a main-branch layer. A ResNet target whose
first block downsamples its shortcut (stem 64 channels, block 32) from a source whose
first block needs none (64 and 64): the target's shortcut convolution has no source
counterpart, and was written from a main-branch convolution of the source (its first, then
its last). It is left with the reason, and the main branch is written from the main
branch."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _resnet(width: int):
    from timm.models.resnet import Bottleneck, ResNet
    return ResNet(Bottleneck, layers=(1, 1, 1, 1), channels=(width, 32, 32, 32), num_classes=10,
                  zero_init_last=False).eval()


def test_a_shortcut_projection_the_source_lacks_is_left():
    torch.manual_seed(0)
    src = _resnet(16)                   # layer1: 64 -> 64, no downsample
    perturb(src)
    assert src.layer1[0].downsample is None
    torch.manual_seed(1)
    fresh = _resnet(8)                  # layer1: 64 -> 32, a downsample
    own = {k: v.clone() for k, v in fresh.state_dict().items()}
    tgt, plan = transfer_module(src, fresh, torch.randn(2, 3, 32, 32))
    t, s = tgt.state_dict(), src.state_dict()
    assert torch.equal(t["layer1.0.downsample.0.weight"], own["layer1.0.downsample.0.weight"])
    left = [p for p in plan.slots if p.status == "left" and p.role == "conv.weight"]
    assert any("no source unit aligns" in p.reason for p in left)
    for name in ("layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer2.0.downsample.0.weight"):
        assert np.isin(t[name].numpy(), s[name].numpy()).all(), name   # a selection of its own source layer
