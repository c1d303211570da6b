"""Alignment (``align=True``): the source's channel spaces permuted into a smooth order before
the transform. Checked against independent expectations: the aligned source computes the same
function (onnxruntime), an identity transfer with alignment still reproduces the source, the
order is smoother than the trained one, and a seriation of shuffled similar units restores
their neighbourhoods."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.analysis import weight_slots  # noqa: E402
from front_onnx.analysis.dimflow import dimension_flow  # noqa: E402
from front_onnx.numeric.seriation import roughness, smooth_order  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402
from front_onnx.validation.equivalence import aligned_source, same_function  # noqa: E402
from front_onnx.method.alignment import plan_alignment  # noqa: E402
from samples.export import export  # noqa: E402
from tests.conftest import small_vit  # noqa: E402
from samples.models import FAMILIES, perturb  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    export(small_vit(64, 4, 0, trained=True), torch.zeros(2, 1, 8, 8), d / "s.onnx")
    export(small_vit(64, 4, 1), torch.zeros(2, 1, 8, 8), d / "same.onnx")
    export(small_vit(32, 2, 2), torch.zeros(2, 1, 8, 8), d / "shrink.onnx")
    return d


def test_the_aligned_source_computes_the_same_function_and_is_smoother(pair, tmp_path):
    m = load_model(pair / "s.onnx")
    aligned, al = aligned_source(m, weight_slots(m), tmp_path)
    assert al.spaces, al.skipped
    assert any(sp.size == 64 and len(sp.members) > 20 for sp in al.spaces)   # the residual width, one order
    assert sum(sp.size == 128 for sp in al.spaces) == 4                      # each block's MLP hidden width
    assert all(sp.after < sp.before for sp in al.spaces)
    assert all(not np.array_equal(sp.order, np.arange(sp.size)) for sp in al.spaces)
    assert same_function(m, aligned)
    # each block's attention space: the fused qkv projection's parts (one permutation for all three)
    # and the output projection's input, permuted within each of the 4 heads of 16
    fused = [sp for sp in al.spaces if 3 in sp.parts.values()]
    assert len(fused) == 4, [(sp.id, sp.size, sp.parts) for sp in al.spaces]
    for sp in fused:
        assert sp.size == 64 and len(sp.members) == 3  # qkv weight, qkv bias, proj weight's in axis
        for j in range(4):
            assert sorted(sp.order[j * 16:(j + 1) * 16]) == list(range(j * 16, (j + 1) * 16))


def test_identity_with_alignment_reproduces_the_source(pair, tmp_path):
    res = front_onnx.transfer(pair / "s.onnx", pair / "same.onnx", tmp_path / "o.onnx", align=True, validate=True)
    agreement = next(c for c in res.validation.checks if c.name == "agreement")
    assert agreement.status == "pass", agreement.figure
    assert any(line.startswith("align: ") for line in res.detail_lines())


def test_alignment_changes_a_shrink(pair, tmp_path):
    import onnx
    from onnx import numpy_helper

    plain = front_onnx.transfer(pair / "s.onnx", pair / "shrink.onnx", tmp_path / "a.onnx")
    aligned = front_onnx.transfer(pair / "s.onnx", pair / "shrink.onnx", tmp_path / "b.onnx", align=True)
    assert plain.plan.summary()["written_fraction"] == aligned.plan.summary()["written_fraction"] == 1.0
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n", [40, 2000])   # the exact path and the low-rank one (> DENSE_MAX units)
def test_seriation_restores_shuffled_neighbourhoods(n):
    """Units along a smooth curve, shuffled: the order found puts each unit next to its
    neighbours on the curve (as the curve, up to direction)."""
    t = np.linspace(0, 1, n)
    units = np.stack([np.cos(2 * t), np.sin(2 * t), t, 1 - t], axis=1) + 1.0
    perm = np.random.default_rng(0).permutation(n)
    order = smooth_order(units[perm])
    recovered = perm[order]
    assert sorted(order.tolist()) == list(range(n))
    assert roughness(units[perm][order]) < 0.1 * roughness(units[perm])
    steps = np.abs(np.diff(recovered))
    assert np.mean(steps <= 2) > 0.9, recovered


def test_transfer_module_with_alignment_reproduces_the_source():
    """The torch path aligns the same way: a GPT into a fresh copy of itself reproduces it."""
    from front_onnx.torch import transfer_module
    from samples.models import GPTConfig

    cfg = dict(vocab=64, context=8, heads=4, mlp_ratio=4, dim=32, depth=2)
    torch.manual_seed(0)
    src = perturb(FAMILIES["gpt"][0](GPTConfig(**cfg)).eval(), seed=0)
    torch.manual_seed(1)
    tgt = FAMILIES["gpt"][0](GPTConfig(**cfg)).eval()
    x = torch.randint(0, 64, (2, 8))
    module, plan = transfer_module(src, tgt, (x,), align=True)
    assert any(n.startswith("align: ") and "no channel space" not in n for n in plan.notes)
    with torch.no_grad():
        assert float((module(x) - src(x)).abs().max()) < 1e-5


CORPUS = Path(__file__).parent / "corpus" / "models"


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_attention_spaces_are_aligned_head_by_head(exporter, tmp_path):
    """HF BERT (separate query/key/value projections): the query's and key's projections index
    one space, the value's and the output projection's input another (``dimflow``); each is
    permuted within heads only, and the aligned source computes the source's function."""
    m = load_model(CORPUS / "bert" / exporter / "source.onnx")
    gs = weight_slots(m)
    aligned, al = aligned_source(m, gs, tmp_path)
    names = {s.initializer: (s.module or "") for s in gs.slots}
    heads = 4  # the corpus BERT: width 32, 4 heads
    attention = []
    for sp in al.spaces:
        modules = {names.get(init, "") for init, _ in sp.members}
        if any(".attention." in x for x in modules) and not any("LayerNorm" in x for x in modules):  # not the residual
            attention.append((sp, modules))
    qk = [sp for sp, mods in attention if any("query" in x for x in mods) and any("key" in x for x in mods)]
    vo = [sp for sp, mods in attention if any("value" in x for x in mods) and any("output.dense" in x for x in mods)]
    assert len(qk) == 2 and len(vo) == 2, [(sp.id, mods) for sp, mods in attention]
    d = 32 // heads
    for sp in qk + vo:
        for j in range(heads):
            assert sorted(sp.order[j * d:(j + 1) * d]) == list(range(j * d, (j + 1) * d))  # heads stay whole
        assert not np.array_equal(sp.order, np.arange(sp.size))
    assert same_function(m, aligned)


