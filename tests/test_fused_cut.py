"""Fused q|k|v projections whose parts are not equal outer thirds.

Phi-3 with grouped-query attention slices its qkv output into q, k, v of unequal widths, and
GPT-BigCode (multi-query) splits it into q | k | v of unequal widths (a Split, or a
SplitToSequence in transfer_module's export). Each piece is read as its own projection (a
view of the stored weight, with its own heads), as separate q, k and v projections are: a
shrink takes whole query heads, the key/value heads of their groups, the output
projection's columns of those query heads, and the bias entries of the rows it took.

Falcon (multi-query) reshapes it into (query heads + 2, head size) and slices the heads: its
pieces are cut from a factor of the output, which the pieces do not express, so its out axis
is copied, never resampled (resampling it as one axis would give the target's k rows from
the source's q). A shrink leaves that projection with the reason and writes the rest.

Bloom and GPT-NeoX reshape it into (heads, 3, head size) or (heads, 3 x head size): the
parts sit inside each head (``Layout.interleaved``), and a shrink selects whole heads, the
same ones in q, k and v, that the output projection reads.

Phi-3 with as many key/value heads as query heads slices it into equal thirds, which the
slot analysis does not count as parts but the dimension flow does: resampled part by part.

timm's BEiT adds a q | 0 | v bias it concatenates in the graph (its k part a zero buffer), or
that the dynamo exporter folds into one tensor: its parts are the fused projection's (3 outer
parts), and each part's bias follows that part's rows.

A transfer into the same architecture reproduces the source for all of them.
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
    if name == "gpt_bigcode":  # multi-query: q (heads x head size) | k (head size) | v (head size)
        return transformers.GPTBigCodeForCausalLM(transformers.GPTBigCodeConfig(
            vocab_size=64, n_embd=d, n_layer=layers, n_head=heads, n_positions=32, multi_query=True, use_cache=False))
    if name == "bloom":
        return transformers.BloomForCausalLM(transformers.BloomConfig(
            vocab_size=64, hidden_size=d, n_layer=layers, n_head=heads, use_cache=False))
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
        max_position_embeddings=32, rotary_pct=0.25, use_cache=False))


FUSED = {"phi3": "qkv_proj", "falcon": "query_key_value", "gpt_bigcode": "c_attn", "bloom": "query_key_value", "gpt_neox": "query_key_value",
         "beit": "attn.qkv"}
TEXT = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12], [3, 3, 40, 8, 19, 22, 5, 6]]),
        "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _feeds(name: str):
    return IMAGE if name == "beit" else TEXT


def _logits(model, name: str) -> torch.Tensor:
    with torch.no_grad():
        return model(IMAGE) if name == "beit" else model(**TEXT).logits


INTERLEAVED = ("bloom", "gpt_neox")
ATTENTION = {"bloom": "transformer.h.0.self_attention.", "gpt_neox": "gpt_neox.layers.0.attention."}


def _source(name: str):
    torch.manual_seed(0)
    src = _model(name, 32, 4, 2, 2).eval()
    perturb(src)
    return src


@pytest.mark.parametrize("name", ["falcon"])
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


# (q, k, v) widths of the 2-layer source (4 query heads of 8, 2 key/value heads for Phi-3, one for
# GPT-BigCode) and of the 1-layer target (2 query heads, 1 key/value head), and each model's
# attention output projection
PIECES = {"phi3": ((32, 16, 16), (16, 8, 8)), "gpt_bigcode": ((32, 8, 8), (16, 8, 8))}
OUTPUT_PROJECTION = {"phi3": "model.layers.0.self_attn.o_proj.weight", "gpt_bigcode": "transformer.h.0.attn.c_proj.weight"}
QKV = {"phi3": "model.layers.0.self_attn.qkv_proj.", "gpt_bigcode": "transformer.h.0.attn.c_attn."}
EMBEDDING = {"phi3": "model.embed_tokens.weight", "gpt_bigcode": "transformer.wte.weight"}


def _check_pieces(name: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The target's fused weight (``a``) against the source's (``b``), [out, in]: each target
    piece's rows come from the same piece of the source, q in whole heads, k and v the
    key/value head of those query heads' group, the output projection's columns the query
    heads' units, the bias (where there is one) the entries of the rows taken, and every piece
    the residual units the embedding took (one order of the residual width, whatever reads it)."""
    (sq, sk, _), (tq, tk, _) = PIECES[name]
    rows = np.array(_rows_from(a[QKV[name] + "weight"], b[QKV[name] + "weight"]))
    residual = _rows_from(a[EMBEDDING[name]].T, b[EMBEDDING[name]].T)
    assert _rows_from(a[QKV[name] + "weight"].T, b[QKV[name] + "weight"].T) == residual
    q, k, v = rows[:tq], rows[tq:tq + tk], rows[tq + tk:]
    assert (q < sq).all() and ((sq <= k) & (k < sq + sk)).all() and (sq + sk <= v).all()  # q from q, k from k ...
    assert (v - sk == k).all()                                   # the same key/value head and units in k and v
    heads = q.reshape(-1, 8)
    assert (heads % 8 == np.arange(8)).all() and len(set(heads[:, 0])) == len(heads)  # whole query heads
    groups = 4 // (sk // 8)                                      # query heads per key/value head in the source
    assert {h // 8 // groups for h in heads[:, 0]} == {(k[0] - sq) // 8}  # the group of the key/value head kept
    assert _rows_from(a[OUTPUT_PROJECTION[name]].T, b[OUTPUT_PROJECTION[name]].T) == list(q)
    if QKV[name] + "bias" in b:
        np.testing.assert_array_equal(a[QKV[name] + "bias"], b[QKV[name] + "bias"][rows])


@pytest.mark.parametrize("kw", [{"method": "select", "align": "none"}, {}])
@pytest.mark.parametrize("name", sorted(PIECES))
def test_pieces_of_unequal_widths_are_resampled_apart(name, kw):
    """Phi-3 (grouped-query) and GPT-BigCode (multi-query), 4 query heads into 2, through
    transfer_module: every weight written (the fused projection was left: 'cuts this output
    into pieces'), each piece from its own piece of the source (``_check_pieces``), as
    Weight Selection (evenly spaced) and at the defaults."""
    src = _source(name)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _model(name, 16, 2, 1, 1).eval(), _feeds(name), **kw)
    assert plan.summary()["written_fraction"] == 1.0
    assert any("pieces of unequal widths" in e for s in plan.slots for e in s.evidence)
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (module, src))
    _check_pieces(name, a, b)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(PIECES))
