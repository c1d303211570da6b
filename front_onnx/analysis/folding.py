"""Views of a parameter computed with constants only: what the dynamo exporter folds.

An exporter that folds constants (torch's dynamo exporter) stores ``expand(cls_token)``,
``position_table[arange(T)]`` or a relative-position bias table gathered at its index
buffer as one initializer of the *view's* shape; an exporter that does not (the legacy one,
tf2onnx) stores the table and leaves the Expand / Gather / Reshape / Transpose nodes in the
graph, with constant second inputs. So that both read alike, a parameter is followed
through such nodes (every other input constant) to the first node that meets an activation:
the *frontier*. The slot then stands for the view at the frontier, and ``View.index`` says
which stored element each view element is (found by running the chain on the element
indices themselves), so values written to the view go back into the stored tensor.

A view may also add a constant (a causal mask added to a relative-position bias): its
``offset``. Masked entries (inf or near the dtype's limit) carry no information: they read
as zero and are never written.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from front_onnx.onnxio import attribute as _attr

# ops a view passes through: input 0 is the tensor, the others must be constant
_LAYOUT = {"Identity", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
_SELECT = {"Gather", "GatherND", "Expand", "Tile", "Slice", "Resize"}  # Resize: only to its input's own size
_OFFSET = {"Add"}
VIEW_OPS = _LAYOUT | _SELECT | _OFFSET
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                     "Multinomial"}
TYPE_ONLY = {("CastLike", 1), ("Shape", 0), ("Size", 0)}  # (op, input) that reads no values, only a type or shape
_MAX_CONST = 1 << 22  # elements: larger computed constants are not evaluated (the walk stops)


def mask_entries(a: np.ndarray) -> np.ndarray:
    """Where a float tensor holds mask values: +-inf, NaN or magnitudes near the dtype's limit."""
    x = np.asarray(a)
    if x.dtype.kind != "f":
        return np.zeros(x.shape, bool)
    lim = 0.1 * float(np.finfo(x.dtype).max)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(x) | (np.abs(x) >= lim)


@dataclass
class View:
    """A slot's tensor as the graph uses it: ``stored.flat[index] + offset`` (``index`` None:
    the stored tensor itself), with ``masked`` entries (mask values) read as zero and never
    written."""

    ops: list[str]
    stored_shape: tuple[int, ...]
    index: np.ndarray | None = None
    offset: np.ndarray | None = None
    masked: np.ndarray | None = None
    covered: int = 0                  # distinct stored elements the view reads
    copies: int = 1                   # the stored tensor is this many copies of the view along axis 0

    def stored_axis(self, shape: tuple[int, ...], k: int) -> int | None:
        """The stored axis that axis ``k`` of this view (of ``shape``) reads one to one and in
        order, every other coordinate it reads not depending on it (a slice or broadcast of
        other axes: ``wpe[:T]``, a class token expanded to the batch), or None. Permuting the
        stored tensor along that axis permutes the view along ``k`` alike."""
        if self.offset is not None or (self.masked is not None and self.masked.any()):
            return None
        if self.index is None:
            return k if tuple(self.stored_shape) == tuple(shape) else None
        idx = np.asarray(self.index)
        if idx.size != int(np.prod(shape)):
            return None
        coords = np.unravel_index(idx.reshape(shape), self.stored_shape)
        n = shape[k]
        ramp = np.arange(n).reshape([-1 if a == k else 1 for a in range(len(shape))])
        for axis, c in enumerate(coords):
            if self.stored_shape[axis] != n or not np.array_equal(c, np.broadcast_to(ramp, c.shape)):
                continue
            if all(np.array_equal(o, np.take(o, [0], axis=k).repeat(n, axis=k))
                   for j, o in enumerate(coords) if j != axis):
                return axis
        return None

    def read(self, stored: np.ndarray) -> np.ndarray:
        flat = np.asarray(stored).reshape(-1)
        a = flat[self.index] if self.index is not None else np.asarray(stored).copy()
        if self.offset is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                a = (a.astype(np.float64) + self.offset).astype(a.dtype)
        if self.masked is not None and self.masked.any():
            a = np.where(self.masked, np.zeros((), a.dtype), a)
        return a



