"""front-onnx's width+depth transfer against an independent reference of the method.

The reference below is written from the method's definition (docs/learngene-format.md,
docs/user-guide.md "The method, as front-onnx applies it", the design notes' method), not
from front-onnx's code: numpy only, with orthonormal DCT-II matrices built here.

For one template (one role of a stage's block, stacked over the blocks):

1. put each source block's tensor in canonical layout ``(out, in, spatial...)``, a fused
   projection's out axis split into a leading ``parts`` axis;
2. z-score each block on its own (its mean and population std);
3. orthonormal DCT-II along the layer axis and every ``feature`` and ``spatial`` axis
   (never along ``index`` or ``parts`` axes);
4. keep the low-frequency corner: ``ceil(keep * n)`` (at least 1) coefficients on the
   layer and feature axes, every coefficient on the others;
5. truncate or zero-pad that corner to the target's lengths and take the orthonormal
   inverse with the target's lengths (no other scale factor under ``ortho``);
6. restore the source statistics per target block, linearly interpolated over relative
   depth (source block i at i/(L-1), target block j at j/(n-1)).

front-onnx only produces the output (``front_onnx.transfer``); tensors are read back with
``onnx.numpy_helper``. Every written tensor must match the reference, every tensor
front-onnx reports as left must be the target's, byte for byte.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import front_onnx
from tests.graphs import mlp_stack

KEEP = 0.5
RTOL = 1e-5
ATOL = 1e-6  # relative to each tensor's largest magnitude


# ---------------------------------------------------------------------------- reference

def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``X = C @ x``, ``C[k, i] = s_k cos(pi k (2i+1) / 2n)``
    with ``s_0 = sqrt(1/n)``, ``s_k = sqrt(2/n)``; its inverse is ``C.T``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def kept_length(n: int, keep: float) -> int:
    return max(1, math.ceil(keep * n))


def _along(m: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """``m @ x`` along one axis of x."""
    return np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)


def reference_stack(blocks: list[np.ndarray], kinds: tuple[str, ...], shape: tuple[int, ...],
                    depth: int, keep: float = KEEP) -> np.ndarray:
    """The target's ``[depth, *shape]`` canonical stack from the source blocks' canonical
    tensors (float64), by the method's definition."""
    x = np.stack([np.asarray(b, dtype=np.float64) for b in blocks])
    n_src = x.shape[0]
    flat = x.reshape(n_src, -1)
    means = flat.mean(axis=1)
    stds = flat.std(axis=1)  # population std
    safe = np.where(stds > 0, stds, 1.0)
    z = (x - means.reshape((-1,) + (1,) * (x.ndim - 1))) / safe.reshape((-1,) + (1,) * (x.ndim - 1))
    z[stds == 0] = 0.0
    axis_kinds = ("depth",) + tuple(kinds)
    src_lengths = x.shape
    tgt_lengths = (depth,) + tuple(shape)
    c = z
    for a, kind in enumerate(axis_kinds):
        if kind in ("index", "parts"):
            assert src_lengths[a] == tgt_lengths[a], f"{kind} axis {a} must match"
            continue
        n, m = src_lengths[a], tgt_lengths[a]
        k = kept_length(n, keep) if kind in ("depth", "feature") else n  # spatial taps: kept whole
        k = min(k, m)
        coef = _along(dct_matrix(n)[:k], c, a)       # forward DCT, low-frequency corner cut to k
        c = _along(dct_matrix(m)[:k].T, coef, a)     # zero-padded to m, inverse with length m
    # statistics over relative depth
    pos = np.zeros(1) if depth == 1 else np.arange(depth) / (depth - 1) * (n_src - 1)
    new_means = np.interp(pos, np.arange(n_src), means)
    new_stds = np.interp(pos, np.arange(n_src), stds)
    bshape = (-1,) + (1,) * len(shape)
    return c * new_stds.reshape(bshape) + new_means.reshape(bshape)