def test_pieces_through_the_exporters_defaults(tmp_path, name, exporter):
    """The same pieces in files exported at each exporter's defaults (a fresh target's zero
    q|k|v biases merged into one tensor by the exporter): a transfer into the same
    architecture reproduces the source with every element written (the pieces of one bias
    are assembled per layer: they were once written into separate copies, identity off by
    5e-4), and a shrink takes each piece from its own piece of the source."""
    import front_onnx
    from tests.conftest import run_onnx
    src = _source(name)
    torch.manual_seed(1)
    for tag, m in (("source", src), ("same", _model(name, 32, 4, 2, 2).eval()),
                   ("small", _model(name, 16, 2, 1, 1).eval())):
        torch.onnx.export(m, (), kwargs=dict(TEXT), f=str(tmp_path / f"{tag}.onnx"), dynamo=exporter == "dynamo",
                          input_names=None if exporter == "dynamo" else list(TEXT))
    same = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "same.onnx", tmp_path / "out.onnx")
    assert same.plan.summary()["written_fraction"] == 1.0
    import onnxruntime as ort
    names = [i.name for i in ort.InferenceSession(str(tmp_path / "out.onnx")).get_inputs()]
    feeds = {k: TEXT[k].numpy() if k in TEXT else np.array(0, np.int64) for k in names}  # legacy: logits_to_keep
    want, got = (run_onnx(tmp_path / f, feeds)[0] for f in ("source.onnx", "out.onnx"))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    small = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "small.onnx", tmp_path / "small_out.onnx",
                                method="select", align="none")
    assert small.plan.summary()["written_fraction"] == 1.0
    a = front_onnx.weights(tmp_path / "small_out.onnx").tensors
    b = {k: v.numpy() for k, v in src.state_dict().items()}
    _check_pieces(name, a, b)