def write_views(stored: np.ndarray, written: list[tuple[View, np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``stored`` with the elements its views read replaced by the values written to them;
    an element read several times (broadcast copies, a table gathered at repeated
    positions) gets the mean of its copies, which at keep 1.0 are equal. Masked entries,
    entries marked ``unknown`` (the source held them only as mask values) and elements no
    view reads keep the stored bytes."""
    base = np.array(stored, copy=True)
    flat = base.reshape(-1)
    total = np.zeros(flat.size, np.float64)
    count = np.zeros(flat.size, np.int64)
    for view, v, unknown in written:
        x = np.asarray(v, np.float64)
        index = view.index if view.index is not None else np.arange(flat.size).reshape(x.shape)
        if view.offset is not None:
            x = x - view.offset
        ok = np.ones(x.shape, bool) if unknown is None else ~unknown  # unknown in the source (a mask there)
        if view.masked is not None:
            ok &= ~view.masked
        np.add.at(total, index[ok], x[ok])
        np.add.at(count, index[ok], 1)
    hit = count > 0
    flat[hit] = (total[hit] / count[hit]).astype(base.dtype)
    copies = max(view.copies for view, _, _ in written)
    if copies > 1:  # the other batch rows are copies of the first
        rows = base.reshape(copies, -1)
        rows[1:] = rows[:1]
    return base


class Constants:
    """Values computed from initializers and Constant nodes only (shape, index and mask
    tensors), evaluated node by node with onnx's reference runtime on demand."""

    def __init__(self, graph: onnx.GraphProto, read: Callable[[str], np.ndarray] | None,
                 inits: dict[str, onnx.TensorProto], opset: int) -> None:
        self.g = graph
        self.read = read
        self.inits = inits
        self.opset = opset
        self.prod = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self.constant: set[str] = set(inits)
        for n in graph.node:
            if n.domain in ("", "ai.onnx") and n.op_type not in _NONDETERMINISTIC and \
                    not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute) \
                    and all(x == "" or x in self.constant for x in n.input):
                self.constant.update(o for o in n.output if o)
        self._cache: dict[str, np.ndarray | None] = {}

    def is_constant(self, name: str) -> bool:
        return name == "" or name in self.constant

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of a constant, or None when it is not one or cannot be evaluated."""
        if name in self._cache:
            return self._cache[name]
        out = None
        if name in self.inits:
            t = self.inits[name]
            if int(np.prod(t.dims, dtype=np.int64)) <= _MAX_CONST:
                try:
                    out = np.asarray(self.read(name)) if self.read is not None and t.data_location == 1 \
                        else numpy_helper.to_array(t)
                except Exception:  # noqa: BLE001 - unreadable data: not a usable constant
                    out = None
        elif name in self.constant and depth < 64 and name in self.prod:
            n = self.g.node[self.prod[name]]
            feeds = {}
            for x in n.input:
                if x:
                    v = self.value(x, depth + 1)
                    if v is None:
                        break
                    feeds[x] = v
            else:
                try:
                    from onnx.reference import ReferenceEvaluator

                    with warnings.catch_warnings(), np.errstate(all="ignore"):
                        warnings.simplefilter("ignore")
                        res = ReferenceEvaluator(n, opsets={"": self.opset}).run(None, feeds)
                    for o, r in zip(n.output, res):
                        r = np.asarray(r)
                        self._cache[o] = r if r.size <= _MAX_CONST else None
                    return self._cache.get(name)
                except Exception:  # noqa: BLE001 - an op the reference runtime cannot run: not folded
                    out = None
        self._cache[name] = out
        return out


def _ints(c: Constants, name: str) -> list[int] | None:
    v = c.value(name) if name else None
    if v is None or v.dtype.kind not in "iu":
        return None
    return [int(x) for x in v.reshape(-1)]


def apply(node: onnx.NodeProto, a: np.ndarray, c: Constants) -> np.ndarray | None:
    """The op on its input 0 (``a``, element indices or offsets), its other inputs constant;
    None when it cannot be reproduced."""
    op = node.op_type
    try:
        if op in ("Identity", "Cast"):
            return a
        if op == "Transpose":
            perm = _attr(node, "perm") or list(reversed(range(a.ndim)))
            return np.transpose(a, perm)
        if op == "Reshape":
            shape = _ints(c, node.input[1])
            if shape is None:
                return None
            if not _attr(node, "allowzero", 0):
                shape = [a.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return a.reshape(shape)
        if op in ("Unsqueeze", "Squeeze"):
            axes = _ints(c, node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "axes")
            if op == "Squeeze":
                return np.squeeze(a, axis=tuple(axes)) if axes else np.squeeze(a)
            if axes is None:
                return None
            out_rank = a.ndim + len(axes)
            return np.expand_dims(a, tuple(sorted(x % out_rank for x in axes)))
        if op == "Flatten":
            axis = _attr(node, "axis", 1) % max(a.ndim, 1) if a.ndim else 0
            return a.reshape(int(np.prod(a.shape[:axis], dtype=np.int64)), -1)
        if op == "Gather":
            idx = c.value(node.input[1])
            if idx is None or idx.dtype.kind not in "iu":
                return None
            axis = _attr(node, "axis", 0) % a.ndim
            return np.take(a, np.where(idx < 0, idx + a.shape[axis], idx), axis=axis)
        if op == "GatherND":
            idx = c.value(node.input[1])
            if idx is None or idx.dtype.kind not in "iu" or _attr(node, "batch_dims", 0) != 0 or idx.ndim < 1:
                return None
            k = idx.shape[-1]
            idx = np.where(idx < 0, idx + np.array(a.shape[:k]), idx)
            return a[tuple(np.moveaxis(idx, -1, 0))]
        if op == "Expand":
            shape = _ints(c, node.input[1])
            return None if shape is None else np.array(a * np.ones(shape, a.dtype))
        if op == "Tile":
            reps = _ints(c, node.input[1])
            return None if reps is None else np.tile(a, reps)
        if op == "Resize":  # to the size it has (a table interpolated for the exported resolution): itself
            sizes = _ints(c, node.input[3]) if len(node.input) > 3 and node.input[3] else None
            scales = c.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            same = (sizes is not None and list(sizes) == list(a.shape[-len(sizes):])) if sizes else \
                (scales is not None and scales.size > 0 and bool(np.all(scales == 1)))
            axes = _attr(node, "axes")
            if not same or axes or _attr(node, "coordinate_transformation_mode") == b"tf_crop_and_resize":
                return None  # (crop and resize reads a region of interest: not the whole input)
            return a
        if op == "Slice":
            starts, ends = _ints(c, node.input[1]), _ints(c, node.input[2])
            axes = _ints(c, node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(len(starts or [])))
            steps = _ints(c, node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(axes or [])
            if starts is None or ends is None or axes is None or steps is None:
                return None
            sl = [slice(None)] * a.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[ax % a.ndim] = slice(s, e, st)
            return a[tuple(sl)]
    except (ValueError, IndexError, TypeError):
        return None
    return None


@dataclass
class Trace:
    """Where a parameter's view meets activations, and which stored element each of its
    elements is."""

    frontier: list[tuple[int, int]]   # (node, input) of each consumer of the view
    index: np.ndarray
    offset: np.ndarray | None
    ops: list[str]
    first_op: str                     # the op the parameter itself enters


def trace(graph: onnx.GraphProto, c: Constants, cons: dict[str, list[tuple[int, int]]],
          outputs: set[str], node: int, inp: int, shape: tuple[int, ...], cast_like: bool = False) -> Trace | None:
    """Follow an initializer read at (node, inp) through view ops to its frontier; None when
    the first op is not a view op of it, or the chain cannot be reproduced. A chain of only
    Identity / Cast / Transpose is no view (a layout, handled by the slot's ``Layout``).
    ``cast_like``: also through CastLike's input 0 (a cast to an activation's type), for a
    tensor named as a parameter only: the exporter builds a zero Conv bias by casting a
    constant like the input, which is no view of a parameter."""
    n0 = graph.node[node]
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    offset: np.ndarray | None = None
    ops: list[str] = []
    i, j = node, inp
    selected = False
    for _ in range(32):
        n = graph.node[i]
        typed = cast_like and n.op_type == "CastLike" and j == 0  # its input 1 gives only the type
        if (n.op_type not in VIEW_OPS and not typed) or n.domain not in ("", "ai.onnx") or len(n.output) != 1:
            break
        if n.op_type in _OFFSET:
            if len(n.input) != 2 or not c.is_constant(n.input[1 - j]):
                break
            k = c.value(n.input[1 - j])
            if k is None or k.dtype.kind != "f" or not mask_entries(k).any():
                break  # only a mask is taken for a constant offset: another tensor may be a parameter
            try:
                out_shape = np.broadcast_shapes(index.shape, k.shape)
            except ValueError:  # shapes that do not broadcast (a damaged graph): no view
                return None
            index = np.broadcast_to(index, out_shape).copy()
            base = np.zeros(out_shape) if offset is None else np.broadcast_to(offset, out_shape)
            offset = np.array(base + k.astype(np.float64))
            ops.append("Add(constant)")
        elif typed:
            ops.append(n.op_type)  # values as they are
        else:
            if j != 0 or not all(c.is_constant(x) for x in n.input[1:]):
                break
            new = apply(n, index, c)
            if new is None:
                return None
            new_off = apply(n, offset, c) if offset is not None else None
            if offset is not None and new_off is None:
                return None
            index, offset = new, new_off
            ops.append(n.op_type)
            selected |= n.op_type not in ("Identity", "Cast", "Transpose")
        out = n.output[0]
        # a use that reads only the tensor's type or shape (CastLike's model input: addcmul's
        # constant factor cast like timm GRN's weight view) reads no values: not a consumer
        nxt = [u for u in cons.get(out, []) if (graph.node[u[0]].op_type, u[1]) not in TYPE_ONLY]
        if out in outputs or not nxt:
            return None
        if len(nxt) > 1:
            i = -1
            frontier = nxt
            break
        i, j = nxt[0]
    else:
        return None
    if i != -1:
        frontier = [(i, j)]
    if not selected or not ops:
        return None
    return Trace(frontier, np.ascontiguousarray(index), offset, ops, n0.op_type)
