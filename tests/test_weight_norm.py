"""A parameter read by two ops is one tensor: a weight-normalized convolution's direction v
is read by its norm (ReduceL2, an op the transfer does not write through) and by the
division v / ||v|| (the legacy exporter keeps both in the graph; Wav2Vec2's positional
convolution, HuBERT's). The written value must reach both: splitting the shared initializer
left the norm on the target's own v (an identity transfer off by 0.18, reported written)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402


def _model(seed: int):
    from torch.nn.utils.parametrizations import weight_norm
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.ReLU(),
                               weight_norm(torch.nn.Conv1d(8, 8, 3, padding=1), dim=2), torch.nn.GELU(),
                               torch.nn.Conv1d(8, 2, 1)).eval()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_weight_norms_direction_is_written_for_both_of_its_uses(exporter, tmp_path):
    src = _model(0)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    for name, m in (("s", src), ("t", _model(1))):
        torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=exporter == "dynamo")
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    assert r.split == 0

    def run(p):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    want, got = run(tmp_path / "s.onnx"), run(tmp_path / "o.onnx")
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-6
    names = {i.name for i in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    assert not [n for n in names if "__front" in n]
