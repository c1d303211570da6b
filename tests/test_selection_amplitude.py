"""Weight Selection as a method of the tool (``method="select"``) and the amplitude modes
(``scale``), checked against independent expectations:

- select on a GPT shrink gives exactly the state dict of the benchmark's torch-space Weight
  Selection (benchmarks/baselines.py: first N blocks, uniform elements), which knows nothing of
  ONNX; a growing target is left with the reason, never filled;
- ``scale="element"``: every written block has the source block's element std; ``"fan-in"``: a
  projection whose input width halves has sqrt(2) times that; at equal sizes both change nothing
  (identity still reproduces the source).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.torch import transfer_module  # noqa: E402
from samples.models import FAMILIES, GPTConfig, ResNetConfig, perturb  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import weight_selection  # noqa: E402


def _resnet(cfg: ResNetConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES["resnet"][0](cfg).eval()


def test_select_equals_the_torch_space_reference_on_a_gpt_shrink():
    """GPT d32/L4 -> d16/L2 at 4 heads (the benchmark's shrink shape: head size halves): the
    tool's selection on canonical axes (parts, heads, head size) picks what the reference's
    flat uniform selection picks."""
    cfg = dict(vocab=64, context=8, heads=4, mlp_ratio=4)
    torch.manual_seed(0)
    src = perturb(FAMILIES["gpt"][0](GPTConfig(dim=32, depth=4, **cfg)).eval(), seed=0)
    torch.manual_seed(1)
    tgt = FAMILIES["gpt"][0](GPTConfig(dim=16, depth=2, **cfg)).eval()
    want = weight_selection(src.state_dict(), tgt.state_dict())
    module, plan = transfer_module(src, tgt, (torch.zeros(2, 8, dtype=torch.long),), method="select")
    assert plan.summary()["written_fraction"] == 1.0
    got = module.state_dict()
    floats = [k for k, v in want.items() if torch.is_floating_point(v)]
    assert len(floats) > 20
    for k in floats:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_select_leaves_what_it_would_have_to_grow():
    src = perturb(_resnet(ResNetConfig(widths=(4, 8, 16), depths=(1, 1, 1)), 0), seed=0)
    tgt = _resnet(ResNetConfig(widths=(8, 16, 32), depths=(1, 1, 1)), 1)
    fresh = {k: v.clone() for k, v in tgt.state_dict().items()}
    with pytest.raises(front_onnx.FrontError):  # nothing can be written: refused, not a silent no-op
        transfer_module(src, tgt, (torch.zeros(2, 1, 8, 8),), method="select")
    assert all(torch.equal(fresh[k], v) for k, v in tgt.state_dict().items())


def _linear_chain(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 4))


@pytest.mark.parametrize("scale", ["element", "fan-in"])
def test_scale_sets_the_written_blocks_amplitude(scale, tmp_path):
    from samples.export import export

    src = perturb(_linear_chain(32, 0), seed=0)
    export(src, torch.zeros(2, 8), tmp_path / "s.onnx")
    export(_linear_chain(16, 1), torch.zeros(2, 8), tmp_path / "t.onnx")
    front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", scale=scale)
    out = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    src_w = {k: v.detach().numpy() for k, v in src.state_dict().items()}
    # the middle Linear (32x32 -> 16x16): its input width halves
    mid = next(v for v in out.values() if v.shape == (16, 16))
    want = src_w["2.weight"].std() * (np.sqrt(32 / 16) if scale == "fan-in" else 1.0)
    assert mid.std() == pytest.approx(want, rel=1e-4)
    # the first Linear keeps its 8 inputs: element std whatever the mode
    first = next(v for k, v in out.items() if v.shape in ((8, 16), (16, 8)))
    assert first.std() == pytest.approx(src_w["0.weight"].std(), rel=1e-4)


@pytest.mark.parametrize("scale", ["element", "fan-in"])
def test_scale_keeps_an_identity_transfer_exact(scale, tmp_path):
    from samples.export import export

    src = perturb(_linear_chain(16, 0), seed=0)
    export(src, torch.zeros(2, 8), tmp_path / "s.onnx")
    export(_linear_chain(16, 1), torch.zeros(2, 8), tmp_path / "t.onnx")
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", scale=scale,
                              validate=True)
    agreement = next(c for c in res.validation.checks if c.name == "agreement")
    assert agreement.status == "pass", agreement.figure