def test_rotary_attention_is_left_in_its_order(tmp_path):
    """Llama's rotary embedding pairs units i and i + d/2 of each head: a permutation of the
    query space changes the function. One projection makes it and no weight reads it (the
    key's space is another, the rotary embedding between them), so it is left at planning,
    and the reason says so; the permuted source computes the same function."""
    m = load_model(CORPUS / "llama" / "dynamo" / "source.onnx")
    gs = weight_slots(m)
    aligned, al = aligned_source(m, gs, tmp_path)
    flow = dimension_flow(m.proto, gs)
    by_heads = {name.rsplit("/", 1)[0] for axes in flow.slot_axes.values() for name in axes if name and "/" in name}
    names = {s.initializer: (s.module or "") for s in gs.slots}
    qk = [sp for sp in flow.spaces if sp.id in by_heads
          and any("q_proj" in names.get(init, "") and k == 0 for init, k in sp.axes)]
    assert qk and all("a rotary embedding" in al.skipped.get(sp.id, "") for sp in qk), al.skipped
    assert not any(sp.id in by_heads for sp in al.spaces)
    assert same_function(m, aligned)


def test_depth_alignment_recovers_a_permuted_copy_of_a_block(tmp_path):
    """Block 1's MLP is block 0's with its hidden units shuffled: matched along depth, block 1's
    hidden units come out in block 0's aligned order, so the two blocks' fc1 weights are equal;
    without depth matching they are not (each block seriated alone). The function is kept."""
    m = small_vit(64, 3, 0, trained=True)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        b0, b1 = m.blocks[0].mlp, m.blocks[1].mlp
        b1.fc1.weight.copy_(b0.fc1.weight[perm])
        b1.fc1.bias.copy_(b0.fc1.bias[perm])
        b1.fc2.weight.copy_(b0.fc2.weight[:, perm])
    export(m, torch.zeros(2, 1, 8, 8), tmp_path / "s.onnx")
    src = load_model(tmp_path / "s.onnx")
    gs = weight_slots(src)
    fc1 = sorted({s.initializer for s in gs.slots if s.role == "linear.weight" and s.module
                  and s.module.endswith("mlp.fc1")}, key=lambda n: next(s.module for s in gs.slots if s.initializer == n))
    assert len(fc1) == 3
    for across, equal in ((True, True), (False, False)):
        aligned, al = aligned_source(src, gs, tmp_path / str(across), across_depth=across)
        w0, w1 = (np.asarray(aligned.array(n)) for n in fc1[:2])
        assert np.array_equal(w0, w1) == equal
        assert same_function(src, aligned)
        assert (sum(sp.depth_matched for sp in al.spaces) > 0) == across