@pytest.mark.parametrize("name", sorted(FUSED))
def test_the_same_architecture_still_reproduces_the_source(name):
    src = _source(name)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _model(name, 32, 4, 2, 2).eval(), _feeds(name))
    want, got = _logits(src, name), _logits(module, name)
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-5, err
    assert np.isclose(plan.summary()["written_fraction"], 1.0, atol=0.01)


def _rows_from(target: np.ndarray, source: np.ndarray) -> list[int]:
    """For each target row, the one source row holding all its values (perturbed weights are
    distinct, and a shrink selects a subset of each source row's columns)."""
    found = []
    for row in target:
        hits = [r for r in range(source.shape[0]) if np.isin(row, source[r]).all()]
        assert len(hits) == 1, hits
        found.append(hits[0])
    return found


@pytest.mark.parametrize("name", INTERLEAVED)
def test_parts_inside_heads_are_selected_head_by_head(name):
    """4 heads of 8 into 2 (residual 32 -> 16). As Weight Selection (evenly spaced): exactly
    heads 0 and 2 of every part and every other residual unit. At the defaults (strongest
    units first): every target row of a part comes from that part, one source head per
    target head, the same units in q, k and v, and the output projection reads those."""
    src = _source(name)
    b = {k: v.numpy() for k, v in src.state_dict().items()}
    pre = ATTENTION[name]
    source_w = b[pre + "query_key_value.weight"]
    for kw in ({"method": "select", "align": "none"}, {}):
        torch.manual_seed(1)
        module, plan = transfer_module(src, _model(name, 16, 2, 1, 1).eval(), _feeds(name), **kw)
        assert plan.summary()["written_fraction"] == 1.0
        a = {k: v.numpy() for k, v in module.state_dict().items()}
        w, dense = a[pre + "query_key_value.weight"], a[pre + "dense.weight"]
        if kw:
            cols = np.arange(0, 32, 2)
            np.testing.assert_array_equal(w, source_w.reshape(4, 3, 8, 32)[[0, 2]][..., cols].reshape(48, 16))
            np.testing.assert_array_equal(a[pre + "query_key_value.bias"],
                                          b[pre + "query_key_value.bias"].reshape(4, 3, 8)[[0, 2]].reshape(48))
            np.testing.assert_array_equal(dense, b[pre + "dense.weight"][cols].reshape(16, 4, 8)[:, [0, 2]].reshape(16, 16))
            continue
        rows = np.array(_rows_from(w, source_w)).reshape(2, 3, 8)        # target (head, part, unit) -> source row
        head, part, unit = rows // 24, rows // 8 % 3, rows % 8
        assert (part == np.arange(3)[None, :, None]).all()                # q from q, k from k, v from v
        assert all(len(set(head[h].ravel())) == 1 for h in range(2))      # one source head per target head
        assert (unit == unit[:, :1, :]).all()                             # the same units in every part
        columns = _rows_from(dense.T, b[pre + "dense.weight"].T)          # the output projection's in axis
        assert columns == list((head[:, 0, :] * 8 + unit[:, 0, :]).ravel())


def _parts_and_biases(w: np.ndarray, source_w: np.ndarray, biases: dict[str, np.ndarray],
                      source_biases: dict[str, np.ndarray]) -> None:
    """Each target row of a 3-part [3 x out, in] projection comes from the same part of the
    source, the same heads and units in every part, and each part's bias (``biases``: part
    name -> values) holds the entries of the source rows its part's rows came from."""
    rows = np.array(_rows_from(w, source_w))
    n, src_n = w.shape[0] // 3, source_w.shape[0] // 3
    part, within = rows.reshape(3, n) // src_n, rows.reshape(3, n) % src_n
    assert (part == np.arange(3)[:, None]).all()
    assert (within == within[:1]).all()
    for k, name in enumerate(biases):
        np.testing.assert_array_equal(biases[name], source_biases[name][within[k]])


