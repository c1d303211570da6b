"""A layer applied more than once, exported by the legacy exporter: ALBERT shares one layer
across its depth, and the exporter reads the shared weights through Identity nodes with one
consumer per application; in a fresh target it also shares equal tensors (zero biases, unit
norm scales) through Identity nodes. Such an Identity was a use of its own ("unsupported
consumer Identity"): the target's blocks lacked a norm and their biases, the identity transfer
was off by 1.4e-2 and the plan blamed differing structures. Each consumer is a use now."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import front_onnx  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}


def _albert(d: int, heads: int, layers: int):
    return transformers.AlbertForMaskedLM(transformers.AlbertConfig(
        vocab_size=64, embedding_size=16, hidden_size=d, num_attention_heads=heads, num_hidden_layers=layers,
        intermediate_size=2 * d, max_position_embeddings=32, hidden_act="gelu")).eval()


def test_a_layer_applied_twice_is_transferred_whole(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    src = _albert(32, 4, 2)
    perturb(src)
    torch.manual_seed(1)
    for name, m in (("s", src), ("t", _albert(32, 4, 2)), ("small", _albert(16, 2, 2))):
        with torch.no_grad():
            torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs=dict(TEXT), dynamo=False,
                              input_names=list(TEXT))
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    assert r.plan.summary()["written_fraction"] == 1.0
    assert not [n for n in r.plan.notes if n.startswith("not transferred")], r.plan.notes

    def run(p):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return sess.run(None, {i.name: v.numpy() for i, v in zip(sess.get_inputs(), TEXT.values())})[0]
    want = run(tmp_path / "s.onnx")
    assert np.abs(run(tmp_path / "o.onnx") - want).max() <= 1e-5 * np.abs(want).max()
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "small.onnx", tmp_path / "o2.onnx")
    assert r.plan.summary()["written_fraction"] == 1.0
    assert np.isfinite(run(tmp_path / "o2.onnx")).all()


def test_two_tokens_the_exporter_merged_in_the_target_are_written_apart(tmp_path):
    """HF DeiT's class and distillation tokens are both zero in a fresh model, so the legacy
    exporter stores one tensor and reads the second token through an Identity. Each token is
    a view (expanded to the batch) of that one tensor, given a different value from the
    trained source: the views were averaged into one stored tensor, so both target tokens
    were the mean of the source's (identity off by 7.2e-2, 100% written). The tensor is
    split instead, one per token: the identity transfer reproduces the source."""
    import onnxruntime as ort

    def deit():
        return transformers.DeiTModel(transformers.DeiTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)).eval()

    torch.manual_seed(0)
    src = deit()
    perturb(src)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for name, m in (("s", src), ("t", deit())):
        with torch.no_grad():
            torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=False)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    assert r.plan.summary()["written_fraction"] == 1.0

    def run(p):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    want, got = run(tmp_path / "s.onnx"), run(tmp_path / "o.onnx")
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-6