def test_a_decoder_with_past_is_aligned_and_checked(tmp_path):
    """onnxruntime-genai's Llama: the function check runs one sequence (GroupQueryAttention with
    a past refuses batch > 1), and an identity transfer with alignment reproduces the source."""
    d = Path(__file__).parent / "corpus" / "deploy" / "genai_llama_fp32"
    src, same = next((d / "source").glob("*.onnx")), next((d / "same").glob("*.onnx"))
    res = front_onnx.transfer(src, same, tmp_path / "o.onnx", align=True, validate=True)
    assert any(line.startswith("align: ") and "permuted" in line for line in res.plan.notes), res.plan.notes
    agreement = next(c for c in res.validation.checks if c.name == "agreement")
    assert agreement.status == "pass", agreement.figure


class _Embedder(torch.nn.Module):
    """A residual width that is the model's output (normalized, as an embedding model's), read
    by a block too."""

    def __init__(self, width: int):
        super().__init__()
        self.a = torch.nn.Linear(6, width)
        self.b = torch.nn.Linear(width, 2 * width)
        self.c = torch.nn.Linear(2 * width, width)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x):
        y = self.a(x)
        return self.norm(y + self.c(torch.relu(self.b(y))))


def test_an_output_holding_an_internal_width_is_compared_in_the_permuted_order(tmp_path):
    """The hidden width is a graph output: the ordered copy gives it in the new order, which
    is the same function up to that order, so the space is ordered (it used to be left)."""
    torch.manual_seed(0)
    path = export(_Embedder(16).eval(), torch.randn(2, 6), tmp_path / "e.onnx", "dynamo")
    m = load_model(path)
    al_copy, al = aligned_source(m, weight_slots(m), tmp_path / "al", order="importance")
    hidden = [sp for sp in al.spaces if sp.size == 16]
    assert hidden and hidden[0].outputs and not al.skipped.get(hidden[0].id)
    x = {m.proto.graph.input[0].name: np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)}
    import onnxruntime as ort
    ref = ort.InferenceSession(str(path)).run(None, x)
    got = ort.InferenceSession(str(al_copy.path)).run(None, x)
    name, axis = hidden[0].outputs[0]
    assert [o.name for o in m.proto.graph.output] == [name]
    np.testing.assert_allclose(got[0], np.take(ref[0], hidden[0].order, axis=axis), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], ref[0])  # it was permuted