@pytest.mark.parametrize("kw", [{"method": "select", "align": "none"}, {}])
def test_a_bias_assembled_from_parts_follows_its_part(kw):
    """timm's BEiT (4 heads of 8 into 2) through transfer_module, whose export keeps the Concat
    of q_bias, the zero k_bias buffer and v_bias: the qkv weight is 3 outer parts (the Add of
    the assembled bias hid them: the weight was left), and q_bias and v_bias hold the entries
    of the q and v rows the weight took (they were resampled as tokens of their own)."""
    src = _source("beit")
    torch.manual_seed(1)
    module, plan = transfer_module(src, _model("beit", 16, 2, 1, 1).eval(), IMAGE, **kw)
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.numpy() for k, v in m.state_dict().items()} for m in (module, src))
    pre = "blocks.0.attn."
    k_part = np.zeros(16, np.float32)
    _parts_and_biases(a[pre + "qkv.weight"], b[pre + "qkv.weight"],
                      {"q": a[pre + "q_bias"], "k": k_part, "v": a[pre + "v_bias"]},
                      {"q": b[pre + "q_bias"], "k": np.zeros(32, np.float32), "v": b[pre + "v_bias"]})
    if kw:  # as Weight Selection: heads 0 and 2, every other residual unit
        np.testing.assert_array_equal(a[pre + "q_bias"], b[pre + "q_bias"].reshape(4, 8)[[0, 2]].reshape(16))


def test_a_folded_q_0_v_bias_is_the_projections_bias(tmp_path):
    """At the dynamo exporter's defaults BEiT's q | 0 | v bias is folded into one tensor
    computed from q_bias, the k_bias buffer and v_bias. It is the qkv projection's bias: an
    identity transfer reproduces the source with every element written (it was left, identity
    off by 1.8e-4, and the projection said to have a zero bias), and a shrink gives each part's
    bias the entries of its part's rows."""
    import front_onnx
    from tests.conftest import run_onnx
    src = _source("beit")
    torch.manual_seed(1)
    for tag, m in (("source", src), ("same", _model("beit", 32, 4, 2, 2).eval()),
                   ("small", _model("beit", 16, 2, 1, 1).eval())):
        torch.onnx.export(m, (IMAGE,), str(tmp_path / f"{tag}.onnx"), dynamo=True)
    same = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "same.onnx", tmp_path / "out.onnx")
    assert same.plan.summary()["written_fraction"] == 1.0
    assert not any("zero (or absent) in the source" in s.reason for s in same.plan.slots)
    want, got = (run_onnx(tmp_path / f, {"x": IMAGE.numpy()})[0] for f in ("source.onnx", "out.onnx"))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "small.onnx", tmp_path / "small_out.onnx",
                        method="select", align="none")
    a = front_onnx.weights(tmp_path / "small_out.onnx").tensors
    b = {k: v.numpy() for k, v in src.state_dict().items()}
    bias = next(v for k, v in a.items() if v.shape == (48,))     # the folded bias of the one target block
    source_bias = np.concatenate([b["blocks.0.attn.q_bias"], np.zeros(32, np.float32), b["blocks.0.attn.v_bias"]])
    _parts_and_biases(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"],
                      {"q": bias[:16], "k": bias[16:32], "v": bias[32:]},
                      {"q": source_bias[:32], "k": source_bias[32:64], "v": source_bias[64:]})


