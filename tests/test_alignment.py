"""Alignment (``align=True``): the source's channel spaces permuted into a smooth order before
the transform. Checked against independent expectations: the aligned source computes the same
function (onnxruntime), an identity transfer with alignment still reproduces the source, the
order is smoother than the trained one, and a seriation of shuffled similar units restores
their neighbourhoods."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.analysis import weight_slots  # noqa: E402
from front_onnx.numeric.seriation import roughness, smooth_order  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402
from front_onnx.validation.equivalence import aligned_source, same_function  # noqa: E402
from samples.export import export  # noqa: E402
from samples.models import FAMILIES, ViTConfig, perturb  # noqa: E402


def _vit(dim: int, depth: int, seed: int, trained: bool = False):
    torch.manual_seed(seed)
    m = FAMILIES["vit"][0](ViTConfig(dim=dim, depth=depth, heads=4, classes=10)).eval()
    return perturb(m, seed=seed) if trained else m


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    export(_vit(64, 4, 0, trained=True), torch.zeros(2, 1, 8, 8), d / "s.onnx")
    export(_vit(64, 4, 1), torch.zeros(2, 1, 8, 8), d / "same.onnx")
    export(_vit(32, 2, 2), torch.zeros(2, 1, 8, 8), d / "shrink.onnx")
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
    # heads are never split by a permutation: those spaces are left, with the reason
    assert any("attention heads" in why for why in al.skipped.values())


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