def test_reference_dct_and_identity():
    """The reference itself: the DCT matrix is scipy's orthonormal DCT-II, and at equal shapes
    with every coefficient kept the reference gives the source back."""
    import scipy.fft

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 8):
        v = rng.normal(size=n)
        np.testing.assert_allclose(dct_matrix(n) @ v, scipy.fft.dct(v, norm="ortho"), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dct_matrix(n) @ dct_matrix(n).T, np.eye(n), atol=1e-12)
    blocks = [rng.normal(0.3 * i, 1 + i, size=(3, 6, 4)) for i in range(3)]
    got = reference_stack(blocks, ("parts", "feature", "feature"), (3, 6, 4), 3, keep=1.0)
    np.testing.assert_allclose(got, np.stack(blocks), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- onnx helpers

def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of a model, by name."""
    model = onnx.load(str(path))
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def assert_matches(name: str, got: np.ndarray, want: np.ndarray, dtype) -> None:
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, target has {dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    g = got.astype(np.float64)
    scale = float(np.abs(want).max()) or 1.0
    # rtol: the float32 rounding of each value. atol, 1e-6 of the tensor's largest magnitude:
    # the learngene holds float32 coefficients for a float32 source (docs/learngene-format.md),
    # so values near 0 carry an absolute error of about 1e-7 of the scale (measured <= 9e-8)
    np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL * scale, err_msg=name)


def check_left_unchanged(result, tgt: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> int:
    """Every slot front-onnx reports as left keeps the target's bytes."""
    left = {s.initializer for s in result.plan.left}
    for name in left:
        assert out[name].dtype == tgt[name].dtype and out[name].shape == tgt[name].shape, name
        assert out[name].tobytes() == tgt[name].tobytes(), f"{name} was reported left but changed"
    return len(left)


# ---------------------------------------------------------------------------- MLP stacks

def mlp_roles(model: onnx.ModelProto, blocks: int) -> dict[str, tuple[list[str], tuple[str, ...], bool]]:
    """role -> (initializer per block, canonical kinds, stored [in, out]) for ``mlp_stack``,
    read from the graph's node names (tests/graphs.py) and the documented canonical layouts."""
    by_node = {n.name: n for n in model.graph.node}

    def inp(node: str, i: int) -> str:
        return by_node[node].input[i]

    def bias(node: str) -> str:  # the bias Add's initializer operand (input 0 in mlp_stack)
        names = {t.name for t in model.graph.initializer}
        return next(x for x in by_node[node].input if x in names)

    b = [f"/blocks.{i}" for i in range(blocks)]
    return {
        "norm.scale": ([inp(f"{s}/norm/LayerNormalization", 1) for s in b], ("feature",), False),
        "norm.bias": ([inp(f"{s}/norm/LayerNormalization", 2) for s in b], ("feature",), False),
        "fc1.weight": ([inp(f"{s}/fc1/MatMul", 1) for s in b], ("feature", "feature"), True),
        "fc1.bias": ([bias(f"{s}/fc1/Add") for s in b], ("feature",), False),
        "fc2.weight": ([inp(f"{s}/fc2/MatMul", 1) for s in b], ("feature", "feature"), True),
        "fc2.bias": ([bias(f"{s}/fc2/Add") for s in b], ("feature",), False),
        # the output layer: its out axis indexes classes (never resampled); depth 1
        "head.weight": ([inp("/head/MatMul", 1)], ("index", "feature"), True),
    }


MLP_CASES = {
    # (src width, src blocks, src classes) -> (tgt width, tgt blocks, tgt classes)
    "shrink-width-grow-depth": ((16, 4, 4), (8, 6, 4)),        # the conftest pair
    "grow-width-shrink-depth": ((8, 6, 4), (16, 3, 3)),        # other classes: head left
    # odd lengths (kept ceil(4.5) = 5 of 9, 4 of 7 blocks), every target length below the
    # kept corner: the spectrum is truncated on every axis (keep itself does not matter here)
    "odd-lengths-truncate": ((9, 7, 4), (4, 2, 4)),
}


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_mlp_stack_matches_reference(tmp_path, case):
    (sw, sd, sc), (tw, td, tc) = MLP_CASES[case]
    src_model, tgt_model = mlp_stack(sw, sd, seed=0, classes=sc), mlp_stack(tw, td, seed=1, classes=tc)
    src, tgt, out = tmp_path / "src.onnx", tmp_path / "tgt.onnx", tmp_path / "out.onnx"
    onnx.save(src_model, src)
    onnx.save(tgt_model, tgt)
    result = front_onnx.transfer(src, tgt, out, keep=KEEP, depth="spectral", convention="ortho")
    s_t, t_t, o_t = read_tensors(src), read_tensors(tgt), read_tensors(out)
    assert set(o_t) == set(t_t), "no initializer may be added or removed (nothing is shared here)"

    src_roles, tgt_roles = mlp_roles(src_model, sd), mlp_roles(tgt_model, td)
    expected_written = set()
    for role, (tnames, kinds, in_out) in tgt_roles.items():
        snames = src_roles[role][0]
        canon = (lambda a: a.T) if in_out else (lambda a: a)
        shape = canon(t_t[tnames[0]]).shape
        if role == "head.weight" and sc != tc:
            continue  # the class axis differs: the method leaves the head
        stack = reference_stack([canon(s_t[n]) for n in snames], kinds, shape, len(tnames))
        for j, name in enumerate(tnames):
            assert_matches(name, o_t[name], canon(stack[j]), t_t[name].dtype)
            expected_written.add(name)
    assert {s.initializer for s in result.plan.written} == expected_written
    n_left = check_left_unchanged(result, t_t, o_t)
    assert n_left == (1 if sc != tc else 0)
    if sc != tc:
        assert {s.initializer for s in result.plan.left} == {tgt_roles["head.weight"][0][0]}


# ---------------------------------------------------------------------------- a real export

# documented layouts (user guide, table of consumers): which store a 2-D weight as [in, out]
_STORED_IN_OUT = {"[in, out]": True, "[out, in]": False, "[out]": False, "[out, in/groups, k...]": False}


def _layout_in_out(layout: str) -> bool:
    layout = layout.removesuffix(" by heads")  # an attention projection split by heads (user guide)
    if layout in _STORED_IN_OUT:
        return _STORED_IN_OUT[layout]
    assert re.fullmatch(r"\[(1|d)(, (1|d))*\]", layout), f"layout {layout!r} not covered by this test"
    return False  # parameter tensors (norms, tables, tokens) keep their order


def _axes(operations: list[str]) -> tuple[tuple[str, ...], int, tuple[int, ...]]:
    """(axis kinds of one block's canonical tensor, parts, its canonical shape) from the plan's
    per-axis operations (``depth: ...``, then ``<kind><axis>: <verb> [<source>->]<target>``)."""
    kinds, parts, shape = [], 1, []
    for op in operations[1:]:
        m = re.match(r"([a-z]+)\d+: \w+ (?:\d+->)?(\d+)", op)
        kinds.append(m.group(1))
        shape.append(int(m.group(2)))
        if m.group(1) == "parts":
            parts = int(m.group(2))
    return tuple(kinds), parts, tuple(shape)


def _canonical(a: np.ndarray, in_out: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Stored -> canonical (out, in, ...): a fused projection's out axis becomes [parts,
    out/parts] (consecutive equal parts, as the projection's output is split), an axis split
    by attention heads [heads, head_dim] (consecutive heads, as the graph reshapes it): both
    a plain reshape of the (out, in) matrix into the canonical shape."""
    c = a.T if in_out else a
    return c.reshape(shape)


def _stored(c: np.ndarray, in_out: bool, stored: tuple[int, ...]) -> np.ndarray:
    c = c.reshape(stored[::-1] if in_out else stored)
    return c.T if in_out else c


def _block_of(model: onnx.ModelProto, node_name: str) -> int | None:
    """The block of a slot, from the legacy exporter's node scope (``/blocks.3/...``),
    following an Identity (a shared tensor's copy) to its consumer; None for a loose layer."""
    node = next(n for n in model.graph.node if n.name == node_name)
    if node.op_type == "Identity":
        node = next(n for n in model.graph.node if node.output[0] in n.input)
    m = re.match(r"/blocks\.(\d+)/", node.name)
    return int(m.group(1)) if m else None


def _templates(slots: list[dict], model: onnx.ModelProto, status: str) -> dict[str, list[dict]]:
    """Template key -> its slots ordered by block (the depth stack's order)."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for s in slots:
        if s["status"] == status and s["template"]:
            out.setdefault(s["template"], []).append((_block_of(model, s["node"]), s))
    stacks = {}
    for key, items in out.items():
        blocks = [b for b, _ in items]
        if blocks == [None]:
            stacks[key] = [items[0][1]]
            continue
        assert sorted(blocks) == list(range(len(items))), f"{key}: blocks {blocks}"
        stacks[key] = [s for _, s in sorted(items, key=lambda t: t[0])]
    return stacks


SAMPLE_CASES = {
    # source size (perturbed, as trained) -> target size (fresh: shared, deduplicated tensors)
    "vit-narrow-to-deep": ("narrow", "deep"),     # d32 x 4 -> d64 x 8: grow both, pad everywhere
    "vit-wide-to-narrow": ("wide", "narrow"),     # d128 x 4 -> d32 x 4: truncate below the corner
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_vit_sample_matches_reference(samples, tmp_path, case):
    """A legacy-exported ViT (Conv patch embedding, class token, position table, fused qkv
    with a parts axis, output head). Roles, layouts and axis kinds come from the plan's JSON;
    the values from the reference."""
    pytest.importorskip("torch")
    src_size, tgt_size = SAMPLE_CASES[case]
    src = samples.get("vit", src_size, "legacy", source=True)
    tgt = samples.get("vit", tgt_size, "legacy")
    out, report = tmp_path / "out.onnx", tmp_path / "plan.json"
    result = front_onnx.transfer(src, tgt, out, keep=KEEP, depth="spectral", convention="ortho", report=report)
    plan = json.loads(report.read_text())
    assert plan["keep"] == KEEP and plan["convention"] == "ortho" and plan["depth"] == "spectral"
    # every weight is written; only scalar constants (attention scale, GELU constants) are left
    assert all(s["status"] == "written" for s in plan["slots"] if s["role"] is not None)
    # the source's own slots and templates: the plan of the source into itself
    src_plan = front_onnx.plan(src, src, keep=KEEP, convention="ortho", depth="spectral").to_json()
    src_model, tgt_model = onnx.load(str(src)), onnx.load(str(tgt))
    s_t, t_t, o_t = read_tensors(src), read_tensors(tgt), read_tensors(out)

    src_stacks = _templates(src_plan["slots"], src_model, "written")
    tgt_stacks = _templates(plan["slots"], tgt_model, "written")
    assert set(tgt_stacks) <= set(src_stacks)
    roles = set()
    written_names = set()
    for key, tslots in tgt_stacks.items():
        sslots = src_stacks[key]
        first = tslots[0]
        kinds, parts, shape = _axes(first["operations"])
        src_kinds, src_parts, src_shape = _axes(sslots[0]["operations"])
        assert (kinds, parts) == (src_kinds, src_parts), key
        in_out = _layout_in_out(first["layout"])
        assert in_out == _layout_in_out(sslots[0]["layout"]), key
        stack = reference_stack([_canonical(s_t[s["initializer"]], in_out, src_shape) for s in sslots],
                                kinds, shape, len(tslots))
        for j, s in enumerate(tslots):
            name = s["written_as"] or s["initializer"]
            assert_matches(f"{key}[{j}] {name}", o_t[name], _stored(stack[j], in_out, tuple(first["shape"])),
                           t_t[s["initializer"]].dtype)
            written_names.add(name)
        roles.add(first["role"] + ("/parts" if parts > 1 else "") + ("/heads" if "by heads" in first["layout"] else ""))
    # what the test covered: every role of the ViT, and the fused qkv's parts axis
    assert {"conv.weight", "conv.bias", "token", "parameter", "norm.scale", "norm.bias", "linear.weight",
            "linear.bias", "linear.weight/parts/heads", "linear.bias/parts/heads", "linear.weight/heads"} <= roles
    assert result.split > 0  # fresh LayerNorm tensors are shared in the target and were split
    # every initializer of the output is either a written tensor or the target's, unchanged
    check_left_unchanged(result, t_t, o_t)
    for name in set(o_t) - written_names:
        assert name in t_t and o_t[name].tobytes() == t_t[name].tobytes(), name
    assert set(o_t) == set(t_t) | {s["written_as"] for s in plan["slots"] if s["written_as"]}