def test_the_legacy_export_of_gpt_neox_is_read_alike(tmp_path):
    """The legacy exporter cuts GPT-NeoX's (heads, 3 x head size) with Slices whose bounds it
    computes from the input's Shape: those lengths are known, so the parts are found inside
    the heads there too. Into 4 heads of 4 (head size 8 -> 4), strongest units first: each
    target row of a part comes from that part of the same source head, with the same units
    in q, k and v (read as heads of 3 x 8 units, the strongest 12 mixed the parts)."""
    import front_onnx
    src = _source("gpt_neox")
    torch.manual_seed(1)
    for tag, m in (("source", src), ("target", _model("gpt_neox", 16, 4, 1, 1).eval())):
        torch.onnx.export(m, (), kwargs=dict(TEXT), f=str(tmp_path / f"{tag}.onnx"), dynamo=False)
    front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "target.onnx", tmp_path / "out.onnx")
    got = front_onnx.weights(tmp_path / "out.onnx").tensors[ATTENTION["gpt_neox"] + "query_key_value.weight"]
    rows = np.array(_rows_from(got, src.state_dict()[ATTENTION["gpt_neox"] + "query_key_value.weight"].numpy()))
    rows = rows.reshape(4, 3, 4)                                           # target (head, part, unit)
    head, part, unit = rows // 24, rows // 8 % 3, rows % 8
    assert (part == np.arange(3)[None, :, None]).all()
    assert (head == head[:, :1, :1]).all() and (unit == unit[:, :1, :]).all()


def test_equal_thirds_sliced_from_the_output_are_parts():
    """Multi-head Phi-3 (4 heads, 4 key/value heads) into 2 heads: its q|k|v slices of equal
    widths are outer parts, each target row from its own part, the same source heads and
    units in q, k and v."""
    torch.manual_seed(0)
    src = _model("phi3", 32, 4, 4, 2).eval()
    perturb(src)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _model("phi3", 16, 2, 2, 1).eval(), TEXT)
    assert plan.summary()["written_fraction"] == 1.0
    w = module.state_dict()["model.layers.0.self_attn.qkv_proj.weight"].numpy()
    rows = np.array(_rows_from(w, src.state_dict()["model.layers.0.self_attn.qkv_proj.weight"].numpy()))
    rows = rows.reshape(3, 2, 8)                                           # target (part, head, unit)
    part, head, unit = rows // 32, rows // 8 % 4, rows % 8
    assert (part == np.arange(3)[:, None, None]).all()
    assert (head == head[:1]).all() and (unit == unit[:1]).all() and (head == head[:, :, :1]).all()


def test_a_rotary_embedding_slicing_one_key_head_is_not_a_cut():
    """StableLM's partial rotary embedding slices each head's units. A multi-query target's key
    projection is one head, so the slice falls on its whole output, which was taken for q|k|v
    of unequal widths and left ('no source unit aligns'): one head's units are a head size."""
    torch.manual_seed(0)

    def stablelm(d: int, heads: int, kv: int, layers: int):
        return transformers.StableLmForCausalLM(transformers.StableLmConfig(
            vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv, max_position_embeddings=32, use_cache=False)).eval()

    src = stablelm(32, 4, 2, 2)
    perturb(src)
    _, plan = transfer_module(src, stablelm(16, 2, 1, 1), TEXT)
    assert plan.summary()["written_fraction"] == 1.0
    assert not any("unequal widths" in e for s in plan.slots for e in s.evidence)


