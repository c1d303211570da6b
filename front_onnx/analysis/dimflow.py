"""Channel spaces: which weight axes index the same channels, from the graph's dimension flow.

Every axis of every activation is followed through the ops that keep it (elementwise and
broadcasting ops, normalizations, Transpose, Reshape, Squeeze/Unsqueeze, Concat, Slice,
Split, Gather, Expand, MatMul's batch axes); axes that the flow shows to be the same are
one *channel space*. A weight axis joins the space of the activation axis it reads or
writes: a projection's in axis the space of its input's last axis, its out axis that of its
output's; a normalization's scale the axes it normalizes; a bias or broadcast parameter the
output axes it lines up with. So the residual width of a transformer is one space holding
every block's norms, out-projection outputs and in-projection inputs; each block's MLP
hidden width is a space of its own; a class or vocabulary axis is a space no other layer
reads.

A Reshape that splits an axis into several (heads x head_dim, parts x heads x head_dim)
records the split: the space is *factored*, and the factors are spaces in turn.

Shapes come from onnx's shape inference (run on a copy without the weights' bytes); an
axis whose length is unknown is not followed. Nothing here changes how a transfer
resamples: the spaces are reported (``front-onnx inspect``) for the work that builds on
them (aligning neurons, head-consistent resampling).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from front_onnx.analysis.folding import Constants
from front_onnx.analysis.slots import CUT, FEATURE, INDEX, PARTS, GraphSlots, Layout, Slot
from front_onnx.onnxio import attribute as _attr

_SAME = {"Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Cast", "Identity", "Dropout",
         "Sqrt", "Neg", "Exp", "Log", "Abs", "Reciprocal", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu",
         "Selu", "Softplus", "Softsign", "Clip", "Mish", "FastGelu", "BiasGelu", "QuickGelu", "Not", "IsNaN",
         "Floor", "Ceil", "Round", "Sin", "Cos", "SiLU", "Celu", "ThresholdedRelu", "PRelu"}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And",
              "Or", "Mod", "LessOrEqual", "GreaterOrEqual", "BitwiseAnd", "Expand"}
_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "AveragePool", "MaxPool", "LpPool"}
_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "BatchNormalization",
          "InstanceNormalization", "GroupNormalization", "LpNormalization", "MeanVarianceNormalization"}


# what reading a damaged graph's attributes against its shapes raises: the flow is a reading
# of the graph's evidence, and a node that contradicts itself is evidence of nothing
_DAMAGED = (IndexError, ValueError, TypeError, KeyError, ZeroDivisionError)


@dataclass
class ChannelSpace:
    """One channel space: its length, the weight axes that index it, and its factors."""

    id: str
    size: int
    axes: list[tuple[str, int]]                      # (initializer, canonical axis)
    factors: list[list[int]] = field(default_factory=list)  # splits seen: lengths of the parts


@dataclass
class DimensionFlow:
    spaces: list[ChannelSpace]
    slot_axes: dict[int, list[str | None]]          # slot index -> space id per canonical axis
    heads: dict[int, tuple[int, ...]] = field(default_factory=dict)  # slot -> Layout.heads of its projection
    groups: dict[int, tuple[int, ...]] = field(default_factory=dict)  # slot -> Layout.groups (grouped-query heads)
    outputs: dict[str, list[str | None]] = field(default_factory=dict)  # graph output -> space id per axis
    # space -> the spaces of its factors, one tuple per split (a query/key space's heads axis is
    # also a relative-position bias table's, when one is added to the scores)
    factor_spaces: dict[str, set[tuple[str | None, ...]]] = field(default_factory=dict)
    # slot -> why its out axis cannot be resampled: the graph cuts the projection's output into
    # pieces its layout does not express (q|k|v of unequal widths, interleaved with the heads)
    cuts: dict[int, str] = field(default_factory=dict)
    # slot -> (parts, whether inside its heads: Layout.interleaved, the groups of heads they sit
    # inside, 0 when each head: Layout.inner_groups) of a fused projection whose parts the flow
    # found and the slot analysis did not count (or counted otherwise)
    parts: dict[int, tuple[int, bool, int]] = field(default_factory=dict)
    # Concat node -> the space of the axis it concatenates (branches side by side: DenseNet's
    # features, a U-Net's skip connections, a class token before the patches)
    concatenated: dict[str, str] = field(default_factory=dict)
    branches: dict[str, tuple] = field(default_factory=dict)  # Concat node -> its inputs' lengths along it
    # slot -> the length-1 axes of a broadcast scale that meet a length-1 axis of what it scales
    # (a per-head logit scale (heads, 1, 1) of a one-head attention): channel axes, not broadcast
    unit_axes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # slot -> (start, end, step, value, axis) per piece of a projection's output the graph cuts
    # into pieces of unequal widths side by side, or interleaves (every step-th unit), in order,
    # covering it (``cut_into_pieces`` reads each as a view)
    pieces: dict[int, list[tuple[int, int, int, str, int]]] = field(default_factory=dict)


_ATTENTION_OPS = {"GroupQueryAttention", "MultiHeadAttention"}  # onnxruntime's, splitting heads by attribute


class UnionFind:
    """Disjoint sets of hashable, mutually comparable keys (tuples); the smallest key of a set is its root."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}

    def find(self, a: tuple) -> tuple:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: tuple, b: tuple) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static shapes of every value onnx's shape inference finds. It runs on a copy of the
    graph without the weights' bytes (each float initializer becomes an input of its shape;
    integer ones, shape and index tensors, stay), so a model with inline weights is not held
    twice."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    listed = {i.name for i in g.input}
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) and not t.external_data:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort: unknown shapes are not followed
        pass
    out: dict[str, list[int | None]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[n.output[0]] = list(a.t.dims)
    return out


def _groups(a: list[int | None], b: list[int | None]) -> list[tuple[list[int], list[int]]] | None:
    """Reshape's axis groups: runs of input and output axes with equal products (axes of
    length 1 stand alone), or None when the lengths do not line up. Lengths unknown to shape
    inference (a batch of windows) end the groups: those are taken from the last axes back,
    as far as the lengths are known, which is where channels and heads are."""
    if None in a or None in b:
        ra, rb = list(reversed(a)), list(reversed(b))
        ka = ra.index(None) if None in ra else len(ra)
        kb = rb.index(None) if None in rb else len(rb)
        part = _groups_prefix(ra[:ka], rb[:kb])
        return [([len(a) - 1 - i for i in reversed(gi)], [len(b) - 1 - j for j in reversed(gj)])
                for gi, gj in reversed(part)]
    return _groups_prefix(list(a), list(b), whole=True)  # type: ignore[arg-type]


def _solve_unknown(a: list[int | None], b: list[int | None]) -> tuple[list[int | None], list[int | None]]:
    """A Reshape's one unknown length (its -1, a window batch) found from the others: after
    the leading axes both sides share (unknown ones taken as equal), the element counts of the
    rest must agree."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    ra, rb = a[k:], b[k:]
    for x, y in ((ra, rb), (rb, ra)):
        if None not in x and y.count(None) == 1:
            known = 1
            for d in y:
                known *= d if d is not None else 1
            total = 1
            for d in x:
                total *= d  # type: ignore[operator]
            if known and total % known == 0:
                y[y.index(None)] = total // known
    return a[:k] + ra, b[:k] + rb


def _groups_prefix(a: list[int], b: list[int], whole: bool = False) -> list[tuple[list[int], list[int]]] | None:
    """The groups of ``_groups`` from the first axes on; with ``whole`` every axis must be
    placed, else the groups stop where the two run out of step."""
    i = j = 0
    out = []
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return None if whole else out
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]
                gi.append(i)
                i += 1
            elif pb < pa and j < len(b):
                pb *= b[j]
                gj.append(j)
                j += 1
            else:
                return None if whole else out
        out.append((gi, gj))
    return out


class _Flow:
    def __init__(self, model: onnx.ModelProto, gs: GraphSlots) -> None:
        self.g = model.graph
        self.gs = gs
        # MatMuls of a weight that is no initializer (an expert's, gathered per token): not attention
        self.weighted = {s.anchor for s in gs.slots if s.role == "linear.weight" and s.op == "MatMul"}
        self.shape = _shapes(model)
        self.uf = UnionFind()
        self.factors: dict[tuple, list[tuple]] = {}
        self.split_axes: dict[tuple, list[tuple[tuple, ...]]] = {}  # whole axis -> the value axes of its factors
        self.part_axes: dict[int, tuple] = {}  # fused projection's slot -> its within-part axis (``fused_parts``)
        self.parts: dict[int, tuple[int, bool, int]] = {}  # slot -> (parts, inside, groups) (``fused_parts``)
        self.split_outs: dict[tuple, list[tuple[tuple, ...]]] = {}  # axis split by a Split -> its parts' axes
        self.sequences: dict[str, tuple[str, int, dict[int, str]]] = {}  # SplitToSequence: (input, axis, part values)
        self.cut: set[tuple] = set()  # activation axes a Slice takes part of, a Gather indexes or a Split cuts unevenly
        self.slices: dict[tuple, list[tuple[int, int, tuple]]] = {}  # axis -> (start, end, the piece's axis)
        self.strided: dict[tuple, list[tuple[int, int, tuple]]] = {}  # axis -> (start, step, the piece's axis)
        self.heads: dict[tuple, set[tuple[int, ...]]] = {}   # value axis -> (heads, head_dim) splits
        self.repeats: list[tuple[tuple, tuple]] = []  # Expand: (an axis it broadcasts from length 1, its last axis)
        self.concats: list[tuple[str, tuple, tuple]] = []  # Concat: (node, its output's axis, its inputs' lengths)
        self.prod = {o: i for i, n in enumerate(self.g.node) for o in n.output if o}
        self.cons: dict[str, list[int]] = {}
        for i, n in enumerate(self.g.node):
            for x in n.input:
                if x:
                    self.cons.setdefault(x, []).append(i)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.constants = Constants(self.g, None, {t.name: t for t in self.g.initializer}, opset)
        self.const = self.constants.constant  # values computed from initializers and Constant nodes only
        self._shaped: Constants | None = None  # ``_bound``'s

    def _bound(self, x: str) -> np.ndarray | None:
        """A Slice's bound: a constant, or computed from lengths shape inference knows (the
        legacy exporter's chunk takes its bounds from its input's Shape)."""
        v = self.constants.value(x)
        if v is None:
            if self._shaped is None:
                self._shaped = Constants(self.g, None, {**self.constants.inits, **self._known_lengths()},
                                         self.constants.opset)
            v = self._shaped.value(x)
        return v

    def _known_lengths(self) -> dict[str, onnx.TensorProto]:
        """The Shape outputs whose lengths shape inference knows, and the entries of a Shape a
        Gather takes where only those are known, as constants."""
        out: dict[str, onnx.TensorProto] = {}
        for n in self.g.node:
            if n.op_type != "Shape" or not n.input or not n.output or self.shape.get(n.input[0]) is None:
                continue
            dims = list(self.shape[n.input[0]])[_attr(n, "start", 0):_attr(n, "end", None)]
            if None not in dims:
                out[n.output[0]] = numpy_helper.from_array(np.array(dims, np.int64), n.output[0])
                continue
            for ci in self.cons.get(n.output[0], []):
                c = self.g.node[ci]
                idx = self.constants.value(c.input[1]) if c.op_type == "Gather" and len(c.input) > 1 and \
                    c.input[0] == n.output[0] else None
                if idx is None or not all(-len(dims) <= int(i) < len(dims) for i in idx.reshape(-1)):
                    continue
                vals = [dims[int(i)] for i in idx.reshape(-1)]
                if None not in vals:
                    out[c.output[0]] = numpy_helper.from_array(np.array(vals, np.int64).reshape(idx.shape), c.output[0])
        return out

    def _slice_bounds(self, n: onnx.NodeProto) -> list[tuple[int, int, int, int]] | None:
        """(axis, start, end, step) of each axis a Slice names, its bounds clamped to the axis
        (start and end None where the length is unknown); None when its bounds are not known."""
        ins = list(n.input) + [""] * 5
        r = self.rank(ins[0]) or 0
        starts, ends, axes_v, steps_v = (self._bound(x) if x else None for x in ins[1:5])
        if not r or starts is None or ends is None or (ins[3] and axes_v is None) or (ins[4] and steps_v is None):
            return None
        axes = [int(a) % r for a in axes_v.reshape(-1)] if axes_v is not None else list(range(starts.size))
        steps = [int(x) for x in steps_v.reshape(-1)] if steps_v is not None else [1] * len(axes)
        out = []
        for a, b, e, st in zip(axes, starts.reshape(-1), ends.reshape(-1), steps):
            d = self.dim(ins[0], a)
            if d is None:
                out.append((a, None, None, st))
                continue
            lo, hi = (min(max(int(x) + d if int(x) < 0 else int(x), 0), d) for x in (b, e))
            out.append((a, lo, hi, st))
        return out  # type: ignore[return-value]

    def dim(self, v: str, k: int) -> int | None:
        s = self.shape.get(v)
        if s is None or not -len(s) <= k < len(s):
            return None
        return s[k]

    def rank(self, v: str) -> int | None:
        s = self.shape.get(v)
        return None if s is None else len(s)

    def same(self, a: tuple, b: tuple) -> None:
        """Join two axes of activations when both lengths are known, equal and above 1. A
        constant's axes never join: one initializer shared by several layers (identical
        tensors deduplicated by the exporter) says nothing about their channels; weights
        join through their slots (``weight_axes``)."""
        if (a[0] == "v" and a[1] in self.const) or (b[0] == "v" and b[1] in self.const):
            return
        da, db = self.size(a), self.size(b)
        if da is not None and da == db and da > 1:
            self.uf.union(a, b)

    def size(self, key: tuple) -> int | None:
        if key[0] == "v":
            return self.dim(key[1], key[2])
        return key[3]

    def ax(self, v: str, k: int) -> tuple:
        r = self.rank(v) or 0
        return ("v", v, k % r if r else k)

    def out_value(self, s: Slot) -> tuple[str, int]:
        """(value, axis) of what a projection's slot produces: the anchor's output features,
        or the piece of them its view makes (``Slot.output_piece``)."""
        if s.output_piece is not None:
            return s.output_piece
        node = self.g.node[s.anchor]
        if _left_factor(s):
            return node.output[0], -2
        return node.output[0], 1 if node.op_type in ("Gemm", "Conv", "ConvTranspose") else -1

    def out_axis(self, s: Slot) -> tuple:
        return self.ax(*self.out_value(s))

    def in_axis(self, s: Slot) -> tuple:
        """The value axis a projection's or convolution's weight reads (its in axis)."""
        node = self.g.node[s.anchor]
        if _left_factor(s):
            return self.ax(node.input[1], -2)
        if node.op_type == "Gemm":
            return self.ax(node.input[0], 0 if _attr(node, "transA", 0) else 1)
        return self.ax(node.input[0], 1 if node.op_type in ("Conv", "ConvTranspose") else -1)

    def right_aligned(self, x: str, out: str) -> None:
        rx, ro = self.rank(x), self.rank(out)
        if rx is None or ro is None:
            return
        for k in range(1, min(rx, ro) + 1):
            self.same(self.ax(x, -k), self.ax(out, -k))

    def fill(self, n: onnx.NodeProto) -> None:
        """Lengths shape inference left unknown, taken from the inputs (after a Reshape whose
        -1 ``_solve_unknown`` found): a Transpose, a Split, an elementwise op or a MatMul of
        known inputs has known outputs."""
        op, ins, outs = n.op_type, list(n.input), list(n.output)
        first = self.shape.get(ins[0]) if ins and ins[0] else None
        for k, y in enumerate(outs):
            out = self.shape.get(y)
            if out is None or None not in out or first is None:
                continue
            want: list[int | None] | None = None
            if (op in _SAME or op in _NORMS) and len(first) == len(out):
                want = list(first)
            elif op == "Transpose" and len(first) == len(out):
                perm = _attr(n, "perm") or list(reversed(range(len(out))))
                want = [first[p] for p in perm]
            elif op == "Split" and len(first) == len(out):
                axis = _attr(n, "axis", 0) % len(out)
                want = [d if i != axis else None for i, d in enumerate(first)]
            elif op == "Slice" and len(first) == len(out):
                bounds = self._slice_bounds(n)
                if bounds is not None:
                    want = list(first)
                    for a, lo, hi, st in bounds:
                        want[a] = max(hi - lo, 0) if lo is not None and hi is not None and st == 1 else None
            elif op == "Squeeze":
                axes = _attr(n, "axes")
                if axes is None and len(ins) > 1 and ins[1]:
                    v = self.constants.value(ins[1])
                    axes = None if v is None else [int(x) for x in v.reshape(-1)]
                if axes is not None:
                    drop = {x % len(first) for x in axes}
                    want = [d for i, d in enumerate(first) if i not in drop]
            elif op == "Expand" and len(ins) > 1 and ins[1]:  # the shape input folded from constants
                v = self.constants.value(ins[1])
                if v is not None and v.ndim == 1 and len(v) == len(out):
                    pad = [1] * (len(out) - len(first)) + list(first)
                    want = [None if a is None else (int(b) if a == 1 else a) for a, b in zip(pad, v)]
            elif op in _BROADCAST and op != "Expand":
                shapes = [self.shape.get(x) for x in ins if x]
                if all(sh is not None for sh in shapes):
                    want = []
                    for i in range(1, len(out) + 1):
                        ds = {sh[-i] for sh in shapes if len(sh) >= i and sh[-i] not in (None, 1)}  # type: ignore[index]
                        want.insert(0, ds.pop() if len(ds) == 1 else None)
            elif op == "MatMul" and len(ins) == 2 and self.shape.get(ins[1]) is not None:
                b = self.shape[ins[1]]
                if len(first) == len(out) and len(b) >= 2:
                    want = list(first[:-1]) + [b[-1]]
            if want is not None and len(want) == len(out):
                self.shape[y] = [o if o is not None else w for o, w in zip(out, want)]

    def attention_op(self, n: onnx.NodeProto) -> None:
        """onnxruntime's attention ops split their inputs into heads themselves (no Reshape to
        see): record the (heads, head_dim) split of the query, key and value inputs they read
        whole, and of the output they merge (``num_heads``; ``kv_num_heads`` for
        GroupQueryAttention's key and value; a packed q|k|v input is split by the slot analysis)."""
        ins = list(n.input) + [""] * 3
        h = int(_attr(n, "num_heads", 0))
        kv = int(_attr(n, "kv_num_heads", 0)) or h
        width = self.dim(ins[0], -1) if ins[0] else None
        if not h or not width:
            return
        packed = n.op_type == "GroupQueryAttention" and not ins[1] and not ins[2]
        d = width // (h + 2 * kv) if packed else width // h
        if not packed:
            for x, heads in ((ins[0], h), (ins[1], kv), (ins[2], kv)):
                if x and self.rank(x) == 3 and self.dim(x, -1) == heads * d:
                    self.heads.setdefault(self.ax(x, -1), set()).add((heads, d))
        self.heads.setdefault(self.ax(n.output[0], -1), set()).add((h, d))

    def node(self, n: onnx.NodeProto) -> None:
        op, ins, outs = n.op_type, list(n.input), list(n.output)
        if not outs or not outs[0]:
            return
        if op in _ATTENTION_OPS:
            self.attention_op(n)
        self.fill(n)
        y = outs[0]
        if op in _SAME or op in _NORMS:
            if ins and self.rank(ins[0]) == self.rank(y):
                for k in range(self.rank(y) or 0):
                    self.same(self.ax(ins[0], k), self.ax(y, k))
        elif op in _BROADCAST:
            for x in ins:
                if x:
                    self.right_aligned(x, y)
            if op == "Expand":
                self._repeats(ins[0], y)
        elif op == "Transpose":
            r = self.rank(y) or 0
            perm = _attr(n, "perm") or list(reversed(range(r)))
            for k, p in enumerate(perm):
                self.same(self.ax(ins[0], p), self.ax(y, k))
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            self.reshape(ins[0], y)
        elif op == "MatMul":
            ra, rb, ry = self.rank(ins[0]), self.rank(ins[1]), self.rank(y)
            if None in (ra, rb, ry):
                return
            if ra >= 2:
                self.same(self.ax(ins[0], -2), self.ax(y, -2))
            if rb >= 2:
                self.same(self.ax(ins[1], -1), self.ax(y, -1))
                self.same(self.ax(ins[0], -1), self.ax(ins[1], -2))
            for k in range(3, min(ra, ry) + 1):
                self.same(self.ax(ins[0], -k), self.ax(y, -k))
            for k in range(3, min(rb, ry) + 1):
                self.same(self.ax(ins[1], -k), self.ax(y, -k))
        elif op == "Gemm":
            self.same(self.ax(ins[0], 1 if _attr(n, "transA", 0) else 0), self.ax(y, 0))
            self.same(self.ax(ins[1], 0 if _attr(n, "transB", 0) else 1), self.ax(y, 1))
            self.same(self.ax(ins[0], 0 if _attr(n, "transA", 0) else 1), self.ax(ins[1], 1 if _attr(n, "transB", 0) else 0))
        elif op in ("Conv", "ConvTranspose"):
            self.same(self.ax(ins[0], 0), self.ax(y, 0))
            if _attr(n, "group", 1) > 1 and self.dim(ins[0], 1) == self.dim(y, 1) == _attr(n, "group", 1):
                self.same(self.ax(ins[0], 1), self.ax(y, 1))  # depthwise: channels stay channels
        elif op == "Concat":
            r = self.rank(y) or 0
            axis = _attr(n, "axis", 0) % r if r else 0
            if r and len(ins) > 1:
                self.concats.append((n.name or y, self.ax(y, axis), tuple(self.dim(x, axis) for x in ins)))
            for x in ins:
                for k in range(r):
                    if k != axis:
                        self.same(self.ax(x, k), self.ax(y, k))
        elif op in ("Slice", "Split"):
            r = self.rank(y) or 0
            for o in outs:
                for k in range(r):
                    self.same(self.ax(ins[0], k), self.ax(o, k))
            if op == "Slice":
                self._cut_by_slice(n)
            if op == "Split" and len(outs) > 1:
                axis = _attr(n, "axis", 0) % r if r else 0
                parts = [self.dim(o, axis) for o in outs]
                if None in parts or len(set(parts)) > 1:
                    self.cut.add(self.ax(ins[0], axis))
                if None not in parts:
                    self.factors.setdefault(self.ax(ins[0], axis), [])
                    self.factors[self.ax(ins[0], axis)].append(("parts", tuple(parts)))
                    self.split_outs.setdefault(self.ax(ins[0], axis), []).append(tuple(self.ax(o, axis) for o in outs))
        elif op == "SplitToSequence":  # the dynamo exporter's split/chunk without its optimizer
            r = self.rank(ins[0]) or 0
            if r:
                self.sequences[y] = (ins[0], _attr(n, "axis", 0) % r, {})
        elif op == "SequenceAt" and ins[0] in self.sequences and len(ins) > 1:
            x, axis, parts = self.sequences[ins[0]]
            v = self.constants.value(ins[1])
            r = self.rank(x) or 0
            if v is None or v.size != 1 or self.rank(y) != r:
                return
            parts[int(v.reshape(-1)[0])] = y
            for k in range(r):
                if k != axis:
                    self.same(self.ax(x, k), self.ax(y, k))
        elif op == "Gather":
            rd, ri, ry = self.rank(ins[0]), self.rank(ins[1]), self.rank(y)
            if None in (rd, ri, ry):
                return
            axis = _attr(n, "axis", 0) % rd
            for k in range(axis):
                self.same(self.ax(ins[0], k), self.ax(y, k))
            for k in range(axis + 1, rd):
                self.same(self.ax(ins[0], k), self.ax(y, k - 1 + ri))
            if ins[0] not in self.const:  # indexing an activation (a table's lookup is the table's own)
                self.cut.add(self.ax(ins[0], axis))
        elif op.startswith("Reduce") and ins:
            if _attr(n, "keepdims", 1) and self.rank(ins[0]) == self.rank(y):
                for k in range(self.rank(y) or 0):
                    self.same(self.ax(ins[0], k), self.ax(y, k))
            elif not _attr(n, "keepdims", 1):  # the axes not reduced, in order (a pooled CNN's channels)
                kept = self._kept_axes(n)
                if kept is not None and len(kept) == self.rank(y):
                    for k, i in enumerate(kept):
                        self.same(self.ax(ins[0], i), self.ax(y, k))
        elif op in _POOLS and ins and self.rank(ins[0]) == self.rank(y) and (self.rank(y) or 0) >= 2:
            self.same(self.ax(ins[0], 0), self.ax(y, 0))   # batch and channels; the spatial axes shrink
            self.same(self.ax(ins[0], 1), self.ax(y, 1))

    def _repeats(self, x: str, y: str) -> None:
        """Record the axes an Expand makes by repeating its input (length 1 -> n), with its
        output's last axis: one key/value head repeated for every query head is how
        multi-query attention reaches the query heads (``_head_groups``)."""
        a, b = self.shape.get(x), self.shape.get(y)
        if a is None or b is None or len(a) > len(b):
            return
        pad = [1] * (len(b) - len(a)) + list(a)
        for k, (da, db) in enumerate(zip(pad, b)):
            if da == 1 and db is not None and db > 1 and k < len(b) - 1:
                self.repeats.append((self.ax(y, k), self.ax(y, -1)))

    def _kept_axes(self, n: onnx.NodeProto) -> list[int] | None:
        """The input axes a Reduce with keepdims=0 keeps (None when its axes are not known)."""
        r = self.rank(n.input[0])
        if r is None:
            return None
        axes = _attr(n, "axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            v = self.constants.value(n.input[1])
            if v is None:
                return None
            axes = [int(x) for x in v.reshape(-1)]
        if not axes:  # every axis (unless noop_with_empty_axes, which keeps them all)
            return list(range(r)) if _attr(n, "noop_with_empty_axes", 0) else []
        drop = {a % r for a in axes}
        return [i for i in range(r) if i not in drop]

    def reshape(self, x: str, y: str) -> None:
        a, b = self.shape.get(x), self.shape.get(y)
        if a is None or b is None:
            return
        a, b = _solve_unknown(list(a), list(b))
        self.shape[y] = b
        groups = _groups(a, b)
        if not groups:
            return
        for gi, gj in groups:
            if len(gi) == 1 and len(gj) == 1:
                self.same(self.ax(x, gi[0]), self.ax(y, gj[0]))
                # one head: [..., d] -> [..., 1, d] before attention, or back after it
                if (gi, gj) == groups[-1] and gj[0] > 0 and b[gj[0] - 1] == 1 and \
                        (gi[0] == 0 or a[gi[0] - 1] != 1) and self._attention_near(y, forward=True, steps=12):
                    self.heads.setdefault(self.ax(x, gi[0]), set()).add((1, b[gj[0]]))
                if (gi, gj) == groups[-1] and gi[0] > 0 and a[gi[0] - 1] == 1 and \
                        (gj[0] == 0 or b[gj[0] - 1] != 1) and self._attention_near(x, forward=False, steps=4):
                    self.heads.setdefault(self.ax(y, gj[0]), set()).add((1, a[gi[0]]))
            elif len(gi) == 1:   # one axis split into several: a factored space
                f = tuple(b[k] for k in gj)
                self.factors.setdefault(self.ax(x, gi[0]), []).append(("split", f))
                self.split_axes.setdefault(self.ax(x, gi[0]), []).append(tuple(self.ax(y, k) for k in gj))
                if len(f) in (2, 3) and self._attention_near(y, forward=True, steps=12):
                    self.heads.setdefault(self.ax(x, gi[0]), set()).add(f)
            elif len(gj) == 1:   # several merged into one
                f = tuple(a[k] for k in gi)
                self.factors.setdefault(self.ax(y, gj[0]), []).append(("split", f))
                self.split_axes.setdefault(self.ax(y, gj[0]), []).append(tuple(self.ax(x, k) for k in gi))
                if len(f) == 2 and self._attention_near(x, forward=False, steps=4):
                    self.heads.setdefault(self.ax(y, gj[0]), set()).add(f)
            elif len(gi) == len(gj) == 2:  # one length factored two ways: CodeGen's (blocks, 2 heads x 8) -> (heads, 8)
                fa, fb = tuple(a[k] for k in gi), tuple(b[k] for k in gj)
                whole = ("m", y, gj[0], fa[0] * fa[1])  # type: ignore[operator]
                self.factors.setdefault(whole, []).extend([("split", fa), ("split", fb)])
                self.split_axes.setdefault(whole, []).extend([tuple(self.ax(x, k) for k in gi),
                                                               tuple(self.ax(y, k) for k in gj)])
                if self._attention_near(y, forward=True, steps=12):
                    self.heads.setdefault(whole, set()).add(fb)

    def _cut_by_slice(self, n: onnx.NodeProto) -> None:
        """The axes a Slice takes a strict part of; an axis it names with bounds that are not
        constants counts as cut, and nothing when the axes it slices are not known."""
        ins = list(n.input) + [""] * 5
        r = self.rank(ins[0]) or 0
        if not r:
            return
        bounds = self._slice_bounds(n)
        if bounds is None:
            axes_v = self._bound(ins[3]) if ins[3] else None
            starts = self._bound(ins[1]) if ins[1] else None
            if ins[3] and axes_v is None:
                return
            axes = [int(a) % r for a in axes_v.reshape(-1)] if axes_v is not None else \
                list(range(starts.size)) if starts is not None else []
            self.cut.update(self.ax(ins[0], a) for a in axes)
            return
        for a, lo, hi, st in bounds:
            d = self.dim(ins[0], a)
            if d is None or st != 1 or (lo, hi) != (0, d):
                self.cut.add(self.ax(ins[0], a))
                if d is not None and st == 1 and len(bounds) == 1:
                    self.slices.setdefault(self.ax(ins[0], a), []).append((lo, hi, self.ax(n.output[0], a)))
                if d is not None and 1 < st <= d and hi >= d and len(bounds) == 1:  # every st-th unit from lo
                    self.strided.setdefault(self.ax(ins[0], a), []).append((lo, st, self.ax(n.output[0], a)))

    def _slice_partitions(self) -> None:
        """Slices that take an axis in equal consecutive pieces, every piece, as a Split
        (``split_outs``): the legacy exporter's q|k|v cut of GPT-NeoX's (heads, 3 x head size)."""
        for x, pieces in self.slices.items():
            d = self.size(x)
            for p in range(2, 9):
                if not d or d % p:
                    continue
                w = d // p
                outs = [next((o for lo, hi, o in pieces if (lo, hi) == (k * w, (k + 1) * w)), None) for k in range(p)]
                if all(o is not None for o in outs):
                    self.split_outs.setdefault(x, []).append(tuple(outs))  # type: ignore[arg-type]
                    break

    def _sequence_splits(self) -> None:
        """Each SplitToSequence whose parts were all taken (SequenceAt 0..p-1, or -p..-1) as
        a Split: its input axis split into the parts' axes (``split_outs``, with the factors);
        cut (``cut``) unless into equal parts, all taken (GPT-BigCode's q | k | v of unequal
        widths, through transfer_module's export)."""
        for x, axis, parts in self.sequences.values():
            p = len(parts)
            taken = {i % p: v for i, v in parts.items()} if p else {}
            sizes = tuple(self.dim(taken[i], axis) for i in range(p)) if sorted(taken) == list(range(p)) else ()
            if p < 2 or not sizes or None in sizes or len(set(sizes)) > 1:
                self.cut.add(self.ax(x, axis))
            if p < 2 or not sizes or None in sizes or sum(sizes) != self.dim(x, axis):  # type: ignore[arg-type]
                continue
            self.factors.setdefault(self.ax(x, axis), []).append(("parts", sizes))
            self.split_outs.setdefault(self.ax(x, axis), []).append(tuple(self.ax(taken[i], axis) for i in range(p)))

    def splits_by_class(self) -> dict[tuple, list[tuple[tuple, ...]]]:
        """``split_axes`` keyed by the class of the whole axis (as the flow has joined them now)."""
        out: dict[tuple, list[tuple[tuple, ...]]] = {}
        for whole, splits in self.split_axes.items():
            out.setdefault(self.uf.find(whole), []).extend(splits)
        return out

    def fused_parts(self) -> None:
        """A fused projection whose output is split into (parts, ...) (a timm-style qkv:
        (3, heads, head_dim)): the within-part axis of its weight is one axis for every part,
        factored as the rest of the split, so that the heads the parts share join the
        attention output's space (one permutation, head by head, for all parts). A fused
        projection whose output a Split (or SplitToSequence) cuts into equal parts (a GPT-2
        qkv) is treated the same way: its parts' axes are that one within-part axis, so the
        query/key and value/output spaces become one, whose heads the parts share."""
        self._sequence_splits()
        self._slice_partitions()
        by_class = self.splits_by_class()
        cut: dict[tuple, list[tuple[tuple, ...]]] = {}
        for whole, outs in self.split_outs.items():
            cut.setdefault(self.uf.find(whole), []).extend(outs)
        for i, s in enumerate(self.gs.slots):
            if s.role not in ("linear.weight", "linear.bias") or s.layout is None or s.layout.piece:
                continue
            node = self.g.node[s.anchor]
            if node.op_type not in ("MatMul", "Gemm", "MatMulNBits") or not node.output:
                continue
            out_v = self.out_value(s)[0]
            y = self.out_axis(s)
            key = self._outer_parts(s.layout.parts, out_v, y, by_class, cut) if s.layout.parts > 1 \
                else self._unseen_parts(out_v, y, cut)
            if key is not None:
                self.part_axes[i] = key
                if s.layout.parts <= 1:
                    self.parts[i] = (key[2], False, 0)
                continue
            found = self._interleaved(y, by_class, cut)
            if found is not None and (s.layout.parts > 1 or found[0] == 3):  # unseen parts: q|k|v only
                p, h, ds = found
                key = ("p", out_v, p, (self.size(h) or 0) * (self.size(ds[0]) or 0))
                for a in ds[1:]:
                    self.same(ds[0], a)
                self.split_axes.setdefault(key, []).append((h, ds[0]))
                self._heads_in_groups(key, h, ds, by_class)
                self.part_axes[i] = key
                self.parts[i] = (p, True, self.size(h) or 0)
                nh = self.size(h)
                if any(fs[0] == nh for a, fss in self.heads.items() if self.uf.find(a) == self.uf.find(y)
                       for fs in fss):  # the output was split into heads before attention
                    self.heads.setdefault(key, set()).add((nh, key[3] // nh))  # type: ignore[operator]
        self._piece_parts()

    def _piece_parts(self) -> None:
        """One part's bias (``Layout.piece``) indexes its projection's within-part axis, when
        the projection's weight has as many parts as the bias has pieces."""
        weights = {s.anchor: i for i, s in enumerate(self.gs.slots) if s.role == "linear.weight" and i in self.part_axes}
        for i, s in enumerate(self.gs.slots):
            w = weights.get(s.anchor)
            if s.role != "linear.bias" or s.layout is None or not s.layout.piece or w is None:
                continue
            lay = self.gs.slots[w].layout
            assert lay is not None
            if max(lay.parts, self.parts.get(w, (0,))[0]) == s.layout.piece[1]:
                self.part_axes[i] = self.part_axes[w]

    def _heads_in_groups(self, key: tuple, g: tuple, ds: list[tuple],
                         by_class: dict[tuple, list[tuple[tuple, ...]]]) -> None:
        """Parts inside groups of heads (CodeGen: (groups, q|v|k, heads per group x head_dim)):
        each part's axis split into (heads per group, head_dim) and the groups merged with the
        heads per group into the attention's heads. The within-part axis is then also split
        into (heads, head_dim), which joins it with the output projection's heads."""
        find = self.uf.find
        for keys in by_class.get(find(ds[0]), ()):
            if len(keys) != 2 or min(self.size(k) or 0 for k in keys) < 2:
                continue
            for whole, splits in self.split_axes.items():
                if any(len(m) == 2 and find(m[0]) == find(g) and find(m[1]) == find(keys[0]) for m in splits):
                    self.split_axes.setdefault(key, []).append((whole, keys[1]))
                    if whole in self.heads or any(find(a) == find(whole) for a in self.heads):
                        self.heads.setdefault(key, set()).add((self.size(whole), self.size(keys[1])))
                    return

    def _outer_parts(self, parts: int, out: str, y: tuple, by_class: dict[tuple, list[tuple[tuple, ...]]],
                     cut: dict[tuple, list[tuple[tuple, ...]]]) -> tuple | None:
        """The within-part axis of an output of ``parts`` outer parts: split into (parts, ...)
        (timm's qkv), or cut into that many equal parts (GPT-2's Split)."""
        for keys in by_class.get(self.uf.find(y), ()):
            sizes = [self.size(k) for k in keys]
            if len(keys) < 2 or sizes[0] != parts or not all(sizes[1:]):
                continue
            width = 1
            for n in sizes[1:]:
                width *= n  # type: ignore[operator]
            key = ("p", out, parts, width)
            if len(keys) == 2:
                self.same(key, keys[1])
            else:
                self.split_axes.setdefault(key, []).append(tuple(keys[1:]))
            return key
        for outs in cut.get(self.uf.find(y), ()):
            sizes = {self.size(a) for a in outs}
            if len(outs) != parts or len(sizes) != 1:
                continue
            key = ("p", out, parts, sizes.pop())
            for a in outs:
                self.same(key, a)
            return key
        return None

    def _unseen_parts(self, out: str, y: tuple, cut: dict[tuple, list[tuple[tuple, ...]]]) -> tuple | None:
        """The within-part axis of parts the slot analysis did not see: an output cut into equal
        thirds (Phi-3's q|k|v slices) or, outside attention, halves (its gate|up, chunked by the
        legacy exporter)."""
        headed = any(self.uf.find(a) == self.uf.find(y) for a in self.heads)
        for outs in cut.get(self.uf.find(y), ()):
            sizes = {self.size(a) for a in outs}
            if (len(outs) == 3 or (len(outs) == 2 and not headed)) and len(sizes) == 1 and None not in sizes:
                key = ("p", out, len(outs), sizes.pop())
                for a in outs:
                    self.same(key, a)
                return key
        return None

    def _interleaved(self, y: tuple, by_class: dict[tuple, list[tuple[tuple, ...]]],
                     cut: dict[tuple, list[tuple[tuple, ...]]]) -> tuple[int, tuple, list[tuple]] | None:
        """Parts inside each head, as (parts, heads axis, the parts' head_dim axes): an output
        split into (heads, parts, head_dim) whose parts axis is indexed (Bloom), or into
        (heads, parts x head_dim) whose second factor a Split cuts into equal parts (GPT-NeoX)."""
        find = self.uf.find
        indexed = {find(a) for a in self.cut}
        for keys in by_class.get(find(y), ()):
            sizes = [self.size(k) for k in keys]
            if None in sizes or min(sizes) < 2:  # type: ignore[type-var]
                continue
            if len(keys) == 3 and find(keys[1]) in indexed and find(keys[0]) not in indexed:
                return sizes[1], keys[0], [keys[2]]  # type: ignore[return-value]
            if len(keys) == 2 and find(keys[0]) not in indexed:
                for outs in cut.get(find(keys[1]), ()):
                    if len(outs) > 1 and len({self.size(a) for a in outs}) == 1:
                        return len(outs), keys[0], list(outs)
        return None

    def read(self, i: int, s: Slot) -> Slot:
        """A slot as the flow reads it: a fused projection with the parts the flow found (the
        slot analysis did not see them, or counted pieces that are not parts)."""
        p = self.parts.get(i, (0, False, 0))[0]
        if not p or s.layout is None or s.layout.parts == p:
            return s
        return replace(s, layout=replace(s.layout, parts=p))

    def join_factored(self) -> None:
        """Axes split into factors that the flow shows to be the same, factor by factor, are
        one space: a query's and a key's (heads, head_dim) meet in their product, a value's
        and the attention output's in the product with the attention weights, so each pair of
        projections indexes one space, as a permutation that keeps attention's function must
        treat them (head by head, ``method.alignment``). An axis merged from factors and split
        again into factors of the same lengths (heads folded into the batch for a product, then
        unfolded) has the same factors. Repeated to a fixed point: each join can enable more."""
        find = self.uf.find
        for _ in range(8):
            before = len({find(k) for k in self.uf.parent})
            same_whole: dict[tuple, list[tuple[tuple, ...]]] = {}
            for whole, splits in self.split_axes.items():
                for keys in splits:
                    same_whole.setdefault((find(whole), tuple(self.size(k) for k in keys)), []).append(keys)
            for lists in same_whole.values():
                for keys in lists[1:]:
                    for a, b in zip(lists[0], keys):
                        self.same(a, b)
            groups: dict[tuple, list[tuple]] = {}
            for whole, splits in self.split_axes.items():
                for keys in splits:
                    if all((self.size(k) or 0) > 1 for k in keys):
                        groups.setdefault(tuple(find(k) for k in keys), []).append(whole)
            for wholes in groups.values():
                for w in wholes[1:]:
                    self.same(wholes[0], w)
            if len({find(k) for k in self.uf.parent}) == before:
                return

    def _attention_near(self, value: str, forward: bool, steps: int) -> bool:
        """Whether an attention product (a MatMul of two activations) is within ``steps`` ops
        of ``value``, following consumers (or producers), stopping at weight layers: a
        Reshape there splits (or merges) heads."""
        frontier, seen = [value], set()
        for _ in range(steps):
            nxt = []
            for v in frontier:
                nodes = self.cons.get(v, []) if forward else ([self.prod[v]] if v in self.prod else [])
                for i in nodes:
                    if i in seen:
                        continue
                    seen.add(i)
                    n = self.g.node[i]
                    if n.op_type == "MatMul" and not any(x in self.const for x in n.input) and i not in self.weighted:
                        return True
                    if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
                        continue
                    nxt.extend([o for o in n.output if o] if forward else [x for x in n.input if x not in self.const])
            frontier = nxt
        return False

    # ---------------------------------------------------------------- weights
    def weight_axes(self, i: int, s: Slot) -> list[tuple | None]:
        """The value axis each canonical axis of a slot's tensor lines up with (None: its own)."""
        assert s.layout is not None
        n = self.g.node[s.consumer]
        canon = s.layout.canonical_shape(tuple(s.shape))
        y = n.output[0] if n.output else ""
        if s.role in ("linear.weight", "linear.bias", "conv.weight", "conv.bias"):
            anchor = self.g.node[s.anchor]
            conv = anchor.op_type in ("Conv", "ConvTranspose")
            out_ax = self.out_axis(s)
            in_ax = self.in_axis(s)
            lead: list[tuple | None] = []
            if s.layout.parts > 1:  # a fused projection: the parts' shared axis, when its split shows one
                lead, out_ax = [None], self.part_axes.get(i)
            elif s.layout.piece:  # one part's bias: that shared axis
                out_ax = self.part_axes.get(i)
            rest: list[tuple | None]
            if s.role.endswith(".bias"):
                rest = [out_ax]
            else:
                depthwise = conv and len(canon) > 1 and canon[1] == 1
                rest = [out_ax, None if depthwise else in_ax] + [None] * (len(canon) - len(lead) - 2)
            return (lead + rest)[:len(canon)]
        if s.role in ("norm.scale", "norm.bias", "norm.mean", "norm.var"):
            x = n.input[0]
            if n.op_type in ("BatchNormalization", "InstanceNormalization", "GroupNormalization"):
                return [self.ax(x, 1)] + [None] * (len(canon) - 1)
            return self._aligned(y or x, canon)
        if s.role == "embedding":
            return [None, self.ax(y, -1)]
        return self._aligned(y, canon) if y else [None] * len(canon)

    def _aligned(self, v: str, canon: tuple[int, ...]) -> list[tuple | None]:
        r = self.rank(v)
        out: list[tuple | None] = []
        for k in range(len(canon)):
            off = len(canon) - k
            out.append(self.ax(v, -off) if r is not None and off <= r and canon[k] > 1 else None)
        return out


def dimension_flow(model: onnx.ModelProto, gs: GraphSlots) -> DimensionFlow:
    """The channel spaces of a model's weight axes (see the module docstring)."""
    f = _Flow(model, gs)
    for n in model.graph.node:
        try:
            f.node(n)
        except _DAMAGED:  # a node whose attributes do not fit its shapes (a damaged graph): not followed
            continue
    f.fused_parts()
    f.join_factored()
    links: dict[int, list[tuple | None]] = {}
    for i, s in enumerate(gs.slots):
        if s.role is None or s.layout is None:
            continue
        s = f.read(i, unsplit(s))
        canon = s.layout.canonical_shape(tuple(s.shape))  # type: ignore[union-attr]
        try:
            axes = f.weight_axes(i, s)
        except _DAMAGED:
            axes = [None] * len(canon)
        links[i] = axes
        for k, a in enumerate(axes):
            if a is not None and canon[k] > 1 and f.size(a) == canon[k]:
                f.uf.union(("w", i, k, canon[k]), a)
            else:
                axes[k] = None
    members: dict[tuple, list[tuple[int, int]]] = {}
    for i, axes in links.items():
        for k, a in enumerate(axes):
            if a is not None:
                members.setdefault(f.uf.find(a), []).append((i, k))
    order = sorted(members, key=lambda r: min(members[r]))
    ids = {r: f"C{n}" for n, r in enumerate(order)}
    factors: dict[tuple, set] = {}
    for key, fs in f.factors.items():
        r = f.uf.find(key)
        if r in ids:
            factors.setdefault(r, set()).update(x[1] for x in fs)
    factor_spaces: dict[str, set[tuple[str | None, ...]]] = {}  # space -> its factors' spaces, per split
    for whole, splits in f.split_axes.items():
        r = f.uf.find(whole)
        if r in ids:
            for keys in splits:
                factor_spaces.setdefault(ids[r], set()).add(tuple(ids.get(f.uf.find(k)) for k in keys))
    spaces = []
    for r in order:
        first = members[r][0]
        s = f.read(first[0], unsplit(gs.slots[first[0]]))
        size = int(s.layout.canonical_shape(tuple(s.shape))[first[1]])  # type: ignore[union-attr]
        seen = []
        for i, k in members[r]:
            e = (gs.slots[i].initializer, k)
            if e not in seen:
                seen.append(e)
        spaces.append(ChannelSpace(ids[r], size, seen, [list(x) for x in sorted(factors.get(r, ()))]))
    slot_axes = {}
    for i, axes in links.items():
        names = [ids[f.uf.find(a)] if a is not None else None for a in axes]
        lay = gs.slots[i].layout
        assert lay is not None
        off = 1 if lay.parts > 1 else 0
        split = names[:off]
        for k, name in enumerate(names[off:]):   # an axis split by heads: (space/h, space/d)
            h = lay.heads[k] if k < len(lay.heads) else 0
            split += [name and name + "/h", name and name + "/d"] if h else [name]
        slot_axes[i] = split
    outputs = {}
    for o in model.graph.output:
        r = f.rank(o.name)
        if r:
            outputs[o.name] = [ids.get(f.uf.find(f.ax(o.name, k))) for k in range(r)]
    cuts = _cut_projections(f, gs)
    heads = {i: h for i, h in _projection_heads(f, gs).items() if i not in cuts}
    parts = {}
    for i, (p, inside, groups) in f.parts.items():  # parts inside heads the flow does not see: nothing to resample them by
        h = heads.get(i, (0,))[0]
        if inside and (not h or h % groups):
            cuts[i] = "its output is indexed into parts inside its heads, and the heads are not known"
            heads.pop(i, None)
        elif i not in cuts:
            parts[i] = (p, inside, groups if inside and groups != h else 0)  # inside groups of heads, or each head
    concatenated = {name: ids[f.uf.find(a)] for name, a, _ in f.concats if f.uf.find(a) in ids}
    branches = {name: lengths for name, _, lengths in f.concats if name in concatenated}
    return DimensionFlow(spaces, slot_axes, heads, groups=_head_groups(f, gs, heads), outputs=outputs,
                         factor_spaces=factor_spaces, cuts=cuts,
                         parts=parts, concatenated=concatenated,
                         branches=branches, pieces=_unequal_pieces(f, gs), unit_axes=_unit_axes(f, gs))


def unsplit(s: Slot) -> Slot:
    """The slot with its layout's heads merged back (the flow works on whole axes)."""
    if s.layout is None or not s.layout.heads:
        return s
    lay = s.layout
    off = 1 if lay.parts > 1 else 0
    kinds, i = list(lay.kinds[:off]), off
    for k in range(len(lay.heads) + len(lay.kinds)):
        if i >= len(lay.kinds):
            break
        h = lay.heads[k] if k < len(lay.heads) else 0
        kinds.append(lay.kinds[i])
        i += 2 if h else 1
    return replace(s, layout=Layout(lay.perm, tuple(kinds), lay.parts, lay.name, piece=lay.piece))


def _projection_heads(f: _Flow, gs: GraphSlots) -> dict[int, tuple[int, ...]]:
    """``Layout.heads`` for the slots of attention projections: the out axis of a projection
    whose output is split into (heads, head_dim) before attention ((parts, heads, head_dim)
    for a fused one), the in axis of one whose input merges them after attention."""
    splits: dict[tuple, set[tuple[int, ...]]] = {}
    for key, fs in f.heads.items():
        splits.setdefault(f.uf.find(key), set()).update(fs)
    out: dict[int, tuple[int, ...]] = {}
    for i, s in enumerate(gs.slots):
        if s.role not in ("linear.weight", "linear.bias") or s.layout is None or _indexed(s) \
                or CUT in s.layout.kinds:
            continue
        node = f.g.node[s.anchor]
        if node.op_type not in ("MatMul", "Gemm", "MatMulNBits") or not node.output:
            continue
        s = f.read(i, s)
        assert s.layout is not None
        canon = s.layout.canonical_shape(tuple(s.shape))
        parts = s.layout.parts
        n_out = canon[0] * canon[1] if parts > 1 else canon[0]
        h_out = 0
        # an axis split into heads in nested ways (CodeGen's blocks of heads, and its heads): the heads
        # are the finest split
        for fs in splits.get(f.uf.find(f.out_axis(s)), ()):
            if parts == 1 and len(fs) == 2 and fs[0] * fs[1] == n_out:
                h_out = max(h_out, fs[0])
            elif parts > 1 and len(fs) == 3 and fs[0] == parts and fs[0] * fs[1] * fs[2] == n_out:
                h_out = max(h_out, fs[1])
            elif s.layout.piece and len(fs) == 3 and fs[0] == s.layout.piece[1] and fs[1] * fs[2] == n_out:
                h_out = max(h_out, fs[1])  # one part's bias: the heads of a part
        if (parts > 1 or s.layout.piece) and not h_out and i in f.part_axes:  # parts cut by a Split, each into heads
            for fs in splits.get(f.uf.find(f.part_axes[i]), ()):
                if len(fs) == 2 and fs[0] * fs[1] == canon[-1 if s.role == "linear.bias" and not parts > 1 else 1]:
                    h_out = max(h_out, fs[0])
        h_in = 0
        if s.role == "linear.weight":
            n_in = canon[-1]
            x = f.in_axis(gs.slots[i])
            for fs in splits.get(f.uf.find(x), ()):
                if len(fs) == 2 and fs[0] * fs[1] == n_in:
                    h_in = max(h_in, fs[0])
        if h_out or h_in:
            out[i] = (h_out, h_in) if s.role == "linear.weight" else (h_out,)
    return out


def _unit_axes(f: _Flow, gs: GraphSlots) -> dict[int, tuple[int, ...]]:
    """``DimensionFlow.unit_axes``: a scale's length-1 axes (index axes of its broadcast layout)
    whose axis in the scaled value also has length 1. A target with one head has a (1, 1, 1)
    per-head scale where its source has (heads, 1, 1): the heads axis is a channel axis in both."""
    out: dict[int, tuple[int, ...]] = {}
    for i, s in enumerate(gs.slots):
        if s.role != "scale" or s.layout is None or s.layout.perm != tuple(range(len(s.shape))):
            continue
        n = f.g.node[s.consumer]
        r = f.rank(n.output[0]) if n.output else None
        if not r or len(s.shape) > r:
            continue
        found = tuple(k for k, d in enumerate(s.shape)
                      if d == 1 and s.layout.kinds[k] == INDEX and f.dim(n.output[0], k - len(s.shape)) == 1)
        if found:
            out[i] = found
    return out


def with_unit_axes(gs: GraphSlots, unit_axes: dict[int, tuple[int, ...]]) -> None:
    """Make the length-1 axes ``DimensionFlow.unit_axes`` names feature axes."""
    for i, axes in unit_axes.items():
        lay = gs.slots[i].layout
        assert lay is not None
        kinds = tuple(FEATURE if k in axes else kind for k, kind in enumerate(lay.kinds))
        gs.slots[i].layout = replace(lay, kinds=kinds)
        gs.slots[i].evidence.append(f"axes {list(axes)} of length 1 meet length-1 axes of what it scales: "
                                    "channels, not broadcast (dimension flow)")


def _indexed(s: Slot) -> bool:
    """Whether a projection's out or in axis is an index axis (classes, a vocabulary): not
    factored into heads or pieces, never cut. An expert stack's last axis (the experts) is
    an index axis of another kind."""
    assert s.layout is not None
    return INDEX in (s.layout.kinds[:-1] if s.experts else s.layout.kinds)


def _left_factor(s: Slot) -> bool:
    """A weight a MatMul reads as its first input (W @ x: Mamba's ``dt_proj``), [out, in]."""
    return s.role == "linear.weight" and s.op == "MatMul" and s.consumer_input == 0


def _head_sizes(f: _Flow) -> set[tuple]:
    """Classes of axes that are a head's units (the last factor of a split, or a one-head
    projection's output): a rotary embedding slices them, which cuts no projection."""
    find = f.uf.find
    sizes = {find(keys[-1]) for splits in f.split_axes.values() for keys in splits if len(keys) > 1}
    return sizes | {find(a) for a, fs in f.heads.items() if any(x[0] == 1 for x in fs)}


def _cut_projections(f: _Flow, gs: GraphSlots) -> dict[int, str]:
    """Projections whose output the graph cuts into pieces that their layout does not express,
    with why: a fused projection whose parts the flow does not confirm as the outermost
    factor (Bloom's and GPT-NeoX's q|k|v interleaved with the heads); or one read as whole
    whose output, or a factor of it other than the last (head size, where a rotary embedding
    slices), a Slice, Split or Gather cuts (Phi-3's q|k|v of unequal widths, Falcon's q heads
    then k then v). Resampling their out axis would mix the pieces: it can only be copied."""
    find = f.uf.find
    cut = {find(a) for a in f.cut}
    factors = f.splits_by_class()
    head_sizes = _head_sizes(f)
    out: dict[int, str] = {}
    for i, s in enumerate(gs.slots):
        if s.role not in ("linear.weight", "linear.bias") or s.layout is None or _indexed(s):
            continue
        node = f.g.node[s.anchor]
        if node.op_type not in ("MatMul", "Gemm", "MatMulNBits") or not node.output:
            continue
        whole = find(f.out_axis(s))
        s = f.read(i, s)
        assert s.layout is not None
        if s.layout.piece:
            if i not in f.part_axes:
                out[i] = "one part's bias of a fused projection whose parts the flow does not confirm"
            continue
        if s.layout.parts > 1:
            if i not in f.part_axes:
                out[i] = (f"its output is indexed into {s.layout.parts} parts that are not its outermost factor "
                          "(q|k|v interleaved with the heads)")
        elif whole in cut and whole not in head_sizes:  # one head's units: a rotary embedding slices them
            out[i] = "a Slice, Split or Gather takes pieces of its output (fused q|k|v of unequal widths)"
        elif any(find(k) in cut for keys in factors.get(whole, ()) for k in keys[:-1]):
            out[i] = "a Slice or Gather takes pieces of its heads axis (fused q|k|v heads)"
    return out


def _unequal_pieces(f: _Flow, gs: GraphSlots) -> dict[int, list[tuple[int, int, int, str, int]]]:
    """Projections whose output the graph cuts, side by side, into pieces of unequal widths
    that cover it (Phi-3's q | k | v slices with grouped-query attention, GPT-BigCode's
    q | k | v split with multi-query attention), or interleaves (GPT-OSS's experts' gate and
    up units, every other one): the pieces, in order. Each piece is then its own projection
    (a view of the stored weight, ``slots.cut_into_pieces``), with its own heads, as
    separate q, k and v projections are. Not when another cut of that axis crosses a piece's
    boundary (the pieces would not be the graph's)."""
    find = f.uf.find
    slices: dict[tuple, list[tuple[int, int, tuple]]] = {}
    for key, found in f.slices.items():
        slices.setdefault(find(key), []).extend(found)
    strided: dict[tuple, list[tuple[int, int, tuple]]] = {}
    for key, found in f.strided.items():
        strided.setdefault(find(key), []).extend(found)
    splits: dict[tuple, list[tuple[tuple, ...]]] = {}
    for key, outs in f.split_outs.items():
        splits.setdefault(find(key), []).extend(outs)
    cut, head_sizes = {find(a) for a in f.cut}, _head_sizes(f)
    out: dict[int, list[tuple[int, int, int, str, int]]] = {}
    for i, s in enumerate(gs.slots):
        if s.role not in ("linear.weight", "linear.bias") or s.layout is None or s.absent or s.view is not None \
                or s.quant is not None or s.layout.parts > 1 or s.layout.piece or _indexed(s):
            continue
        node = f.g.node[s.anchor]
        if node.op_type not in ("MatMul", "Gemm") or not node.output:
            continue
        whole = f.out_axis(s)
        d = f.size(whole)
        if not d or find(whole) not in cut or find(whole) in head_sizes:  # a rotary embedding's slices of one head
            continue
        found = _partition(d, splits.get(find(whole), []), slices.get(find(whole), []), f.size)
        if found:
            out[i] = [(lo, hi, 1, key[1], key[2]) for lo, hi, key in found]
        elif not slices.get(find(whole)):
            found = _interleaved_pieces(d, strided.get(find(whole), []))
            if found:
                out[i] = [(lo, d, step, key[1], key[2]) for lo, step, key in found]
    return out


def _interleaved_pieces(d: int, strided: list[tuple[int, int, tuple]]) -> list[tuple[int, int, tuple]] | None:
    """Slices taking every step-th unit of an axis from each start 0 .. step-1: all of it,
    interleaved (gate, up, gate, up, ...); None when they are not."""
    for step in sorted({st for _, st, _ in strided}):
        if d % step:
            continue
        found = [next((x for x in strided if x[0] == k and x[1] == step), None) for k in range(step)]
        if all(x is not None for x in found):
            return found  # type: ignore[return-value]
    return None


def _partition(d: int, splits: list[tuple[tuple, ...]], slices: list[tuple[int, int, tuple]],
               size) -> list[tuple[int, int, tuple]] | None:
    """Pieces of unequal widths covering [0, d) in order, from a Split's outputs or from Slices
    taken side by side; None when there are none, or when a Slice crosses their boundaries."""
    found = None
    for outs in splits:
        widths = [size(a) for a in outs]
        if len(outs) > 1 and None not in widths and sum(widths) == d and len(set(widths)) > 1:
            starts = np.cumsum([0] + widths[:-1])
            found = [(int(lo), int(lo) + w, a) for lo, w, a in zip(starts, widths, outs)]
            break
    if found is None:
        pos, pieces = 0, []
        while pos < d:
            nxt = max((x for x in slices if x[0] == pos and x[1] > pos), key=lambda x: x[1], default=None)
            if nxt is None:
                return None
            pieces.append(nxt)
            pos = nxt[1]
        if len(pieces) < 2 or pos != d or len({hi - lo for lo, hi, _ in pieces}) < 2:
            return None
        found = pieces
    bounds = {lo for lo, _, _ in found} | {d}
    for lo, hi, _ in slices:  # a cut that is not the pieces' (a slice across a boundary)
        inside = any(a <= lo and hi <= b for a, b, _ in found)
        if not inside and not (lo in bounds and min(hi, d) in bounds):
            return None
    return found


def _head_groups(f: _Flow, gs: GraphSlots, heads: dict[int, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """``Layout.groups`` of the projections whose heads axis is grouped-query attention's: the
    flow shows it merged from (groups, heads per group), its groups axis being another
    projection's heads axis (the key/value heads, repeated for each query head of their
    group). A selection of such heads must keep each query head with its key/value head."""
    find = f.uf.find
    by_class = f.splits_by_class()

    def heads_class(i: int, k: int) -> tuple | None:  # the heads axis class of slot i's axis k (0 out, 1 in)
        whole = f.out_axis(gs.slots[i]) if k == 0 else f.in_axis(gs.slots[i])
        return next((find(keys[0]) for keys in by_class.get(find(whole), ())
                     if len(keys) == 2 and f.size(keys[0]) == heads[i][k]), None)

    classes = {(i, k): heads_class(i, k) for i, h in heads.items() for k in range(len(h)) if h[k]}
    known = {c for c in classes.values() if c is not None}
    merged: dict[tuple, int] = {}   # heads class -> its groups
    kv: set[tuple] = set()          # the key/value heads of grouped query heads
    for w, splits in by_class.items():
        for keys in splits:
            if len(keys) != 2 or w not in known:
                continue
            g, per = f.size(keys[0]), f.size(keys[1])
            if not g or not per or per < 2:
                continue
            # the key/value heads' axis is another projection's heads
            if g > 1 and find(keys[0]) in known and find(keys[0]) != w:
                merged.setdefault(w, g)
                kv.add(find(keys[0]))
    # multi-query attention: one key/value head (a length-1 axis, no split to see) repeated for
    # every query head; the repeated tensor's last axis is the out axis of a one-head projection
    one_head = set()
    for i, h in heads.items():
        if h and h[0] == 1:
            one_head.add(find(f.out_axis(gs.slots[i])))
    for rep, last in f.repeats:
        w = find(rep)
        if w in known and w not in merged and find(last) in one_head:
            merged[w] = 1
    # multi-head attention: the query heads are the key/value projection's heads, one key/value
    # head per query head (groups = heads); what lets a grouped-query source keep every target
    # query head with its key/value head (the learngene records only groups of several heads)
    projections: dict[tuple, set[int]] = {}  # heads class -> the projections (nodes) whose heads it is
    for (i, _k), c in classes.items():
        if c is not None:
            projections.setdefault(c, set()).add(gs.slots[i].anchor)
    for c, nodes in projections.items():
        if c not in merged and c not in kv and len(nodes) > 1 and f.size(c):
            merged[c] = f.size(c)  # type: ignore[assignment]
    out: dict[int, tuple[int, ...]] = {}
    for i, h in heads.items():
        gr = tuple(merged.get(classes.get((i, k)), 0) if h[k] else 0 for k in range(len(h)))  # type: ignore[arg-type]
        if any(gr):
            out[i] = gr
    return out


def with_cuts(gs: GraphSlots, cuts: dict[int, str]) -> None:
    """Mark the out axis of projections whose output the graph cuts (``_cut_projections``)
    ``CUT``: copied whole when source and target agree, never resampled (else left, and why)."""
    for i, why in cuts.items():
        s = gs.slots[i]
        lay = s.layout
        assert lay is not None
        kinds = (CUT,) + lay.kinds[2 if lay.parts > 1 else 1:]  # parts the flow does not confirm: one whole axis
        heads = tuple(0 if k == 0 else h for k, h in enumerate(lay.heads))  # the out axis stays whole
        s.layout = Layout(lay.perm, kinds, 1, lay.name, heads=heads, groups=lay.groups)
        s.evidence.append(f"out axis not resampled: {why} (dimension flow)")


def with_parts(gs: GraphSlots, parts: dict[int, tuple[int, bool, int]]) -> None:
    """Give fused projections the parts the flow found (``DimensionFlow.parts``): a leading
    parts axis, inside the heads for Bloom's and GPT-NeoX's q|k|v (``Layout.interleaved``),
    inside groups of heads for CodeGen's (``Layout.inner_groups``)."""
    for i, (p, inside, groups) in parts.items():
        s = gs.slots[i]
        lay = s.layout
        assert lay is not None
        kinds = lay.kinds if lay.parts > 1 else (PARTS,) + lay.kinds
        s.layout = Layout(lay.perm, kinds, p, lay.name, heads=lay.heads, groups=lay.groups, interleaved=inside,
                          inner_groups=groups)
        s.evidence = [e for e in s.evidence if not e.startswith("fused projection of")]  # pieces, not parts
        where = f"inside each of {groups} groups of heads" if groups else "inside each head" if inside \
            else "cut from its output"
        s.evidence.append(f"fused projection of {p} parts {where} (dimension flow)")


def with_branches(gs: GraphSlots, flow: DimensionFlow) -> None:
    """Give the layers that read concatenated channels their branches (``Layout.branches``):
    per canonical axis indexing a space one Concat makes, its inputs' lengths along it. A
    space several concatenations of other branches make, or an axis split into heads, gets none."""
    lengths: dict[str, set[tuple]] = {}
    for name, sid in flow.concatenated.items():
        b = flow.branches.get(name, ())
        if len(b) > 1 and all(b):
            lengths.setdefault(sid, set()).add(tuple(b))
    for i, names in flow.slot_axes.items():
        s = gs.slots[i]
        lay = s.layout
        if lay is None or lay.heads or lay.parts > 1:
            continue
        found = tuple((k, next(iter(lengths[n]))) for k, n in enumerate(names)
                      if n in lengths and len(lengths[n]) == 1)
        if found:
            s.layout = replace(lay, branches=found)
            s.evidence.append("reads concatenated channels: " + "; ".join(
                f"axis {k} of branches {' | '.join(map(str, b))}" for k, b in found) + " (dimension flow)")


def with_heads(gs: GraphSlots, heads: dict[int, tuple[int, ...]], groups: dict[int, tuple[int, ...]] | None = None
               ) -> None:
    """Give the projections' layouts their heads (``Layout.heads``): each split axis becomes
    (heads, head_dim), both of the axis's kind; grouped-query heads their key/value groups
    (``Layout.groups``)."""
    groups = groups or {}
    for i, h in heads.items():
        s = gs.slots[i]
        lay = s.layout
        assert lay is not None
        if lay.heads:
            continue  # split by its attention op already (a packed q|k|v part)
        off = 1 if lay.parts > 1 else 0
        kinds = list(lay.kinds[:off])
        for k, kind in enumerate(lay.kinds[off:]):
            kinds += [kind, kind] if k < len(h) and h[k] else [kind]
        g = groups.get(i, ())
        s.layout = Layout(lay.perm, tuple(kinds), lay.parts, lay.name + " by heads", heads=h, groups=g,
                          interleaved=lay.interleaved, inner_groups=lay.inner_groups, piece=lay.piece)
        s.evidence.append("heads: " + " and ".join(
            f"{'out' if k == 0 else 'in'} axis {n} heads"
            + (f" in {g[k]} key/value groups" if k < len(g) and 1 < g[k] < n else
               " sharing 1 key/value head (multi-query)" if k < len(g) and g[k] == 1 < n else "")
            for k, n in enumerate(h) if n)
            + " (dimension flow)")