def test_an_output_width_the_target_keeps_is_not_permuted():
    """A base model's output is its residual stream (DistilBERT's last_hidden_state). Into a
    target of the same width whose MLPs are halved, the residual must stay in order (ordering
    it permuted the output's channels: relative error 1.6), while the MLP units are still
    taken strongest first: with the dropped units planted inert, the target computes the
    source's function."""
    transformers = pytest.importorskip("transformers")
    from front_onnx.torch import transfer_module

    def make(hidden: int):
        return transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=64, dim=32, n_heads=4, n_layers=2, hidden_dim=hidden, max_position_embeddings=16)).eval()
    torch.manual_seed(0)
    src = make(64)
    perturb(src)
    with torch.no_grad():
        for layer in src.transformer.layer:   # units 1, 3, 5, ... weak and read by nothing
            layer.ffn.lin1.weight[1::2] *= 0.01
            layer.ffn.lin1.bias[1::2] *= 0.01
            layer.ffn.lin2.weight[:, 1::2] = 0
    text = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}
    torch.manual_seed(1)
    tgt, plan = transfer_module(src, make(32), text)
    with torch.no_grad():
        want, got = src(**text).last_hidden_state, tgt(**text).last_hidden_state
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert any("the target keeps all of them" in n or "permuted" in n for n in plan.notes)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_classes_only_an_output_holds_are_never_reordered(exporter, tmp_path):
    """DeiT's two heads average into the logits; the slot analysis does not call their out
    axis classes, but nothing reads it besides the output: permuting it would permute the
    classes, so the function check still compares it as it is and leaves it."""
    d = Path(__file__).parent / "corpus" / "models" / "deit" / exporter
    m = load_model(d / "source.onnx")
    _, al = aligned_source(m, weight_slots(m), tmp_path / "al", order="importance")
    outs = {("head.weight", 0), ("head_dist.weight", 0)}   # the heads' out axes: the classes
    assert not any(outs & set(sp.members) for sp in al.spaces)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_the_strongest_attention_head_leads_in_both_of_its_spaces(exporter, tmp_path):
    """An HF BERT whose head 2 (of 4) is planted the strongest in q, k, v and o: the importance
    order puts it first in the query/key space and in the value/output space alike (an
    attention's heads move together), and the ordered source computes the same function."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=3)).eval()
    att = model.bert.encoder.layer[0].attention
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for lin in (att.self.query, att.self.key, att.self.value):
            lin.weight[16:24] *= 4
        att.output.dense.weight[:, 16:24] *= 4
    feeds = {"input_ids": torch.randint(0, 40, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    from front_onnx.torch.modules import export_module
    path = tmp_path / "b.onnx"
    export_module(model, feeds, path) if exporter == "dynamo" else \
        torch.onnx.export(model, (), path, kwargs=feeds, dynamo=False)
    m = load_model(path)
    aligned, al = aligned_source(m, weight_slots(m), tmp_path / "al", order="importance")
    paired = [sp for sp in al.spaces if sp.heads_with]
    assert len(paired) == 2 and {sp.heads_with for sp in paired} == {sp.id for sp in paired}
    for sp in paired:
        assert set(sp.order[:8] // 8) == {2}, sp.id
    assert "the heads of 1 attention strongest first" in al.describe()
    import onnxruntime as ort
    names = [i.name for i in ort.InferenceSession(str(path)).get_inputs()]   # in forward's order
    x = dict(zip(names, (v.numpy() for v in feeds.values())))
    ref = ort.InferenceSession(str(path)).run(None, x)[0]
    got = ort.InferenceSession(str(aligned.path)).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the fallback when the permuted source's outputs differ: heads back in place, units still ordered within
    from front_onnx.method.alignment import plan_alignment, write_aligned
    again = plan_alignment(m, weight_slots(m), order="importance")
    for sp in again.spaces:
        sp.heads_in_place()
    assert not any(sp.heads_with for sp in again.spaces)
    for sp in (s for s in again.spaces if s.id in {p.id for p in paired}):
        assert [set(sp.order[8 * h:8 * h + 8] // 8) for h in range(4)] == [{0}, {1}, {2}, {3}]
        assert not np.array_equal(sp.order, np.arange(32))
    kept = write_aligned(m, again, tmp_path / "kept")
    np.testing.assert_allclose(ort.InferenceSession(str(kept.path)).run(None, x)[0], ref, rtol=1e-4, atol=1e-5)


def _plant_strongest_head(model, name: str) -> tuple[int, str]:
    """Make head 2 of block 0 the strongest (its q, k, v units and the output projection's
    inputs x4); (head size, block 0's initializer prefix)."""
    with torch.no_grad():
        if name in ("vit", "deit"):   # timm: qkv [3C, C], proj [C, C] (out, in)
            att = model.blocks[0].attn
            d, width = att.head_dim, att.qkv.weight.shape[1]
            for part in range(3):
                att.qkv.weight[part * width + 2 * d:part * width + 3 * d] *= 4
            att.proj.weight[:, 2 * d:3 * d] *= 4
            return d, "blocks.0."
        att = model.transformer.h[0].attn  # HF GPT-2's Conv1D: c_attn [C, 3C], c_proj [C, C] (in, out)
        d, width = att.head_dim, att.embed_dim
        for part in range(3):
            att.c_attn.weight[:, part * width + 2 * d:part * width + 3 * d] *= 4
        att.c_proj.weight[2 * d:3 * d] *= 4
        return d, "h.0."


@pytest.mark.parametrize("name,exporter", [("vit", "dynamo"), ("vit", "legacy"), ("vit", "module"), ("deit", "dynamo"),
                                           ("gpt2", "dynamo"), ("gpt2", "legacy"), ("gpt2", "module")])
def test_a_fused_qkv_attention_orders_its_heads_as_one_space(name, exporter, tmp_path):
    """A fused qkv projection per block with head 2 of block 0 planted the strongest: the
    corpus's timm ViT and DeiT (the output reshaped into (3, heads, head size), then sliced:
    constants given as ``value_ints`` in ``transfer_module``'s unoptimized export, "module";
    DeiT's two classifier heads averaged into the output) and HF GPT-2 (its output cut by a
    Split, or by a SplitToSequence in the unoptimized export). That block's space holds q, k,
    v and the output projection's input, so it orders its heads alone, head 2 first; the
    ordered source computes the same function."""
    pytest.importorskip("transformers" if name == "gpt2" else "timm")
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, build_module, example_inputs, export as corpus_export

    family = CORPUS_FAMILIES[name]
    model = build_module(family, "source")
    d, block0 = _plant_strongest_head(model, name)
    path = tmp_path / "v.onnx"
    feeds = example_inputs(family)
    if exporter == "module":
        from front_onnx.torch.modules import export_module
        export_module(model, {k: torch.from_numpy(v) for k, v in feeds.items()}, path)
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert name != "gpt2" or "SplitToSequence" in ops
    else:
        corpus_export(model, family, exporter, path)
    m = load_model(path)
    aligned, al = aligned_source(m, weight_slots(m), tmp_path / "al", order="importance")
    fused = [sp for sp in al.spaces if sp.heads_with == sp.id]
    assert fused and all(sp.parts for sp in fused)
    first = [sp for sp in fused if any(block0 in init for init, _ in sp.members)]
    assert len(first) == 1 and set(first[0].order[:d] // d) == {2}
    assert f"the heads of {len(fused)} attention" in al.describe()
    import onnxruntime as ort
    ref = ort.InferenceSession(str(path)).run(None, feeds)[0]
    got = ort.InferenceSession(str(aligned.path)).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "deit", "gpt2", "hf_vit", "vit"])
