"""One parameter read by several layers stays one tensor. DeBERTa-v2 with shared attention
keys applies its query (and key) projection to the hidden states and to the relative
position embeddings; a shrink wrote the two uses differently and split the tensor in two
(`val_21` and `val_21__front1`, 0.09 apart), so the graph no longer tied them and `weights`
named one and dropped the other. The tensor now keeps its first use's value, and the plan
says so."""
from __future__ import annotations

import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

import front_onnx  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}


def _deberta(d: int, heads: int, layers: int):
    return transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(
        vocab_size=64, hidden_size=d, num_attention_heads=heads, num_hidden_layers=layers, intermediate_size=2 * d,
        max_position_embeddings=32, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False)).eval()


def test_a_projection_two_paths_share_stays_one_tensor(tmp_path):
    torch.manual_seed(0)
    src = _deberta(32, 4, 2)
    perturb(src)
    torch.manual_seed(1)
    for name, m in (("s", src), ("t", _deberta(16, 2, 1))):
        torch.onnx.export(m, (), str(tmp_path / f"{name}.onnx"), kwargs=dict(TEXT), dynamo=True)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    assert any(n.startswith("one tensor:") for n in r.plan.notes), r.plan.notes
    weights = [i for i in onnx.load(str(tmp_path / "o.onnx")).graph.initializer if len(i.dims) == 2]
    assert not [i.name for i in weights if "__front" in i.name]
    named = front_onnx.weights(tmp_path / "o.onnx")
    assert "deberta.encoder.layer.0.attention.self.query_proj.weight" in named.tensors
    assert not [u for u in named.unnamed if "query_proj.weight" in u[1] or "key_proj.weight" in u[1]]
