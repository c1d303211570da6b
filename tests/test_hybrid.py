"""``method="hybrid"``: selection where the target is no larger than the source, FRONT's
transform where it grows, and the importance order that makes the selection keep the
strongest units. Checked against independent expectations:

- the importance order of planted units: a source whose strongest hidden units are known
  (scaled up in every tensor that indexes them) shrinks to a target holding exactly those;
- the order is a permutation within each head, strongest first;
- a growth is byte-identical to ``method="front"`` (nothing is selected, nothing reordered);
- identity reproduces the source; a shrink's entries are the source's, bit for bit; a
  learngene extracted with ``align="importance"`` and initialized gives what ``transfer``
  writes (to its float32 spectrum's rounding); the real HF BERT shrink loads strictly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.method.learngene import Learngene  # noqa: E402
from front_onnx.numeric.seriation import group_order, importance_order, unit_shares  # noqa: E402
from front_onnx.torch import transfer_module  # noqa: E402
from tests.conftest import initializer_arrays  # noqa: E402

CORPUS = Path(__file__).parent / "corpus" / "models"


def test_importance_order_is_strongest_first_within_each_group():
    rng = np.random.default_rng(0)
    scale = rng.permutation(np.linspace(0.1, 3.0, 24))
    vec = rng.normal(size=(24, 7)) * scale[:, None] / np.sqrt(7)
    share = unit_shares(vec, 0)
    norms = np.linalg.norm(vec, axis=1)
    np.testing.assert_allclose(share, norms ** 2 / np.sum(norms ** 2), rtol=1e-12)
    np.testing.assert_allclose(unit_shares(vec.T.copy(), 1), share, rtol=1e-12)  # the units on another axis
    order = importance_order(share, groups=3)
    for g in range(3):
        part = order[g * 8:(g + 1) * 8]
        assert sorted(part.tolist()) == list(range(g * 8, (g + 1) * 8))   # units stay in their group
        assert np.all(np.diff(norms[part]) <= 0)                          # strongest first


def test_groups_ordered_by_their_summed_shares():
    """Heads by importance: each score vector's per-head share, summed over the vectors (a
    vector of large scores has no more say than one of small scores), strongest head first;
    the units of each head stay together, in their own order."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, 12), 1000 * rng.uniform(0, 1, 12)   # two spaces of 3 heads of 4
    ga, gb = a.reshape(3, 4).sum(1) / a.sum(), b.reshape(3, 4).sum(1) / b.sum()
    expect = sorted(range(3), key=lambda h: -(ga[h] + gb[h]))
    heads = group_order([a, b], 3)
    assert heads.tolist() == expect
    order = importance_order(a, 3, heads)
    for k, h in enumerate(heads):
        part = order[4 * k:4 * k + 4]
        assert sorted(part.tolist()) == list(range(4 * h, 4 * h + 4)) and np.all(np.diff(a[part]) <= 0)


def _chain(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).eval()


def test_the_planted_strongest_units_are_the_ones_kept():
    """Hidden 16 -> 8: the 8 hidden units scaled up 4x in every tensor that indexes them are
    the target's units, whole (each target unit is a source unit: its row of the first layer,
    its bias, its column of the second, unchanged to float32 rounding)."""
    src = _chain(16, 0)
    planted = np.array([1, 3, 4, 7, 10, 11, 13, 15])
    gain = np.ones(16)
    gain[planted] = 4.0
    with torch.no_grad():
        g = torch.tensor(gain, dtype=torch.float32)
        src[0].weight.mul_(g[:, None])
        src[0].bias.copy_(torch.linspace(0.1, 0.2, 16) * g)
        src[2].weight.mul_(g[None, :])
    w1, b1, w2 = (t.detach().numpy().copy() for t in (src[0].weight, src[0].bias, src[2].weight))
    module, plan = transfer_module(src, _chain(8, 1), (torch.zeros(2, 6),), method="hybrid")
    got1, gotb, got2 = (t.detach().numpy() for t in (module[0].weight, module[0].bias, module[2].weight))
    # which source unit each target unit is (the learngene's round trip may move the last bit)
    units = [int(np.argmin(np.abs(w1 - row).max(axis=1))) for row in got1]
    assert sorted(units) == planted.tolist()
    np.testing.assert_allclose(got1, w1[units], rtol=0, atol=1e-6)
    np.testing.assert_allclose(gotb, b1[units], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got2, w2[:, units], rtol=0, atol=1e-6)
    assert any("importance order" in op for s in plan.slots for op in s.operations)