def test_every_planned_space_holds_in_the_legacy_exports(name, tmp_path):
    """The legacy exporter reads some residual-width parameters through views (GPT-2's
    ``wpe[:T]``, a class token expanded to the batch, BERT's token-type row gathered): those
    read every unit one to one, so the residual width is ordered like any space, and every
    space the plan finds holds the function check (outputs compared here with onnxruntime)."""
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, example_inputs

    path = CORPUS / name / "legacy" / "source.onnx"
    m = load_model(path)
    gs = weight_slots(m)
    planned = plan_alignment(m, gs, order="importance")
    viewed = {s.initializer for s in gs.slots if s.view is not None}
    assert any(init in viewed for sp in planned.spaces for init, _ in sp.members)
    aligned, al = aligned_source(m, gs, tmp_path / "al", order="importance")
    assert [sp.id for sp in al.spaces] == [sp.id for sp in planned.spaces], al.skipped
    import onnxruntime as ort
    feeds = example_inputs(CORPUS_FAMILIES[name])
    ref = ort.InferenceSession(str(path)).run(None, feeds)
    got = ort.InferenceSession(str(aligned.path)).run(None, feeds)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_tied_embedding_joins_the_spaces_it_indexes(exporter, tmp_path):
    """T5 reads one embedding table in the encoder, in the decoder and as its output layer:
    the encoder's and the decoder's residual widths are one space for a permutation (two
    orders would permute the table twice). Joined, every planned space holds the function
    check; the encoder's hidden states (an output) come out in the joined space's order."""
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, example_inputs

    path = CORPUS / "t5" / exporter / "source.onnx"
    m = load_model(path)
    gs = weight_slots(m)
    planned = plan_alignment(m, gs, order="importance")
    joined = [sp for sp in planned.spaces if "+" in sp.id]
    assert len(joined) == 1 and len(joined[0].id.split("+")) == 2
    aligned, al = aligned_source(m, gs, tmp_path / "al", order="importance")
    assert [sp.id for sp in al.spaces] == [sp.id for sp in planned.spaces], al.skipped
    import onnxruntime as ort
    feeds = example_inputs(CORPUS_FAMILIES["t5"])
    ref = ort.InferenceSession(str(path)).run(None, feeds)
    got = ort.InferenceSession(str(aligned.path)).run(None, feeds)
    names = [o.name for o in m.proto.graph.output]
    for sp in al.spaces:
        for name, axis in sp.outputs:
            j = names.index(name)
            ref[j] = np.take(ref[j], sp.order, axis=axis)
    assert any(sp.outputs for sp in al.spaces)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,exporter", [("t5", "dynamo"), ("t5", "legacy"), ("swin", "dynamo"), ("swin", "legacy")])
