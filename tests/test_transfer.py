"""End-to-end acceptance of the foundation: sample families, both torch exporters, width and
depth, checked against onnxruntime outputs and the graph itself."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

import front_onnx
from front_onnx.onnxio import load_model
from tests.conftest import file_digests, run_onnx, sample_feeds

FAMILIES = ("vit", "resnet", "gpt")
EXPORTERS = ("dynamo", "legacy")


def _node_signature(model: onnx.ModelProto, renamed: set[str]) -> list[tuple]:
    """Nodes with everything but the names of split initializers (which the writer may rename)."""
    sig = []
    for n in model.graph.node:
        inputs = tuple("<init>" if x in renamed else x for x in n.input)
        sig.append((n.op_type, n.domain, n.name, inputs, tuple(n.output),
                    tuple(a.SerializeToString() for a in n.attribute),
                    tuple((p.key, p.value) for p in n.metadata_props)))
    return sig


def _float_init_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


@pytest.mark.parametrize("family,exporter", list(itertools.product(FAMILIES, EXPORTERS)))
def test_identity_reproduces_source(samples, tmp_path, family, exporter):
    """keep 1.0 into a fresh (deduplicated) copy of the same architecture gives the source's outputs."""
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, "base", exporter)
    out = tmp_path / "out.onnx"
    result = front_onnx.transfer(src, tgt, out, keep=1.0)
    assert result.plan.summary()["written_fraction"] == 1.0
    if family != "resnet":  # fresh LayerNorm scales are identical: the target shares them
        assert load_model(tgt).proto.graph.initializer  # sanity
        assert result.split > 0, "shared LayerNorm initializers must have been split"
    feeds = sample_feeds(family, src)
    want = run_onnx(src, feeds)[0]
    got = run_onnx(out, feeds)[0]
    before = run_onnx(tgt, feeds)[0]
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-5, f"relative error {err:.2e}"
    assert np.abs(before - want).max() / np.abs(want).max() > 1e-2  # the target really was different


SIZES = ("narrow", "wide", "shallow", "deep")


@pytest.mark.parametrize("family,pair,size", list(itertools.product(
    FAMILIES, list(itertools.product(EXPORTERS, EXPORTERS)), SIZES)))
def test_shrink_and_grow(samples, tmp_path, family, pair, size):
    src_exp, tgt_exp = pair
    src = samples.get(family, "base", src_exp, source=True)
    tgt = samples.get(family, size, tgt_exp)
    out = tmp_path / "out.onnx"
    before = file_digests(src, tgt)
    result = front_onnx.transfer(src, tgt, out)
    assert file_digests(src, tgt) == before, "an input file changed"

    onnx.checker.check_model(str(out), full_check=True)
    y = run_onnx(out, sample_feeds(family, out))[0]
    assert np.all(np.isfinite(y))

    target, written = onnx.load(str(tgt), load_external_data=False), onnx.load(str(out), load_external_data=False)
    renamed = _float_init_names(target) ^ _float_init_names(written)
    renamed |= {t.name for t in target.graph.initializer if t.data_type in (1, 10, 11, 16)}
    assert _node_signature(target, renamed) == _node_signature(written, renamed)
    assert [o.name for o in target.graph.output] == [o.name for o in written.graph.output]
    assert written.opset_import == target.opset_import and written.ir_version == target.ir_version

    summary = result.plan.summary()
    for s in result.plan.slots:
        assert s.status in ("written", "left") or (s.status == "absent" and s.absent and not s.counted)
        if s.status != "written":
            assert s.reason, f"{s.initializer} left without a reason"
    # written, or (a growth kept expanded) the target's own values of units the source lacks
    assert (summary["written_elements"] + summary.get("own_elements", 0)) / summary["weight_elements"] >= 0.9, \
        result.plan.left