def _bn_chain(channels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.BatchNorm2d(channels),
                               torch.nn.ReLU(), torch.nn.Conv2d(channels, 4, 1)).eval()


def test_batchnorm_channels_are_ranked_by_what_they_pass_on():
    """Conv -> BatchNorm -> ReLU -> Conv, 16 channels -> 8. The normalization removes the
    scale of the weights that produce a channel, so the kept channels are the 8 of largest
    BatchNorm scale (what reaches the next layer: the next convolution reads every channel with
    weights of one norm), not the 8 decoys whose producing weights and running variance are 10x
    and 100x larger (ranking by those picks the decoys)."""
    src = _bn_chain(16, 0)
    planted = np.array([0, 2, 5, 6, 9, 12, 14, 15])
    decoy = np.setdiff1d(np.arange(16), planted)
    gamma = np.full(16, 0.3)
    gamma[planted] = 3.0 + 0.01 * np.arange(8)
    with torch.no_grad():
        src[0].weight[decoy] *= 10.0
        src[1].weight.copy_(torch.tensor(gamma, dtype=torch.float32))
        src[1].bias.fill_(0.05)
        src[3].weight.div_(src[3].weight.flatten(1).norm(dim=0)[None, :, None, None])  # every channel read alike
        src[1].running_mean.copy_(torch.linspace(-0.2, 0.2, 16))
        var = torch.ones(16)
        var[decoy] = 100.0
        src[1].running_var.copy_(var)
    module, _ = transfer_module(src, _bn_chain(8, 1), (torch.zeros(2, 1, 6, 6),), method="hybrid")
    got = module[1].weight.detach().numpy()
    units = [int(np.argmin(np.abs(gamma - g))) for g in got]
    assert sorted(units) == planted.tolist()
    np.testing.assert_allclose(got, gamma[units], rtol=0, atol=1e-6)
    w2 = src[3].weight.detach().numpy()
    np.testing.assert_allclose(module[3].weight.detach().numpy(), w2[:, units], rtol=0, atol=1e-6)
    np.testing.assert_allclose(module[1].running_var.detach().numpy(), var.numpy()[units], rtol=1e-6)


def test_growth_is_the_transform_byte_for_byte(vits, tmp_path):
    h = front_onnx.transfer(vits / "s.onnx", vits / "grow.onnx", tmp_path / "h.onnx", method="hybrid")
    front_onnx.transfer(vits / "s.onnx", vits / "grow.onnx", tmp_path / "f.onnx", method="front")
    assert not any(n.startswith("align:") for n in h.plan.notes)   # nothing selected: the source is not reordered
    a, b = initializer_arrays(tmp_path / "h.onnx"), initializer_arrays(tmp_path / "f.onnx")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_identity_reproduces_the_source(vits, tmp_path):
    res = front_onnx.transfer(vits / "s.onnx", vits / "same.onnx", tmp_path / "o.onnx", method="hybrid",
                              validate=True)
    agreement = next(c for c in res.validation.checks if c.name == "agreement")
    assert agreement.status == "pass", agreement.figure


def test_a_shrink_selects_whole_units_of_the_reordered_source(vits, tmp_path):
    """Every written tensor of the shrink is a selection from the (importance-ordered) source:
    each of its entries is an entry of the same tensor of the source, bit for bit (selection
    copies; it does not go through the spectrum)."""
    res = front_onnx.transfer(vits / "s.onnx", vits / "shrink.onnx", tmp_path / "o.onnx", method="hybrid")
    assert res.plan.summary()["written_fraction"] == 1.0
    assert any(n.startswith("align: ") and "strongest units first" in n for n in res.plan.notes)
    src, out = initializer_arrays(vits / "s.onnx"), initializer_arrays(tmp_path / "o.onnx")
    shared = [k for k in out if k in src and out[k].dtype.kind == "f" and out[k].size > 1]
    assert len(shared) > 20
    for k in shared:
        assert np.isin(out[k], src[k]).all(), k  # source entries, not blends


