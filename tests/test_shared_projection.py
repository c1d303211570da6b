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


def test_a_normalized_table_is_transferred_and_named_as_its_own(tmp_path):
    """DeBERTa-v2 normalizes its relative-position embeddings with a LayerNorm before the shared
    projections read them: the table is that LayerNorm's input, a parameter all the same. It
    was left ("a parameter read by LayerNormalization"): identity off by 1e-4. Through
    transfer_module it was named the LayerNorm's weight (a (16, 16) tensor for (16,)), and the
    transfer refused: it is named as its own, and the shrink loads strictly."""
    import numpy as np

    from front_onnx.torch import transfer_module
    torch.manual_seed(0)
    src = _deberta(32, 4, 2)
    perturb(src)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _deberta(32, 4, 2), dict(TEXT))
    with torch.no_grad():
        want, got = src(**TEXT).logits, module(**TEXT).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert not [s for s in plan.slots if s.status == "left" and (s.role or s.parameter)]
    torch.manual_seed(2)
    small, plan = transfer_module(src, _deberta(16, 2, 1), dict(TEXT))
    assert plan.summary()["written_fraction"] == 1.0
    table = src.deberta.encoder.rel_embeddings.weight.detach().numpy()
    taken = small.deberta.encoder.rel_embeddings.weight.detach().numpy()
    assert all(np.isin(row, table[r]).all() for r, row in enumerate(taken))  # each row from its own bucket