def test_written_values_differ_from_target_and_follow_source(samples, tmp_path):
    """FRONT (``method="front"``): a shrunk target's weights come from the source: the same
    low-frequency content."""
    src = samples.get("vit", "base", "dynamo", source=True)
    tgt = samples.get("vit", "narrow", "dynamo")
    out = tmp_path / "o.onnx"
    front_onnx.transfer(src, tgt, out, method="front")
    a, b = load_model(src), load_model(out)
    # position table [1, 17, 64] -> [1, 17, 32]: with ortho and keep 1, the first DCT
    # coefficients along the feature axis are kept (up to the per-tensor statistics).
    from scipy.fft import dct

    s = np.asarray(a.array("pos_embed"), dtype=np.float64)[0]
    t = np.asarray(b.array("pos_embed"), dtype=np.float64)[0]
    zs, zt = (s - s.mean()) / s.std(), (t - t.mean()) / s.std()
    cs = dct(dct(zs, axis=0, norm="ortho"), axis=1, norm="ortho")[:, :32]
    ct = dct(dct(zt, axis=0, norm="ortho"), axis=1, norm="ortho")
    np.testing.assert_allclose(ct, cs, atol=2e-5)


def test_class_axis_mismatch_is_left(tmp_path):
    """The output layer is transferred only when its class axis matches."""
    from samples.export import export
    from samples.models import ViT, ViTConfig, example_input, perturb

    import torch

    torch.manual_seed(0)
    src = export(perturb(ViT(ViTConfig()).eval()), example_input("vit"), tmp_path / "s.onnx", "legacy")
    tgt = export(ViT(ViTConfig(classes=5)).eval(), example_input("vit"), tmp_path / "t.onnx", "legacy")
    plan = front_onnx.plan(src, tgt)
    head = [s for s in plan.slots if s.initializer in ("head.weight", "head.bias")]
    assert head and all(s.status == "left" and "classes" in s.reason for s in head)
    assert plan.summary()["written_fraction"] > 0.9


@pytest.mark.parametrize("exporter,family,size", [("dynamo", "gpt", "deep"), ("legacy", "gpt", "narrow"),
                                                  ("dynamo", "resnet", "narrow"), ("legacy", "vit", "shallow")])
def test_saved_learngene_initializes_byte_identically(samples, tmp_path, exporter, family, size):
    """transfer computes only what the target reads; the bytes equal extract + save + init."""
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, size, "dynamo")
    a = tmp_path / "a" / "out.onnx"   # the same file name: the proto names its data file
    b = tmp_path / "b" / "out.onnx"
    front_onnx.transfer(src, tgt, a, keep=0.5)
    gene = front_onnx.extract(src, keep=0.5)
    gene.save(tmp_path / "g.safetensors")
    front_onnx.initialize(tgt, tmp_path / "g.safetensors", b)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "out.onnx.data").read_bytes() == (tmp_path / "b" / "out.onnx.data").read_bytes()


