"""A constant the exporter computed from a parameter and other values (LeViT's attention
biases gathered at its index buffer, folded by the dynamo exporter's optimizer) holds
trained values the transfer cannot write: it is left, and counted as a parameter left, so
an identity transfer that cannot reproduce the source no longer reports 100% written.
Validation compares the outputs and refuses it."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("onnxscript")

import front_onnx  # noqa: E402
from front_onnx.errors import ValidationFailed  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _levit():
    from timm.models.levit import Levit
    return Levit(img_size=64, embed_dim=(32, 48), key_dim=8, depth=(1, 1), num_heads=(2, 3), num_classes=4).eval()


def test_a_constant_computed_from_a_parameter_is_a_parameter_left(tmp_path):
    torch.manual_seed(0)
    src = _levit()
    perturb(src)
    with torch.no_grad():
        for n, p in src.named_parameters():
            if n.endswith("attention_biases"):
                p.normal_(0, 1.0)          # as after training (initialized to zeros)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    for name, m in (("s", src), ("t", _levit())):
        torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=True)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    left = [s for s in r.plan.slots if s.status == "left" and s.parameter]
    assert left and all("attention_biases" in s.reason for s in left), [s.reason for s in left]
    assert r.plan.summary()["written_fraction"] < 1.0
    with pytest.raises(ValidationFailed, match="agreement"):
        front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "v.onnx", validate=True)
