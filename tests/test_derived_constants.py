"""Constants the exporter computed from module tensors, told apart by the exporter's own
evidence: the entries of a parameter taken at a buffer's positions (LeViT's attention
biases, folded by the dynamo optimizer) are the parameter's and are written; a table computed
from a buffer (GPT-J's sinusoidal positions) is a constant; a parameter initialized with
sines and cosines (Whisper's positions) is a parameter, whatever its values."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("onnxscript")

import front_onnx  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _levit():
    from timm.models.levit import Levit
    return Levit(img_size=64, embed_dim=(32, 48), key_dim=8, depth=(1, 1), num_heads=(2, 3), num_classes=4).eval()


def test_entries_of_a_parameter_at_a_buffers_positions_are_written(tmp_path):
    """LeViT's attention biases gathered at its index buffer and folded by the dynamo exporter's
    optimizer: left unwritten at first (identity off by 6.7e-3, reported 100%), then counted as
    a parameter left, because the index buffer was read as a parameter by its name. The
    exporter's graph signature lists it as a buffer: the folded tensor is the parameter's
    entries at constant positions, written; the identity transfer reproduces the source and
    validates."""
    import numpy as np
    import onnxruntime as ort
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
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", validate=True)
    assert r.plan.summary()["written_fraction"] == 1.0
    assert any("entries of the parameter" in e and "attention_biases" in e for s in r.plan.slots for e in s.evidence)

    def run(p):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    want = run(tmp_path / "s.onnx")
    assert np.abs(run(tmp_path / "o.onnx") - want).max() <= 1e-5 * np.abs(want).max()

def test_a_folded_sinusoidal_buffer_is_a_constant_said_so(tmp_path):
    """GPT-J's sinusoidal position buffer, gathered at the exported positions and folded by the
    dynamo exporter at its defaults (``gather``, read by a Split): its folded_from names a module
    path no node marks, which alone was taken for a parameter ("a parameter read by Split",
    99.9% written). The exported program's graph signature lists it as a (non-persistent)
    buffer: a constant computed from a buffer, so the transfer writes 100% of the parameters,
    keeps the table's bytes and reproduces the source."""
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
    sinusoid = [s for s in r.plan.slots if "a constant: computed by the exporter from" in s.reason
                and "embed_positions" in s.reason]
    assert sinusoid and all(s.status == "left" and not s.parameter for s in sinusoid)
    assert not [s for s in r.plan.slots if s.parameter], [s.reason for s in r.plan.slots if s.parameter]
    assert r.plan.summary()["written_fraction"] == 1.0
    arrays = [{t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / f"{n}.onnx").graph.initializer}
              for n in ("t", "o")]
    for s in sinusoid:
        np.testing.assert_array_equal(arrays[1][s.initializer], arrays[0][s.initializer])


@pytest.mark.parametrize("dynamo", [True, False])
def test_a_sinusoidal_parameter_is_a_parameter(tmp_path, dynamo):
    """Whisper's encoder position embedding is a parameter initialized with sines and cosines:
    a fresh target's holds them, a trained-like source's does not. Judged a constant by its
    values (GPT-J's buffer holds the same kind), it kept the target's sinusoids (identity off by
    2e-2, reported 100%); the exporter's graph signature, not the values, tells a buffer from
    a parameter."""
    import numpy as np
    import onnxruntime as ort
    from tests.corpus.identity_survey import _inputs, families

    make, kind = families()["whisper_encoder"]
    feeds = _inputs(kind)
    torch.manual_seed(0)
    src = make().eval()
    perturb(src)
    torch.manual_seed(1)
    for name, m in (("s", src), ("t", make().eval())):
        with torch.no_grad():
            torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs=dict(feeds), dynamo=dynamo,
                              **({} if dynamo else {"input_names": list(feeds)}))
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    assert r.plan.summary()["written_fraction"] == 1.0

    def run(p):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return sess.run(None, {i.name: v.numpy() for i, v in zip(sess.get_inputs(), feeds.values())})[0]
    want = run(tmp_path / "s.onnx")
    assert np.abs(run(tmp_path / "o.onnx") - want).max() <= 1e-5 * np.abs(want).max()


def test_a_constant_folded_from_an_activations_shape_is_no_parameter(tmp_path):
    """RecurrentGemma at the dynamo defaults: ``zeros_like`` of an activation is folded into a
    tensor of zeros whose only named source is the op ``mul_8``. A lone source the exporter
    does not name was taken for a module tensor, so the zeros were "a parameter read by
    ScatterElements", counted as 512 weight elements left. The exported program's signature
    names every module tensor, and not this one: it is a constant."""
    transformers = pytest.importorskip("transformers")

    def make():
        return transformers.RecurrentGemmaModel(transformers.RecurrentGemmaConfig(
            num_hidden_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=1, head_dim=8, lru_width=32, attention_window_size=8,
            block_types=["recurrent", "attention"], use_cache=False)).eval()

    ids = torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]])
    torch.manual_seed(0)
    src = make()
    perturb(src)
    torch.manual_seed(1)
    for name, m in (("s", src), ("t", make())):
        with torch.no_grad():
            torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs={"input_ids": ids}, dynamo=True)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    zeros = [s for s in r.plan.slots if s.initializer.startswith("zeros_like")]
    assert zeros and all(not s.parameter and "a constant: computed by the exporter" in s.reason for s in zeros)
    assert not any(s.parameter and "ScatterElements" in s.reason for s in r.plan.slots)
