"""Mixture-of-experts weights (HF transformers' experts, exported with the ``batched_mm``
implementation: torch exports neither the default grouped matmul nor the eager loop over the
experts a batch routes to).

Each expert stack (``gate_up_proj`` (experts, 2 x intermediate, hidden), ``down_proj``
(experts, hidden, intermediate)) is gathered per token at the router's indices (a GatherND
at computed indices) and read by a batched MatMul: one projection per expert, canonical
(out, in, experts), the experts axis an index (the target must have as many). It was "a
parameter read by GatherND", left: 18% of a tiny Mixtral written, identity off by 6.8e-2.
A shrink takes the same units in every expert, the gate and up parts' same units, the
output projection's columns of those units, and the residual units every other tensor takes.
An embedding (a rank-2 table looked up by Gather) stays an embedding.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402
from tests.test_fused_cut import TEXT, _rows_from  # noqa: E402


def _mixtral(d: int, heads: int, kv: int, layers: int):
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
        use_cache=False, experts_implementation="batched_mm")).eval()


def _source():
    torch.manual_seed(0)
    src = _mixtral(32, 4, 2, 2)
    perturb(src)
    return src


def _reproduces(src, fresh):
    """Transfer ``src`` into ``fresh`` (its architecture): every element written, the source's
    logits reproduced; the plan."""
    module, plan = transfer_module(src, fresh, TEXT)
    assert plan.summary()["written_fraction"] == 1.0
    with torch.no_grad():
        want, got = src(**TEXT).logits, module(**TEXT).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
    return plan


def test_the_same_architecture_reproduces_the_source():
    src = _source()
    torch.manual_seed(1)
    plan = _reproduces(src, _mixtral(32, 4, 2, 2))
    stacks = [s for s in plan.slots if "experts." in s.initializer and not s.absent]
    assert len(stacks) == 4 and all(s.status == "written" and s.role == "linear.weight" for s in stacks)


def test_a_shrink_takes_the_same_units_in_every_expert():
    """Width 32 into 16, 4 experts each, as Weight Selection: for every expert, gate and up rows
    of the same intermediate units (every other one), the down projection's columns those
    units, and every stack's residual axis the units the embedding took (the defaults, with
    units in order of importance: GPT-OSS's test below)."""
    src = _source()
    torch.manual_seed(1)
    module, plan = transfer_module(src, _mixtral(16, 2, 1, 1), TEXT, method="select", align="none")
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (module, src))
    residual = _rows_from(a["model.embed_tokens.weight"].T, b["model.embed_tokens.weight"].T)
    p = "model.layers.0.mlp."
    units = None
    for e in range(4):
        gate_up, down = a[p + "experts.gate_up_proj"][e], a[p + "experts.down_proj"][e]
        rows = _rows_from(gate_up, b[p + "experts.gate_up_proj"][e])
        gate, up = rows[:32], rows[32:]
        assert all(g < 64 for g in gate) and [u - 64 for u in up] == gate      # gate from gate, up from up
        assert units is None or gate == units                                  # the same units in every expert
        units = gate
        assert _rows_from(down.T, b[p + "experts.down_proj"][e].T) == gate
        assert _rows_from(gate_up.T, b[p + "experts.gate_up_proj"][e].T) == residual
        assert _rows_from(down, b[p + "experts.down_proj"][e]) == residual
    np.testing.assert_array_equal(a[p + "gate.weight"], b[p + "gate.weight"][:, residual])  # the router: every expert
    assert units == list(range(0, 64, 2))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_experts_through_the_exporters_defaults(tmp_path, exporter):
    """File to file at each exporter's defaults: the same architecture reproduces the source,
    every element written (the legacy exporter looks the embedding up with a Gather that has
    one consumer: still an embedding)."""
    import front_onnx
    from tests.conftest import run_onnx
    src = _source()
    torch.manual_seed(1)
    for tag, m in (("source", src), ("target", _mixtral(32, 4, 2, 2))):
        torch.onnx.export(m, (), kwargs=dict(TEXT), f=str(tmp_path / f"{tag}.onnx"), dynamo=exporter == "dynamo",
                          input_names=None if exporter == "dynamo" else list(TEXT))
    r = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "target.onnx", tmp_path / "out.onnx")
    assert r.plan.summary()["written_fraction"] == 1.0
    import onnxruntime as ort
    names = [i.name for i in ort.InferenceSession(str(tmp_path / "out.onnx")).get_inputs()]
    feeds = {k: TEXT[k].numpy() if k in TEXT else np.array(0, np.int64) for k in names}
    want, got = (run_onnx(tmp_path / f, feeds)[0] for f in ("source.onnx", "out.onnx"))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _gpt_oss(d: int, heads: int, kv: int, layers: int):
    return transformers.GptOssForCausalLM(transformers.GptOssConfig(
        vocab_size=64, hidden_size=d, intermediate_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"][:layers], use_cache=False,
        experts_implementation="batched_mm")).eval()


def test_experts_biases_follow_their_projections():
    """GPT-OSS: each expert's biases (gathered per token, added after its batched MatMul) are
    the projection's biases: the same architecture is reproduced with every element written
    (they were left: identity off by 2.7e-2). Its gate and up units are interleaved (taken
    with step 2: gate, up, gate, up, ...): two pieces of the projection, each a view of every
    other unit, so a shrink keeps each unit's gate and up together, with their biases, and
    the down projection's rows and bias columns of the same units."""
    torch.manual_seed(0)
    src = _gpt_oss(32, 4, 2, 2)
    perturb(src)
    torch.manual_seed(1)
    _reproduces(src, _gpt_oss(32, 4, 2, 2))
    torch.manual_seed(1)  # the defaults: units in order of importance (Mixtral's test: as Weight Selection)
    small, plan = transfer_module(src, _gpt_oss(16, 2, 1, 1), TEXT)
    p = "model.layers.0.mlp.experts."
    assert all(s.status == "written" for s in plan.slots if s.initializer.startswith(p) and not s.absent)
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (small, src))
    for e in range(4):
        w, sw = a[p + "gate_up_proj"][e], b[p + "gate_up_proj"][e]                # (hidden, gate/up interleaved)
        gate, up = _rows_from(w[:, ::2].T, sw[:, ::2].T), _rows_from(w[:, 1::2].T, sw[:, 1::2].T)
        assert gate == up == _rows_from(a[p + "down_proj"][e], b[p + "down_proj"][e])
        bias, source_bias = a[p + "gate_up_proj_bias"][e], b[p + "gate_up_proj_bias"][e]
        np.testing.assert_array_equal(bias[::2], source_bias[::2][gate])
        np.testing.assert_array_equal(bias[1::2], source_bias[1::2][up])
        columns = _rows_from(a[p + "down_proj"][e].T, b[p + "down_proj"][e].T)
        np.testing.assert_array_equal(a[p + "down_proj_bias"][e], b[p + "down_proj_bias"][e][columns])
