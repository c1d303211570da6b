"""Views of a parameter computed with constants (front_onnx.analysis.folding): a table the
graph gathers at constant positions, a token it expands to the batch, read the same way as
the initializer a constant-folding exporter stores instead."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import front_onnx
from front_onnx.analysis.folding import View, write_views
from front_onnx.analysis.slots import analyze_slots
from front_onnx.onnxio import load_model

ort = pytest.importorskip("onnxruntime")

B, T, P, D = 2, 5, 9, 4


def _model(nodes, inits, seed_out="y") -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
                          [helper.make_tensor_value_info(seed_out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _pair(seed: int, folded: bool) -> tuple[onnx.ModelProto, dict]:
    """y = (x + pos[arange(T)]) @ W, with the position rows gathered in the graph (a table
    and a Gather at constant indices, as the legacy exporter leaves it) or folded into one
    initializer (as the dynamo exporter stores it)."""
    r = np.random.default_rng(seed)
    pos = r.normal(size=(P, D)).astype(np.float32)
    w = r.normal(size=(D, D)).astype(np.float32)
    if folded:
        inits = {"pos_rows": pos[np.arange(T)][None], "w": w}
        nodes = [helper.make_node("Add", ["x", "pos_rows"], ["h"])]
    else:
        inits = {"pos.weight": pos, "ids": np.arange(T, dtype=np.int64)[None], "w": w}
        nodes = [helper.make_node("Gather", ["pos.weight", "ids"], ["rows"]),
                 helper.make_node("Add", ["x", "rows"], ["h"])]
    nodes.append(helper.make_node("MatMul", ["h", "w"], ["y"]))
    return _model(nodes, inits), {"pos": pos, "w": w}


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_gathered_rows_read_like_the_folded_tensor(tmp_path):
    table, _ = _pair(0, folded=False)
    folded, _ = _pair(0, folded=True)
    a = [s for s in analyze_slots(table, lambda n: numpy_helper.to_array(
        next(t for t in table.graph.initializer if t.name == n))).slots if s.initializer == "pos.weight"]
    b = [s for s in analyze_slots(folded).slots if s.initializer == "pos_rows"]
    assert len(a) == len(b) == 1
    assert (a[0].role, a[0].shape, a[0].layout.kinds) == (b[0].role, b[0].shape, b[0].layout.kinds)
    assert a[0].view is not None and a[0].size == T * D  # the rows read, not the whole table


@pytest.mark.parametrize("src_folded,tgt_folded", [(True, False), (False, True), (False, False), (True, True)])
def test_identity_across_folded_and_gathered(tmp_path, src_folded, tgt_folded):
    src, sv = _pair(1, src_folded)
    tgt, tv = _pair(2, tgt_folded)
    onnx.save(src, tmp_path / "s.onnx")
    onnx.save(tgt, tmp_path / "t.onnx")
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0)
    assert res.plan.summary()["written_fraction"] == 1.0
    x = np.random.default_rng(3).normal(size=(B, T, D)).astype(np.float32)
    ref, got = _run(tmp_path / "s.onnx", x), _run(tmp_path / "o.onnx", x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if not tgt_folded:  # rows the graph never reads keep the target's bytes; the others are the source's
        out = {t.name: numpy_helper.to_array(t) for t in load_model(tmp_path / "o.onnx").proto.graph.initializer}
        np.testing.assert_array_equal(out["pos.weight"][T:], tv["pos"][T:])
        np.testing.assert_allclose(out["pos.weight"][:T], sv["pos"][:T], rtol=1e-6)


def _token_pair(seed: int, folded: bool) -> onnx.ModelProto:
    """y = concat(cls expanded to the batch, x) @ W: the token Expand-ed in the graph, or folded."""
    r = np.random.default_rng(seed)
    cls = r.normal(size=(1, 1, D)).astype(np.float32)
    w = r.normal(size=(D, D)).astype(np.float32)
    if folded:
        inits = {"expand": np.broadcast_to(cls, (B, 1, D)).copy(), "w": w}
        nodes = [helper.make_node("Concat", ["expand", "x"], ["h"], axis=1)]
    else:
        inits = {"cls_token": cls, "shape": np.array([B, 1, 1], np.int64), "w": w}
        nodes = [helper.make_node("Expand", ["cls_token", "shape"], ["e"]),
                 helper.make_node("Concat", ["e", "x"], ["h"], axis=1)]
    nodes.append(helper.make_node("MatMul", ["h", "w"], ["y"]))
    return _model(nodes, inits)


@pytest.mark.parametrize("src_folded", [True, False])
def test_expanded_token_across_exporters(tmp_path, src_folded):
    onnx.save(_token_pair(1, src_folded), tmp_path / "s.onnx")
    onnx.save(_token_pair(2, not src_folded), tmp_path / "t.onnx")
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0)
    assert not res.plan.left or all(s.role is None for s in res.plan.left)
    x = np.random.default_rng(3).normal(size=(B, T, D)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "o.onnx", x), _run(tmp_path / "s.onnx", x), rtol=1e-5, atol=1e-5)


def test_write_views_means_copies_and_keeps_masked_and_unread():
    stored = np.arange(6, dtype=np.float32)
    index = np.array([[0, 0], [1, 2]])
    masked = np.array([[False, False], [False, True]])
    view = View(["Gather"], (6,), index, None, masked, covered=2)
    out = write_views(stored, [(view, np.array([[10.0, 20.0], [30.0, 99.0]]), None)])
    assert out.tolist() == [15.0, 30.0, 2.0, 3.0, 4.0, 5.0]  # copies averaged, masked and unread kept
    assert stored.tolist() == [0, 1, 2, 3, 4, 5]  # the input is not modified
    offset = np.array([[0.0, 0.0], [-np.inf, 1.0]])
    view = View(["Gather", "Add(constant)"], (6,), index, offset, np.isinf(offset), covered=2)
    assert view.read(stored).tolist() == [[0.0, 0.0], [0.0, 3.0]]
    out = write_views(stored, [(view, np.array([[4.0, 4.0], [7.0, 8.0]]), None)])
    assert out.tolist() == [4.0, 1.0, 7.0, 3.0, 4.0, 5.0]  # the offset is taken off, the masked entry skipped


def _gathernd_model(seed: int) -> onnx.ModelProto:
    """y = (x + table[idx]) @ W, the table read through GatherND at constant indices (torch's
    ``table[index]`` under the dynamo exporter with optimize=False: Swin's relative-position
    bias table)."""
    r = np.random.default_rng(seed)
    inits = {"table": r.normal(size=(P, D)).astype(np.float32),
             "idx": np.array([[[3], [1], [4], [1], [5]]], np.int64),  # [1, T, 1]: rows 3, 1, 4, 1, 5
             "w": r.normal(size=(D, D)).astype(np.float32)}
    nodes = [helper.make_node("GatherND", ["table", "idx"], ["rows"]),
             helper.make_node("Add", ["x", "rows"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    return _model(nodes, inits)


def test_a_table_read_through_gathernd_is_a_view(tmp_path):
    onnx.save(_gathernd_model(1), tmp_path / "s.onnx")
    onnx.save(_gathernd_model(2), tmp_path / "t.onnx")
    res = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", keep=1.0)
    table = next(s for s in res.plan.slots if s.initializer == "table")
    assert table.status == "written" and table.elements == 4 * D  # rows 1, 3, 4, 5: the rows the graph reads
    x = np.random.default_rng(3).normal(size=(B, T, D)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "o.onnx", x), _run(tmp_path / "s.onnx", x), rtol=1e-5, atol=1e-5)


def test_entries_unknown_in_the_source_keep_the_targets_values():
    """An entry written to a view that the source held only as a mask value (unknown) leaves
    the stored element as it was: another copy of it, read where the source was not masked,
    decides."""
    stored = np.arange(4, dtype=np.float32)
    view = View(["Gather"], (4,), np.array([[0, 0, 1]]), None, None, covered=2)
    out = write_views(stored, [(view, np.array([[5.0, 0.0, 0.0]]), np.array([[False, True, True]]))])
    assert out.tolist() == [5.0, 1.0, 2.0, 3.0]


def test_a_learngene_keeps_the_sources_masked_entries(tmp_path):
    """``GeneTemplate.masked`` survives save and load, and a file whose mask has another
    shape than its template is refused."""
    from front_onnx.method.learngene import GeneTemplate, Learngene

    masked = np.zeros((1, 2, 3), bool)
    masked[0, 1, 2] = True
    t = GeneTemplate("U0#0:parameter", "", "parameter", "[d, d]", ("feature", "feature"), (2, 3), 1, "float32",
                     np.ones((1, 2, 3), np.float32), np.zeros(1), np.ones(1), masked=masked)
    gene = Learngene({t.key: t}, 1.0, "ortho")
    gene.save(tmp_path / "g.safetensors")
    back = Learngene.load(tmp_path / "g.safetensors")
    np.testing.assert_array_equal(back.templates[t.key].masked, masked)
    t.masked = np.zeros((1, 3, 2), bool)
    Learngene({t.key: t}, 1.0, "ortho").save(tmp_path / "bad.safetensors")
    with pytest.raises(front_onnx.LearngeneError, match="masked entries"):
        Learngene.load(tmp_path / "bad.safetensors")


def _view_of(stored_shape: tuple[int, ...], pick) -> tuple[View, tuple[int, ...]]:
    """The View that ``pick`` (numpy indexing of an index array) makes of a stored tensor."""
    idx = np.asarray(pick(np.arange(int(np.prod(stored_shape))).reshape(stored_shape)))
    return View(["test"], stored_shape, idx.reshape(-1), covered=int(np.unique(idx).size)), idx.shape


@pytest.mark.parametrize("stored,pick,k,want", [
    ((16, 6), lambda a: a[:8], 1, 1),                                   # wpe[:T]: the width is read whole
    ((16, 6), lambda a: a[:8], 0, None),                                # positions: only 8 of 16
    ((1, 1, 6), lambda a: np.broadcast_to(a, (3, 1, 6)), 2, 2),         # a class token expanded to the batch
    ((2, 6), lambda a: a[[0, 0, 0]], 1, 1),                             # rows gathered (token type 0)
    ((4, 6), lambda a: a.T, 0, 1),                                      # transposed
    ((4, 6), lambda a: a[:, ::-1], 1, None),                            # reversed: not in order
    ((6, 6), lambda a: np.stack([np.diag(a)] * 2), 1, None),            # the diagonal: the row moves with it
    ((4, 6), lambda a: a[:, :3], 1, None),                              # half the width
])
def test_a_views_stored_axis_is_the_one_it_reads_one_to_one(stored, pick, k, want):
    """``View.stored_axis``: and where it names an axis, permuting the stored tensor along it
    permutes the view alike (checked directly on values)."""
    view, shape = _view_of(stored, pick)
    assert view.stored_axis(shape, k) == want
    if want is not None:
        rng = np.random.default_rng(0)
        a = rng.standard_normal(stored)
        perm = rng.permutation(stored[want])
        np.testing.assert_array_equal(view.read(np.take(a, perm, axis=want)).reshape(shape),
                                      np.take(view.read(a).reshape(shape), perm, axis=k))