def test_a_learngene_ordered_by_importance_initializes_what_transfer_writes(vits, tmp_path):
    """The same units as ``transfer``, to the rounding of the learngene's float32 spectrum."""
    gene = front_onnx.extract(vits / "s.onnx", align="importance", output=tmp_path / "g.safetensors")
    assert gene.unit_order == "importance"
    assert Learngene.load(tmp_path / "g.safetensors").unit_order == "importance"
    front_onnx.initialize(vits / "shrink.onnx", tmp_path / "g.safetensors", tmp_path / "i.onnx", method="hybrid")
    front_onnx.transfer(vits / "s.onnx", vits / "shrink.onnx", tmp_path / "t.onnx", method="hybrid")
    a, b = initializer_arrays(tmp_path / "i.onnx"), initializer_arrays(tmp_path / "t.onnx")
    assert a.keys() == b.keys()
    for k in a:  # transfer copies the source's units; the learngene holds them as a float32 spectrum
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6 * max(float(np.abs(b[k]).max()), 1e-30), err_msg=k)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_hf_bert_shrink_selects_everything(exporter, tmp_path):
    """The corpus BERT (trained source, fresh narrower and shallower target, torch's default
    exports): everything written, by selection of the strongest units."""
    d = CORPUS / "bert" / exporter
    res = front_onnx.transfer(d / "source.onnx", d / "shrink.onnx", tmp_path / "o.onnx", method="hybrid")
    assert res.plan.summary()["written_fraction"] == 1.0
    ops = [op for s in res.plan.slots if s.status == "written" for op in s.operations]
    assert any("importance order" in op for op in ops)


def test_hf_bert_module_shrink_loads_strictly():
    """``transfer_module`` with the real HF BertModel: the target loads strictly (inside) and
    each of its word-embedding columns is one of the source's, selected, not blended."""
    pytest.importorskip("transformers")
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, build_module, example_inputs

    family = CORPUS_FAMILIES["bert"]
    src, tgt = build_module(family, "source"), build_module(family, "shrink")
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(family).items()}
    module, plan = transfer_module(src, tgt, feeds, method="hybrid")
    assert plan.summary()["written_fraction"] == 1.0
    a = module.state_dict()["bert.embeddings.word_embeddings.weight"].numpy()
    b = src.state_dict()["bert.embeddings.word_embeddings.weight"].numpy()
    assert all(min(np.abs(a[:, j] - b[:, k]).max() for k in range(b.shape[1])) <= 1e-6 for j in range(a.shape[1]))