def test_parts_inside_heads_of_int4_weights_are_selected_head_by_head(tmp_path):
    """GPT-NeoX quantized to int4 (onnxruntime's MatMulNBits) on both sides, 4 heads of 16 into
    2: the target's dequantized qkv is heads 0 and 2 of each part (within the int4 error of
    two roundings), not the rows of outer thirds (what a reading of q|k|v as outer parts
    selected before: the target's k rows from the source's q)."""
    import onnx

    import front_onnx
    from front_onnx.analysis import weight_slots
    from front_onnx.onnxio import load_model
    nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")

    def neox(d: int, heads: int, layers: int):
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
            max_position_embeddings=32, rotary_pct=0.25, use_cache=False)).eval()

    torch.manual_seed(0)
    src = neox(64, 4, 2)
    perturb(src)
    torch.manual_seed(1)
    for tag, m in (("source", src), ("target", neox(32, 2, 1))):
        torch.onnx.export(m, (), kwargs=dict(TEXT), f=str(tmp_path / f"{tag}.onnx"), dynamo=True)
        q = nbits.MatMulNBitsQuantizer(onnx.load(tmp_path / f"{tag}.onnx"), block_size=32, is_symmetric=True)
        q.process()
        q.model.save_model_to_file(str(tmp_path / f"{tag}4.onnx"), False)
    front_onnx.transfer(tmp_path / "source4.onnx", tmp_path / "target4.onnx", tmp_path / "out.onnx",
                        method="select", align="none")
    m = load_model(tmp_path / "out.onnx")
    s = next(s for s in weight_slots(m).slots if s.quant is not None and s.shape[1] == 96)
    got = s.quant.decode(m.array, s.initializer)                                   # [in 32, out 96]
    w = src.state_dict()[ATTENTION["gpt_neox"] + "query_key_value.weight"].numpy()  # [out 192, in 64]
    want = w.reshape(4, 3, 16, 64)[[0, 2]][..., ::2].reshape(96, 32).T
    outer = w.reshape(3, 64, 64)[:, ::2][..., ::2].reshape(96, 32).T
    err, err_outer = np.abs(got - want).max(), np.abs(got - outer).max()
    assert err < 0.2 * np.abs(want).max() and err < err_outer / 4, (err, err_outer)


@pytest.mark.parametrize("export,kw", [("transfer_module", {"method": "select", "align": "none"}),
                                       ("dynamo defaults", {})])
def test_parts_inside_groups_of_heads_keep_whole_heads(tmp_path, export, kw):
    """CodeGen stores its q|v|k inside each of 4 blocks of heads ((blocks, q|v|k, heads per
    block x head size); the dynamo optimizer reshapes each part (blocks, 16) into (heads, 8)
    directly, the unoptimized export splits and merges). 8 heads of 8 into 4: every target
    head's q, v and k rows are one whole source head's, the one the output projection's
    columns read (read as 4 heads of 16, a target head took half of two source heads' units,
    and the output projection another head's)."""
    import front_onnx

    def codegen(d: int, heads: int, layers: int):
        return transformers.CodeGenForCausalLM(transformers.CodeGenConfig(
            vocab_size=64, n_embd=d, n_head=heads, n_layer=layers, n_inner=2 * d, n_positions=32, n_ctx=32,
            rotary_dim=4, use_cache=False)).eval()

    torch.manual_seed(0)
    src = codegen(64, 8, 2)
    perturb(src)
    b = {k: v.numpy() for k, v in src.state_dict().items()}
    pre = "transformer.h.0.attn."
    torch.manual_seed(1)
    if export == "transfer_module":
        module, plan = transfer_module(src, codegen(32, 4, 1), TEXT, **kw)
        a = {k: v.numpy() for k, v in module.state_dict().items()}
    else:
        for tag, m in (("s", src), ("t", codegen(32, 4, 1))):
            torch.onnx.export(m, (), kwargs=dict(TEXT), f=str(tmp_path / f"{tag}.onnx"), dynamo=True)
        plan = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", **kw).plan
        a = front_onnx.weights(tmp_path / "o.onnx").tensors
    assert plan.summary()["written_fraction"] == 1.0
    rows = np.array(_rows_from(a[pre + "qkv_proj.weight"], b[pre + "qkv_proj.weight"]))
    part, head = rows // 16 % 3, rows // 48 * 2 + rows % 16 // 8           # source: 4 blocks of (q|v|k, 2 heads, 8)
    target = np.arange(96)                                                  # target: 4 blocks of (q|v|k, 1 head, 8)
    assert (part == target // 8 % 3).all()                                      # q from q, v from v, k from k
    heads = head.reshape(4, 3, 8)
    assert (heads == heads[:, :1, :1]).all()                                    # one source head per target head
    units = (rows % 8).reshape(4, 3, 8)
    assert (units == units[:, :1, :]).all() and (np.sort(units, axis=-1) == np.arange(8)).all()  # whole, alike
    columns = np.array(_rows_from(a[pre + "out_proj.weight"].T, b[pre + "out_proj.weight"].T))
    assert (columns == (heads[:, 0, :] * 8 + units[:, 0, :]).ravel()).all()     # the units the output reads