def test_deterministic_output(samples, tmp_path):
    src = samples.get("resnet", "base", "legacy", source=True)
    tgt = samples.get("resnet", "deep", "dynamo")
    front_onnx.transfer(src, tgt, tmp_path / "1" / "o.onnx")
    front_onnx.transfer(src, tgt, tmp_path / "2" / "o.onnx")
    for name in ("o.onnx", "o.onnx.data"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_external_data_in_and_out(samples, tmp_path):
    """A dynamo target (external data) written inline and a legacy one (inline) written external
    give the same outputs as the default writes."""
    src = samples.get("vit", "base", "dynamo", source=True)
    for exp, forced in (("dynamo", False), ("legacy", True)):
        tgt = samples.get("vit", "wide", exp)
        default, other = tmp_path / f"{exp}-d.onnx", tmp_path / f"{exp}-f.onnx"
        front_onnx.transfer(src, tgt, default)
        front_onnx.transfer(src, tgt, other, external_data=forced)
        assert (tmp_path / f"{exp}-f.onnx.data").exists() == forced
        assert (tmp_path / f"{exp}-d.onnx.data").exists() == (exp == "dynamo")
        feeds = sample_feeds("vit", tgt)
        np.testing.assert_array_equal(run_onnx(default, feeds)[0], run_onnx(other, feeds)[0])


def test_output_onto_input_is_refused(samples, tmp_path):
    src = samples.get("vit", "base", "legacy", source=True)
    tgt = tmp_path / "t.onnx"
    tgt.write_bytes(samples.get("vit", "narrow", "legacy").read_bytes())
    before = file_digests(src, tgt)
    with pytest.raises((front_onnx.FrontError, ValueError)):
        front_onnx.transfer(src, tgt, tgt)
    with pytest.raises((front_onnx.FrontError, ValueError)):
        front_onnx.transfer(src, tgt, src)
    assert file_digests(src, tgt) == before


def test_large_outputs_go_to_external_data(samples, tmp_path, monkeypatch):
    """Past the protobuf limit (lowered here) an inline target is written with external data."""
    import front_onnx.onnxio.writer as io

    monkeypatch.setattr(io, "AUTO_EXTERNAL_LIMIT", 10_000)
    src = samples.get("vit", "base", "legacy", source=True)
    tgt = samples.get("vit", "narrow", "legacy")
    assert not (tgt.parent / (tgt.name + ".data")).exists()
    out = tmp_path / "big.onnx"
    front_onnx.transfer(src, tgt, out)
    assert (tmp_path / "big.onnx.data").exists()
    y = run_onnx(out, sample_feeds("vit", out))[0]
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("depth,size", [("nearest", "shallow"), ("linear", "deep"), ("nearest", "deep")])
def test_depth_modes_transfer_equals_saved_learngene(samples, tmp_path, depth, size):
    """Layer-domain depth modes need every kept layer of the source: transfer still equals extract + init."""
    src = samples.get("gpt", "base", "dynamo", source=True)
    tgt = samples.get("gpt", size, "dynamo")
    a = tmp_path / "a" / "out.onnx"
    b = tmp_path / "b" / "out.onnx"
    r = front_onnx.transfer(src, tgt, a, keep=0.5, depth=depth)
    assert r.plan.depth == depth and any(op.startswith(f"depth: {depth}") for s in r.plan.written for op in s.operations)
    front_onnx.extract(src, keep=0.5).save(tmp_path / "g.safetensors")
    front_onnx.initialize(tgt, tmp_path / "g.safetensors", b, depth=depth)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "out.onnx.data").read_bytes() == (tmp_path / "b" / "out.onnx.data").read_bytes()


def test_nearest_depth_copies_source_blocks(samples, tmp_path):
    """At keep 1 and equal width, 'nearest' growth makes every target block an exact copy of the
    source block at the nearest relative depth (checked on the ONNX tensors themselves)."""
    src = samples.get("vit", "base", "dynamo", source=True)
    tgt = samples.get("vit", "deep", "dynamo")
    out = tmp_path / "out.onnx"
    r = front_onnx.transfer(src, tgt, out, keep=1.0, depth="nearest")
    s_model, o_model = load_model(src), load_model(out)
    by_key: dict[str, list[str]] = {}
    for sp in r.plan.written:
        by_key.setdefault(sp.template, []).append(sp.written_as or sp.initializer)
    src_plan = front_onnx.plan(src, src, keep=1.0)
    src_by_key: dict[str, list[str]] = {}
    for sp in src_plan.written:
        src_by_key.setdefault(sp.template, []).append(sp.initializer)
    checked = 0
    for key, names in by_key.items():
        srcs = src_by_key.get(key, [])
        n, L = len(names), len(srcs)
        if L < 2 or n == L or n < 2:
            continue
        for j, name in enumerate(names):
            i = int(np.rint(j * (L - 1) / (n - 1)))
            got, want = o_model.array(name), s_model.array(srcs[i])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
            checked += 1
    assert checked >= 16


@pytest.mark.parametrize("depth", ["spectral", "nearest", "linear"])
def test_streamed_materialize_equals_whole_stack(samples, tmp_path, monkeypatch, depth):
    """The streamed per-template writer gives the bytes of the whole-stack ``materialize``."""
    import front_onnx.method.materialize as mat

    src = samples.get("gpt", "base", "dynamo", source=True)
    tgt = samples.get("gpt", "deep", "dynamo")
    a = tmp_path / "a" / "out.onnx"
    b = tmp_path / "b" / "out.onnx"
    front_onnx.transfer(src, tgt, a, keep=0.5, depth=depth)
    calls = []
    real = mat.materialize
    monkeypatch.setattr(mat, "_streamed", lambda *args, **kw: None)
    monkeypatch.setattr(mat, "materialize", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    front_onnx.transfer(src, tgt, b, keep=0.5, depth=depth)
    assert calls
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "out.onnx.data").read_bytes() == (tmp_path / "b" / "out.onnx.data").read_bytes()
