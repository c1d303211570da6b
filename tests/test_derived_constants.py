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


def test_a_folded_sinusoidal_buffer_is_a_constant_said_so(tmp_path):
    """GPT-J's sinusoidal position buffer, gathered at the exported positions and folded by the
    dynamo exporter at its defaults (``gather``, read by a Split): its folded_from names a module
    path no node marks, which alone would make it a parameter. Its values say what it is: a
    constant, equal in the trained source and a fresh target, so the transfer writes 100% of
    the parameters, keeps the table's bytes and reproduces the source."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    transformers = pytest.importorskip("transformers")

    def gptj():
        return transformers.GPTJForCausalLM(transformers.GPTJConfig(
            vocab_size=64, n_embd=32, n_head=4, n_layer=2, n_positions=32, rotary_dim=4, use_cache=False)).eval()

    torch.manual_seed(0)
    src = gptj()
    perturb(src)
    torch.manual_seed(1)
    feeds = {"input_ids": torch.randint(1, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    for name, m in (("s", src), ("t", gptj())):
        torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs=feeds, dynamo=True)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", validate=True)
    sinusoid = [s for s in r.plan.slots if "sinusoidal position table" in s.reason]
    assert sinusoid and all(s.status == "left" and not s.parameter for s in sinusoid)
    assert not [s for s in r.plan.slots if s.parameter], [s.reason for s in r.plan.slots if s.parameter]
    assert r.plan.summary()["written_fraction"] == 1.0
    arrays = [{t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / f"{n}.onnx").graph.initializer}
              for n in ("t", "o")]
    for s in sinusoid:
        np.testing.assert_array_equal(arrays[1][s.initializer], arrays[0][s.initializer])
