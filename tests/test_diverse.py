"""``align="diverse"``: the strongest units that differ first (importance discounted by
redundancy). Checked against independent expectations:

- the order equals a direct greedy computation (each step: the unit whose importance times the
  sine of its angle to the span of the units taken so far is largest, by least squares);
- a near copy of the strongest unit waits behind a weaker distinct unit, where the importance
  order keeps the copy;
- units stay within their head; past the Gram's rank they follow by importance;
- through a real transfer: the planted distinct units are the ones kept, identity reproduces
  the source, and the learngene records the order and initializes what ``transfer`` writes.
"""
from __future__ import annotations

import numpy as np
import pytest

from front_onnx.numeric.seriation import diverse_key, importance_order, unit_gram, unit_shares

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.conftest import initializer_arrays, run_onnx, sample_feeds  # noqa: E402


def _greedy(vectors: np.ndarray) -> list[int]:
    """The definition, step by step: importance ||v||^2 times sin(angle to the taken span)."""
    n = vectors.shape[0]
    taken: list[int] = []
    for _ in range(n):
        best, arg = -1.0, -1
        for i in range(n):
            if i in taken:
                continue
            v = vectors[i]
            if taken:
                basis = vectors[taken].T
                coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
                resid = v - basis @ coef
            else:
                resid = v
            crit = float(v @ v) * np.linalg.norm(resid) / np.linalg.norm(v)
            if crit > best:
                best, arg = crit, i
        taken.append(arg)
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_diverse_order_is_the_greedy_definition(seed):
    rng = np.random.default_rng(seed)
    n, m = 9, 14
    vec = rng.normal(size=(n, m)) * rng.uniform(0.2, 3.0, size=(n, 1))
    gram = unit_gram([(vec, 0)])
    np.testing.assert_allclose(np.diag(gram), unit_shares(vec, 0), rtol=1e-5)   # the diagonal is the importance
    order = importance_order(diverse_key(gram), 1)
    assert order.tolist() == _greedy(vec / np.linalg.norm(vec))


def test_members_each_have_an_equal_say():
    """Two tensors indexing the same units: the Gram is the sum of each one's, normalized."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 3)), 100 * rng.normal(size=(4, 5))    # units on axis 0 of a, axis 1 of b
    g = unit_gram([(a, 0), (b, 1)])
    want = a @ a.T / np.sum(a * a) + b.T @ b / np.sum(b * b)
    np.testing.assert_allclose(g, want, rtol=1e-5)


def test_a_near_copy_waits_behind_a_weaker_distinct_unit():
    rng = np.random.default_rng(3)
    strong = rng.normal(size=8)
    copy = 0.95 * strong + 0.01 * rng.normal(size=8)
    distinct = 0.5 * rng.normal(size=8)
    vec = np.stack([distinct, copy, strong])
    g = unit_gram([(vec, 0)])
    assert importance_order(unit_shares(vec, 0), 1).tolist() == [2, 1, 0]
    assert importance_order(diverse_key(g), 1).tolist() == [2, 0, 1]


def test_units_stay_in_their_head_and_past_the_rank_follow_by_importance():
    rng = np.random.default_rng(4)
    basis = rng.normal(size=(2, 6))
    head = rng.normal(size=(5, 2)) @ basis * np.array([[1.0], [3.0], [2.0], [0.5], [4.0]])   # rank 2
    vec = np.concatenate([head, rng.normal(size=(5, 6))])
    order = importance_order(diverse_key(unit_gram([(vec, 0)]), 2), 2)
    first, second = order[:5].tolist(), order[5:].tolist()
    assert sorted(first) == list(range(5)) and sorted(second) == list(range(5, 10))
    assert first[0] == int(np.argmax(np.linalg.norm(head, axis=1)))
    norms = np.linalg.norm(head, axis=1)
    assert np.all(np.diff(norms[first[2:]]) <= 0)      # past rank 2: by importance


def _chain(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).eval()


def test_transfer_keeps_the_strongest_distinct_units(tmp_path):
    """Hidden 12 -> 6: units 6-11 are copies of units 0-5 scaled by 1.5 in every tensor that
    indexes them (so the strongest, and redundant with their originals). Importance keeps
    some pairs twice; 'diverse' keeps one unit of each pair, and identity at the same width
    reproduces the source."""
    from front_onnx.torch import transfer_module

    src = _chain(12, 0)
    with torch.no_grad():
        w, b, w2 = src[0].weight, src[0].bias, src[2].weight
        gain = torch.tensor([0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
        w[:6] *= gain[:, None]
        b[:6] *= gain
        w[6:] = 1.5 * w[:6]
        b[6:] = 1.5 * b[:6]
        w2[:, 6:] = w2[:, :6] * 1.5
    w1 = src[0].weight.detach().numpy().copy()

    def kept(align: str) -> list[int]:
        module, plan = transfer_module(src, _chain(6, 1), (torch.zeros(2, 6),), method="hybrid", align=align)
        got = module[0].weight.detach().numpy()
        return sorted(int(np.argmin(np.abs(w1 - row).max(axis=1))) for row in got), plan

    units, _ = kept("importance")
    assert len(set(u % 6 for u in units)) < 6          # importance keeps twins
    units, plan = kept("diverse")
    assert sorted(u % 6 for u in units) == list(range(6))   # one of each pair
    assert any("diverse order" in op for s in plan.slots for op in s.operations)
    same, _ = transfer_module(src, _chain(12, 1), (torch.zeros(2, 6),), method="hybrid", align="diverse")
    x = torch.randn(5, 6)
    torch.testing.assert_close(same(x), src(x), rtol=0, atol=1e-6)


def test_a_vit_ordered_diverse_reproduces_itself_and_shrinks_by_selection(vits, tmp_path):
    import front_onnx

    same = front_onnx.transfer(vits / "s.onnx", vits / "same.onnx", tmp_path / "same.onnx", method="hybrid",
                               align="diverse")
    assert same.plan.summary()["written_fraction"] == 1.0
    feeds = sample_feeds("vit", vits / "s.onnx")
    np.testing.assert_allclose(run_onnx(tmp_path / "same.onnx", feeds)[0], run_onnx(vits / "s.onnx", feeds)[0],
                               rtol=0, atol=1e-5)
    shrink = front_onnx.transfer(vits / "s.onnx", vits / "shrink.onnx", tmp_path / "shrink.onnx", method="hybrid",
                                 align="diverse")
    assert any(n.startswith("align:") and "diverse" in n for n in shrink.plan.notes)
    assert any("diverse order" in op for sl in shrink.plan.slots for op in sl.operations)


def test_a_learngene_ordered_diverse_initializes_what_transfer_writes(vits, tmp_path):
    import front_onnx
    from front_onnx.method.learngene import Learngene

    gene = front_onnx.extract(vits / "s.onnx", align="diverse", output=tmp_path / "g.safetensors")
    assert gene.unit_order == "diverse"
    assert Learngene.load(tmp_path / "g.safetensors").unit_order == "diverse"
    front_onnx.initialize(vits / "shrink.onnx", tmp_path / "g.safetensors", tmp_path / "i.onnx", method="hybrid")
    front_onnx.transfer(vits / "s.onnx", vits / "shrink.onnx", tmp_path / "t.onnx", method="hybrid", align="diverse")
    a, b = initializer_arrays(tmp_path / "i.onnx"), initializer_arrays(tmp_path / "t.onnx")
    assert a.keys() == b.keys()
    for k in a:  # transfer copies the source's units; the learngene holds them as a float32 spectrum
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6 * max(float(np.abs(b[k]).max()), 1e-30), err_msg=k)