def test_fewer_larger_heads_take_whole_source_heads():
    """A BERT of 4 heads of 8 into one of 1 head of 16 (MiniLM's 12x32 -> 3x64 in small): the
    target head is two whole source heads side by side (evenly spaced: heads 0 and 2), so each
    query unit still meets its own key unit; checked against the HF module's tensors
    directly, after a strict load."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=40, max_position_embeddings=16, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    src = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **cfg)).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tgt = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=1, **cfg)).eval()
    feeds = {"input_ids": torch.randint(0, 40, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    module, plan = transfer_module(src, tgt, feeds, method="select", align="none")
    assert plan.summary()["written_fraction"] == 1.0
    assert any("whole heads" in op for s in plan.slots for op in s.operations)
    a, b = module.state_dict(), src.state_dict()
    heads = np.r_[0:8, 16:24]          # source heads 0 and 2, side by side
    resid = np.arange(16) * 2          # evenly spaced residual units
    pre = "bert.encoder.layer.0.attention."
    for name in ("self.query", "self.key", "self.value"):
        w, bias = b[pre + name + ".weight"].numpy(), b[pre + name + ".bias"].numpy()
        np.testing.assert_array_equal(a[pre + name + ".weight"].numpy(), w[heads][:, resid], err_msg=name)
        np.testing.assert_array_equal(a[pre + name + ".bias"].numpy(), bias[heads], err_msg=name)
    w = b[pre + "output.dense.weight"].numpy()
    np.testing.assert_array_equal(a[pre + "output.dense.weight"].numpy(), w[resid][:, heads])


def _source_columns(a: np.ndarray, b: np.ndarray) -> list[int]:
    """For each column of ``a``, the column of ``b`` it equals (it must equal one)."""
    out = []
    for j in range(a.shape[1]):
        d = np.abs(b - a[:, j:j + 1]).max(axis=0)
        assert d.min() == 0.0, f"column {j} is none of the source's"
        out.append(int(d.argmin()))
    return out


@pytest.mark.parametrize("width,heads", [(16, 4), (16, 2)])
def test_hf_gpt2_fused_qkv_parts_take_the_units_the_output_projection_reads(width, heads):
    """HF GPT-2 (one Conv1D c_attn for q|k|v, cut by ``split``: a SplitToSequence in
    ``transfer_module``'s export) 4 heads of 8 into 4 heads of 4 (head size halved) and into
    2 heads of 8, at the defaults (strongest units and heads): after a strict load, the
    target's q, k and v columns each take the same source units, the units c_proj reads, whole
    heads of the source, and every tensor equals the source's at those units."""
    transformers = pytest.importorskip("transformers")
    from tests.corpus.build import perturb

    def gpt2(d: int, h: int, layers: int) -> torch.nn.Module:
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=64, n_positions=16, n_embd=d, n_inner=2 * d, n_layer=layers, n_head=h, use_cache=False,
            bos_token_id=0, eos_token_id=0)).eval()

    torch.manual_seed(0)
    src = gpt2(32, 4, 2)
    perturb(src)
    module, plan = transfer_module(src, gpt2(width, heads, 1), {"input_ids": torch.randint(0, 64, (2, 8))})
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (module, src))
    resid = _source_columns(a["transformer.wte.weight"], b["transformer.wte.weight"])
    pre = "transformer.h.0.attn."
    w, bias = b[pre + "c_attn.weight"][resid], b[pre + "c_attn.bias"]
    parts = [_source_columns(a[pre + "c_attn.weight"][:, p * width:(p + 1) * width], w[:, p * 32:(p + 1) * 32])
             for p in range(3)]
    units = np.array(parts[0])
    assert parts[1] == parts[2] == list(units)
    d = width // heads
    assert all(len(set(units[h * d:(h + 1) * d] // 8)) == 1 for h in range(heads))  # whole source heads
    cols = np.concatenate([p * 32 + units for p in range(3)])
    np.testing.assert_array_equal(a[pre + "c_attn.weight"], w[:, cols])
    np.testing.assert_array_equal(a[pre + "c_attn.bias"], bias[cols])
    np.testing.assert_array_equal(a[pre + "c_proj.weight"], b[pre + "c_proj.weight"][units][:, resid])


def test_timm_vit_module_shrink_keeps_q_k_v_apart():
    """timm's ViT through ``transfer_module`` (its unoptimized export slices the fused qkv
    output with ``value_ints`` constants): the corpus source into its narrower, shallower
    target, after a strict load: the target's q, k and v rows each take the same source units
    of their own part, the units the output projection reads, whole heads."""
    pytest.importorskip("timm")
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, build_module, example_inputs

    family = CORPUS_FAMILIES["vit"]
    src, tgt = build_module(family, "source"), build_module(family, "shrink")
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(family).items()}
    module, plan = transfer_module(src, tgt, feeds)
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (module, src))
    width, source_width = a["cls_token"].shape[-1], b["cls_token"].shape[-1]
    resid = _source_columns(a["cls_token"].reshape(1, -1), b["cls_token"].reshape(1, -1))
    w = b["blocks.0.attn.qkv.weight"][:, resid]
    parts = [_source_columns(a["blocks.0.attn.qkv.weight"][p * width:(p + 1) * width].T,
                             w[p * source_width:(p + 1) * source_width].T) for p in range(3)]
    units = np.array(parts[0])
    assert parts[1] == parts[2] == list(units)
    d = src.blocks[0].attn.head_dim
    assert all(len(set(units[h * d:(h + 1) * d] // d)) == 1 for h in range(width // d))  # whole source heads
    rows = np.concatenate([p * source_width + units for p in range(3)])
    np.testing.assert_array_equal(a["blocks.0.attn.qkv.weight"], w[rows])
    np.testing.assert_array_equal(a["blocks.0.attn.qkv.bias"], b["blocks.0.attn.qkv.bias"][rows])
    np.testing.assert_array_equal(a["blocks.0.attn.proj.weight"], b["blocks.0.attn.proj.weight"][resid][:, units])


SELECT_EVENLY = {"method": "select", "align": "none"}


@pytest.mark.parametrize("source_kv,heads,kv,kw", [
    (2, 4, 2, {}),               # 4 query heads per group -> 2: the first 4 would all be group 0's
    (4, 4, 2, SELECT_EVENLY),    # evenly spaced over all 8 would put heads of groups 1, 3 with kv 0, 2
    (2, 2, 2, {}),               # multi-head target: one query head from each group (leading: both of group 0)
    (4, 2, 1, SELECT_EVENLY),    # multi-query target: both query heads from the group of the one kv head kept
])
def test_grouped_query_heads_stay_with_their_key_value_heads(source_kv, heads, kv, kw):
    """HF Llama with 8 query heads in grouped-query attention into fewer heads and groups, at
    the defaults and as Weight Selection: after a strict load, every target query head is a
    source query head of the group whose key/value head its target group's key/value head is."""
    transformers = pytest.importorskip("transformers")
    from tests.corpus.build import perturb

    def llama(h: int, k: int, layers: int) -> torch.nn.Module:
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=h,
            num_key_value_heads=k, head_dim=8, max_position_embeddings=32, use_cache=False)).eval()

    torch.manual_seed(0)
    src = llama(8, source_kv, 2)
    perturb(src)
    feeds = {"input_ids": torch.randint(1, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    module, plan = transfer_module(src, llama(heads, kv, 1), feeds, **kw)
    assert plan.summary()["written_fraction"] == 1.0
    a, b = module.state_dict(), src.state_dict()
    pre = "model.layers.0.self_attn."

    def source_heads(name: str) -> list[int]:  # each target head's source head (rows equal up to the residual's order)
        t, s = a[pre + name].numpy(), np.sort(b[pre + name].numpy(), axis=1)
        found = []
        for r in range(0, t.shape[0], 8):
            d = np.abs(s - np.sort(t[r])).max(axis=1)
            assert d.min() == 0.0
            found.append(int(d.argmin()) // 8)
        return found

    q, k, v = source_heads("q_proj.weight"), source_heads("k_proj.weight"), source_heads("v_proj.weight")
    assert k == v
    assert [h // (8 // source_kv) for h in q] == [k[j // (heads // kv)] for j in range(heads)], (q, k)
    if not kw:  # the query/key spaces feed a rotary embedding and are not ordered: the plan says so, truly
        ops = {s.initializer: s.operations for s in plan.slots}
        assert any(o.startswith("axis 0: select") and "(leading, the source's own order" in o
                   for o in ops[pre + "q_proj.weight"]), ops[pre + "q_proj.weight"]
        assert k == list(range(kv)) and q == sorted(q)                  # the first heads, in the source's order
        assert all("importance order" in o for o in ops["model.layers.0.mlp.gate_proj.weight"] if "select" in o)


def test_a_learngene_keeps_the_key_value_groups_of_grouped_query_heads(tmp_path):
    """The corpus Llama's query projections and the output projections' inputs hold 4 heads in
    2 key/value groups: their templates record it, through a save and a load."""
    gene = front_onnx.extract(CORPUS / "llama" / "dynamo" / "source.onnx", keep=1.0)
    grouped = {k: t.groups for k, t in gene.templates.items() if t.groups}
    assert grouped and all(g == {0: 2} or g == {1: 2} for g in grouped.values())
    back = Learngene.load(gene.save(tmp_path / "g.safetensors"))
    assert {k: t.groups for k, t in back.templates.items() if t.groups} == grouped


def test_a_learngene_records_which_axes_its_order_covers(tmp_path):
    """Ordered by importance, the corpus Llama's query and key heads stay in the source's
    order (a rotary embedding reads them): the learngene counts, per axis, the blocks in the
    order, through a save and a load, and a plan from it says what a plan from the model says."""
    src, tgt = CORPUS / "llama" / "dynamo" / "source.onnx", CORPUS / "llama" / "dynamo" / "shrink.onnx"
    gene = front_onnx.extract(src, keep=1.0, align="importance")
    ordered = {k: t.ordered for k, t in gene.templates.items()}
    assert all(len(n) == len(gene.templates[k].kinds) for k, n in ordered.items())
    assert any(0 in n for n in ordered.values()) and any(n and min(n) == gene.templates[k].depth
                                                         for k, n in ordered.items())
    path = gene.save(tmp_path / "g.safetensors")
    assert {k: t.ordered for k, t in Learngene.load(path).templates.items()} == ordered

    def ops(source) -> list[list[str]]:
        return sorted(s.operations for s in front_onnx.plan(source, tgt).slots if s.status == "written")
    from_model = ops(src)
    assert any("(leading, the source's own order" in o for x in from_model for o in x)
    assert ops(path) == from_model
