"""A tied parameter stored twice: the dynamo exporter's optimizer stores OPT's tied input
embedding and output layer (with a projection between the embedding width and the model's)
as the table and its transposed copy. An ordering of the source must permute both copies
alike: each was ordered with its own space, so the ONNX output stayed exact while the two
copies differed, and the torch module (which holds one) computed other logits (0.11
relative error after `weights` and a strict load)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

import front_onnx  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}


def _opt(ffn: int):
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=48, num_attention_heads=4, num_hidden_layers=1, ffn_dim=ffn,
        max_position_embeddings=16, word_embed_proj_dim=16, use_cache=False)).eval()


def test_two_stored_copies_of_a_tied_table_are_ordered_alike(tmp_path):
    torch.manual_seed(0)
    src = _opt(64)
    perturb(src)
    with torch.no_grad():   # MLP units 1, 3, 5, ... weak and read by nothing: the target can compute the source
        for layer in src.model.decoder.layers:
            layer.fc1.weight[1::2] *= 0.01
            layer.fc1.bias[1::2] *= 0.01
            layer.fc2.weight[:, 1::2] = 0
    torch.manual_seed(1)
    for name, m in (("s", src), ("t", _opt(32))):
        torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs=dict(TEXT), dynamo=True)
    front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    tgt = _opt(32)
    tgt.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         front_onnx.weights(tmp_path / "o.onnx").tensors.items()}, strict=True)
    with torch.no_grad():
        want, got = src(**TEXT).logits, tgt(**TEXT).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
