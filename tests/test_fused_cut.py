"""Fused q|k|v projections whose parts the layout cannot express are copied, never resampled.

Phi-3 slices its qkv output into q, k, v of unequal widths (grouped-query attention),
Falcon (multi-query) reshapes it into (query heads + 2, head size) and slices the heads,
Bloom and GPT-NeoX reshape it into (heads, 3, head size) or (heads, 3 x head size), timm's
BEiT adds a q|0|v bias built in the graph (so no parts are seen): their parts are not equal
outer thirds, or not known to be. Resampling the out axis as one axis, or as three equal
parts, would give the target's k rows from the source's q (what happened before the
dimension flow marked these axes ``cut``). A shrink now leaves that projection with the
reason, writes the rest, and a transfer into the same architecture still reproduces the
source (the axis is copied).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _model(name: str, d: int, heads: int, kv: int, layers: int):
    if name == "beit":  # timm: q and v biases concatenated with zeros for k in the graph
        from timm.models.beit import Beit
        return Beit(img_size=32, patch_size=8, embed_dim=d, depth=layers, num_heads=heads, num_classes=10)
    if name == "phi3":
        return transformers.Phi3ForCausalLM(transformers.Phi3Config(
            vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv, max_position_embeddings=32, pad_token_id=0, use_cache=False))
    if name == "falcon":
        return transformers.FalconForCausalLM(transformers.FalconConfig(
            vocab_size=64, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
            new_decoder_architecture=False, multi_query=True, use_cache=False))
    if name == "bloom":
        return transformers.BloomForCausalLM(transformers.BloomConfig(
            vocab_size=64, hidden_size=d, n_layer=layers, n_head=heads, use_cache=False))
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
        max_position_embeddings=32, rotary_pct=0.25, use_cache=False))


FUSED = {"phi3": "qkv_proj", "falcon": "query_key_value", "bloom": "query_key_value", "gpt_neox": "query_key_value",
         "beit": "attn.qkv"}
TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12], [3, 3, 40, 8, 19, 22, 5, 6]]),
        "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _feeds(name: str):
    return IMAGE if name == "beit" else TEXT


def _logits(model, name: str) -> torch.Tensor:
    with torch.no_grad():
        return model(IMAGE) if name == "beit" else model(**TEXT).logits


def _source(name: str):
    torch.manual_seed(0)
    src = _model(name, 32, 4, 2, 2).eval()
    perturb(src)
    return src


@pytest.mark.parametrize("name", sorted(FUSED))
def test_a_shrink_leaves_the_fused_projection_and_says_why(name):
    src = _source(name)
    torch.manual_seed(1)
    tgt = _model(name, 16, 2, 1, 1).eval()
    fresh = {k: v.clone() for k, v in tgt.state_dict().items()}
    module, plan = transfer_module(src, tgt, _feeds(name))
    fused = [s for s in plan.slots if FUSED[name] in s.initializer and s.role == "linear.weight"]
    assert fused and all(s.status == "left" and "cuts this output into pieces" in s.reason for s in fused)
    state = module.state_dict()
    for k, v in state.items():
        if FUSED[name] in k and k.endswith("weight"):
            assert torch.equal(v, fresh[k]), k             # the target's own values, untouched
    assert plan.summary()["written_fraction"] >= 0.8        # the rest is written


@pytest.mark.parametrize("name", sorted(FUSED))
def test_the_same_architecture_still_reproduces_the_source(name):
    src = _source(name)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _model(name, 32, 4, 2, 2).eval(), _feeds(name))
    want, got = _logits(src, name), _logits(module, name)
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-5, err
    assert np.isclose(plan.summary()["written_fraction"], 1.0, atol=0.01)
