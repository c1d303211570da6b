"""A fresh target's identical layers merged by the exporter: said, and how to avoid it.

GPT-NeoX's parallel block normalizes its input twice (attention and MLP norms). In a fresh
model both norms are the same function of the same input (scale 1, bias 0), and the dynamo
exporter's optimizer merges them into one node, so the target's graph has one norm where the
trained source has two: the source's MLP norm has nowhere to go, and the target cannot compute
the source's function. The plan says so (which source unit, and the likely cause); a target
exported with ``optimize=False`` keeps both norms and reproduces the source.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}


def _neox() -> torch.nn.Module:
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, use_cache=False)).eval()


def test_a_norm_the_exporter_merged_in_the_target_is_reported(tmp_path):
    torch.manual_seed(0)
    src = _neox()
    perturb(src)
    torch.onnx.export(src, (), kwargs=dict(TEXT), f=str(tmp_path / "source.onnx"), dynamo=True)
    feeds = {k: v.numpy() for k, v in TEXT.items()}
    want = ort.InferenceSession(str(tmp_path / "source.onnx")).run(None, feeds)[0]
    errors = {}
    for optimize in (True, False):
        torch.manual_seed(1)
        torch.onnx.export(_neox(), (), kwargs=dict(TEXT), f=str(tmp_path / f"t{optimize}.onnx"), dynamo=True,
                          optimize=optimize)
        r = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / f"t{optimize}.onnx", tmp_path / f"o{optimize}.onnx")
        notes = [n for n in r.plan.notes if n.startswith("not transferred")]
        got = ort.InferenceSession(str(tmp_path / f"o{optimize}.onnx")).run(None, feeds)[0]
        errors[optimize] = float(np.abs(got - want).max() / np.abs(want).max())
        if optimize:
            assert len(notes) == 1 and "(norm.bias, norm.scale)" in notes[0] and "optimize=False" in notes[0], notes
        else:
            assert not notes, notes
    assert errors[False] <= 1e-6 < errors[True], errors