def test_a_position_bias_table_takes_its_attentions_head_order(name, exporter, tmp_path):
    """T5 (one relative-position bias table per stack, added in every layer) and Swin (one
    per block): the table's heads axis is the attention's heads axis, so sorting the heads
    permutes the table too, one order for every attention that adds it. Some attentions
    still cannot be sorted (T5's decoder bias is computed in the legacy export; Swin's
    residual width fails on its own): they are checked group by group, and the rest stay
    sorted. Every sorted attention's order is its table's; the function holds (onnxruntime)."""
    from tests.corpus.build import FAMILIES as CORPUS_FAMILIES, example_inputs

    path = CORPUS / name / exporter / "source.onnx"
    m = load_model(path)
    aligned, al = aligned_source(m, weight_slots(m), tmp_path / "al", order="importance")
    sorted_spaces = [sp for sp in al.spaces if sp.heads_with]
    tables = [sp for sp in al.spaces if sp.heads_group >= 0 and not sp.heads_with]
    assert sorted_spaces and tables
    for table in tables:
        for sp in sorted_spaces:
            if sp.heads_group == table.heads_group:  # units by head: the table's order, head by head
                d = sp.size // table.size
                np.testing.assert_array_equal(sp.order[::d] // d, table.order)
    assert any(not np.array_equal(t.order, np.arange(t.size)) for t in tables)
    import onnxruntime as ort
    feeds = example_inputs(CORPUS_FAMILIES[name])
    names = [o.name for o in m.proto.graph.output]
    ref = ort.InferenceSession(str(path)).run(None, feeds)
    for sp in al.spaces:
        for out, axis in sp.outputs:
            ref[names.index(out)] = np.take(ref[names.index(out)], sp.order, axis=axis)
    got = ort.InferenceSession(str(aligned.path)).run(None, feeds)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_spaces_one_projection_makes_and_no_weight_reads_are_not_planned(name, tmp_path):
    """Llama's and Qwen2's query, key and value spaces (rotary embedding, grouped-query
    attention: each is made by one projection and read by no weight) would only fail the
    function check, one full-model check each: they are left at planning, with the reason,
    and every space planned holds."""
    path = CORPUS / name / "dynamo" / "source.onnx"
    m = load_model(path)
    gs = weight_slots(m)
    planned = plan_alignment(m, gs, order="importance")
    left = [k for k, why in planned.skipped.items() if why.startswith("one projection makes it")]
    layers = 3 if name == "llama" else 2
    assert len(left) == 3 * layers
    for sp in dimension_flow(m.proto, gs).spaces:
        if sp.id in left:
            assert len(sp.factors) == 1 and len(sp.factors[0]) == 2   # split into heads: q, k and v
    _, al = aligned_source(m, gs, tmp_path, order="importance")
    assert [sp.id for sp in al.spaces] == [sp.id for sp in planned.spaces]
