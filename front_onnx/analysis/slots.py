"""Weight slots of an ONNX graph: what each use of an initializer is, read from the graph.

A *slot* is one use of an initializer, (node, input index). Its *role* and *layout* come
from the consuming op, its input index and attributes, and what its output feeds; names
and scopes are only collected as hints (``module``) for the structure finder. This module
knows nothing of DCTs or learngenes.
"""
from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from front_onnx.analysis.folding import VIEW_OPS, Constants, View, mask_entries, trace
from front_onnx.analysis.provenance import Marks, Provenance, classify
from front_onnx.numeric.quantization import BlockQuant, dequantize
from front_onnx.onnxio import attribute as _attr
from front_onnx.onnxio import constant_tensor, np_dtype

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}

# Axis kinds (docs/user-guide.md, 'Axis kinds'): feature axes are resampled by the DCT, index axes must match
# (or are copied by index), spatial axes are kernel taps, parts split a fused projection.
FEATURE, INDEX, SPATIAL, PARTS = "feature", "index", "spatial", "parts"
CUT = "cut"  # an out axis the graph cuts into pieces the layout does not express: copied whole, never resampled

# Ops an initializer may pass through unchanged on its way to the op that gives it a role.
PASS_THROUGH = {"Identity", "Cast"}
# ... and a weight may also reach it through Transposes (TF/Keras kernels, NHWC wrappers),
# which change its layout.
WEIGHT_PATH = PASS_THROUGH | {"Transpose"}
# Elementwise ops a parameter may be read through before its layer (Swin V2's per-head logit
# scale: Clip -> Exp -> Mul): each element of the result is a function of the same element of
# the parameter, so its axes are the parameter's; the stored values are transferred and the
# graph applies the ops, in the target as in the source. Clip only with constant bounds.
ELEMENTWISE = {"Exp", "Log", "Neg", "Sigmoid", "Softplus", "Tanh", "Clip"}
# roles a parameter read through them may take: broadcast tensors scaling or added to activations
_ELEMENTWISE_ROLES = {"scale", "parameter"}
# Ops whose float initializer inputs are weights of a layer; used to bound graph walks.
WEIGHT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LayerNormalization", "BatchNormalization",
              "InstanceNormalization", "GroupNormalization", "Gather", "MatMulNBits", "Attention",
              "EmbedLayerNormalization"}
# projections: a bias fused into a later op (SkipLayerNormalization, BiasGelu) belongs to the one feeding it
LINEAR_OPS = {"MatMul", "Gemm", "MatMulNBits"}
# op inputs that configure the op (sizes, bounds, exponents), never weights
_CONFIG_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Clip": (1, 2), "Range": (0, 1, 2),
                  "Pow": (1,), "RoiAlign": (1, 2), "NonMaxSuppression": (2, 3, 4), "TopK": (1,), "Trilu": (1,),
                  "CumSum": (1,), "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "DynamicQuantizeLinear": (),
                  "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
                  "CenterCropPad": (1,), "GridSample": (1,), "LpPool": ()}
# quantized ops whose integer inputs hold weights: (op -> weight inputs)
_QUANTIZED_OPS = {"MatMulNBits": (1,), "DequantizeLinear": (0,), "MatMulInteger": (1,), "QLinearMatMul": (3,),
                  "QLinearConv": (3,), "ConvInteger": (1,), "GatherBlockQuantized": (0,)}
# onnxruntime's attention ops and their rotary caches (inputs computed from the configuration)
_ROTARY_CACHES = {"GroupQueryAttention": (7, 8), "RotaryEmbedding": (2, 3), "SparseAttention": (8, 9)}
# onnxruntime's fused ops that take the bias of the projection feeding input 0: (op, input)
_FUSED_BIAS = {("SkipLayerNormalization", 4), ("SkipSimplifiedLayerNormalization", 3), ("BiasGelu", 1),
               ("FastGelu", 1), ("BiasAdd", 1), ("BiasSplitGelu", 1)}
# The bias roles: a layer without one has a zero bias (exporters drop zero biases).
BIAS_ROLES = {"linear.bias", "conv.bias"}
ABSENT_SUFFIX = "::absent_bias"
_OPTIONAL_BIAS_OPS = {"Conv", "ConvTranspose", "Gemm"}  # their input 2 is an optional bias
# normalizations, whole or decomposed (their mean or mean-square): a projection whose output
# passes one is not an output layer
_NORM_OPS = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
             "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "ReduceMean", "LpNormalization"}
_GENERATED_NAME = re.compile(r"^(val_\d+|_val_\d+|onnx::.*|.*::.*|const_\d+|Constant_\d+.*)$")


@dataclass(frozen=True)
class Layout:
    """How a stored tensor maps to canonical order (out, in, spatial...) and axis kinds.

    ``perm`` transposes the stored tensor into canonical order; then canonical axis 0 is
    split into ``parts`` equal parts (a fused projection), and each axis with ``heads[k] > 0``
    (k counting the axes after the parts axis) into (heads, head_dim), giving axes whose
    kinds are ``kinds`` (with a leading ``parts`` axis when parts > 1). Heads make a
    projection's out axis (and an output projection's in axis) resampled head by head:
    head_dim within each head, the number of heads across them.
    """

    perm: tuple[int, ...]
    kinds: tuple[str, ...]
    parts: int = 1
    name: str = ""
    heads: tuple[int, ...] = ()
    # per entry of ``heads``: the key/value groups those heads fall into (grouped-query
    # attention: a query head reads the key/value head of its group; 1: multi-query), 0 when
    # not known to be grouped;
    # the canonical shape does not change, a selection of heads keeps groups whole
    groups: tuple[int, ...] = ()
    # the parts sit inside each head (stored (heads, parts, head_dim): Bloom's, GPT-NeoX's
    # q|k|v); canonical order is (parts, heads, head_dim) all the same
    interleaved: bool = False
    # with ``interleaved``: the parts sit inside each of this many groups of heads instead (stored
    # (groups, parts, heads per group, head_dim): CodeGen's q|v|k inside each of its blocks)
    inner_groups: int = 0
    # (canonical axis, its branches' lengths) for an axis that reads channels concatenated side
    # by side (DenseNet's features): a selection takes each target branch from its own source branch
    branches: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # (part, parts) for the bias of one part of a fused projection, held as a tensor of its own
    # and concatenated with the others in the graph (timm BEiT's and EVA's q | 0 | v bias)
    piece: tuple[int, int] = ()

    def outer_parts(self, c, inverse: bool = False):
        """Stored interleaved parts (heads or groups of heads, parts, rest) along axis 0 of a
        transposed tensor as outer parts (parts, heads, head_dim), or back (``inverse``); a
        numpy array or a torch tensor (FRONT+'s penalty reads the same order)."""
        if not self.interleaved:
            return c
        h, p = self.inner_groups or self.heads[0], self.parts
        d = c.shape[0] // (h * p)
        order = (p, h, d) if inverse else (h, p, d)
        return c.reshape(order + tuple(c.shape[1:])).swapaxes(0, 1).reshape(tuple(c.shape))

    def _split(self, s: tuple[int, ...]) -> tuple[int, ...]:
        """The canonical shape from the permuted one (parts and heads split)."""
        if self.parts > 1:
            s = (self.parts, s[0] // self.parts) + tuple(s[1:])
        if not any(self.heads):
            return tuple(s)
        off = 1 if self.parts > 1 else 0
        out = list(s[:off])
        for k, n in enumerate(s[off:]):
            h = self.heads[k] if k < len(self.heads) else 0
            out += [h, n // h] if h else [n]
        return tuple(out)

    def _merged(self, c: tuple[int, ...]) -> tuple[int, ...]:
        """The permuted shape from a canonical one (heads and parts merged)."""
        off = 1 if self.parts > 1 else 0
        out, i = list(c[:off]), off
        k = 0
        while i < len(c):
            h = self.heads[k] if k < len(self.heads) else 0
            if h:
                out.append(c[i] * c[i + 1])
                i += 2
            else:
                out.append(c[i])
                i += 1
            k += 1
        if self.parts > 1:
            out = [out[0] * out[1]] + out[2:]
        return tuple(out)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        c = self.outer_parts(np.transpose(a, self.perm) if self.perm != tuple(range(a.ndim)) else a)
        split = self._split(c.shape)
        return c.reshape(split) if split != c.shape else c

    def from_canonical(self, c: np.ndarray) -> np.ndarray:
        merged = self._merged(c.shape)
        if merged != c.shape:
            c = c.reshape(merged)
        c = self.outer_parts(c, inverse=True)
        inv = tuple(int(i) for i in np.argsort(self.perm))
        return np.transpose(c, inv) if inv != tuple(range(c.ndim)) else c

    def canonical_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self._split(tuple(shape[p] for p in self.perm))

    @property
    def head_groups(self) -> dict[int, int]:
        """Canonical heads axis -> its key/value groups, for the grouped ones."""
        k_of = [k for k in range(len(self.perm)) if k < len(self.heads) and self.heads[k]]
        return {a: self.groups[k] for a, k in zip(self.head_axes, k_of)
                if k < len(self.groups) and self.groups[k] > 0}

    @property
    def head_axes(self) -> tuple[int, ...]:
        """Canonical indices of the heads axes (each followed by its head_dim axis)."""
        out, pos = [], 1 if self.parts > 1 else 0
        for k in range(len(self.perm)):
            if k < len(self.heads) and self.heads[k]:
                out.append(pos)
                pos += 2
            else:
                pos += 1
        return tuple(out)


@dataclass
class Slot:
    """One use of a float initializer."""

    node: int                 # index in graph.node of the node reading the initializer
    input: int                # input index at that node
    initializer: str
    shape: tuple[int, ...]
    dtype: int                # onnx TensorProto data type
    consumer: int             # the node that gives the role (after Identity chains)
    consumer_input: int
    op: str                   # consumer op type
    role: str | None          # None: not a weight (see ``reason``)
    layout: Layout | None
    module: str | None = None  # module path hint, from names / scopes
    module_evidence: str = ""
    reason: str = ""          # why the slot is not a weight, when role is None
    evidence: list[str] = field(default_factory=list)
    anchor: int = -1          # the node the slot's layer is placed at (a bias Add: its projection)
    provenance: str = ""      # why the initializer is taken for a parameter, or for a constant
    absent: bool = False      # a bias the layer has none of (zero): ``initializer`` is a made-up name
    restorable: bool = False  # absent, and the node has an optional input for it (Conv/Gemm input 2)
    view: View | None = None  # ``shape`` is a view of the stored tensor computed with constants (``folding``)
    candidate: tuple[str, Layout, bool] | None = None  # role, layout, mask-like: if ``pairing`` shows it a parameter
    quant: "QuantRef | None" = None  # ``initializer`` holds the packed codes of a quantized weight (MatMulNBits)
    unsupported: bool = False  # a parameter (by its provenance) that no supported op reads: counted, left
    follows: bool = False      # such a use of a tensor another use writes: it reads what that use gets
    # (value, axis) where this slot's out features are, when not at its anchor's output: the piece
    # of a fused projection's output its view produces, where the graph cuts the output into
    # pieces of unequal widths (``cut_into_pieces``); the sum an expert's bias is added to
    output_piece: tuple[str, int] | None = None
    # a mixture of experts' stacked weight or bias, gathered per token: its layout's last axis is
    # the experts (an index axis, never resampled), the others a projection's
    experts: bool = False

    @property
    def size(self) -> int:
        """Elements of the parameter this slot reads (of a view: the distinct stored ones)."""
        if self.view is not None:
            return self.view.covered
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class QuantRef:
    """A ``MatMulNBits`` weight: the slot's initializer holds its packed codes, these its
    scales and zero points; the slot's values are the dequantized [K, N] weight."""

    scales: str
    zero_points: str | None
    spec: BlockQuant

    def decode(self, read: Callable[[str], np.ndarray], packed: str) -> np.ndarray:
        zp = read(self.zero_points) if self.zero_points else None
        return dequantize(self.spec, read(packed), read(self.scales), zp)


@dataclass
class GraphSlots:
    """All float-initializer slots of a graph, in graph order."""

    slots: list[Slot]


def is_generated_name(name: str) -> bool:
    """Names exporters invent (``val_12``, ``onnx::MatMul_7``) carry no module path."""
    return bool(_GENERATED_NAME.match(name)) or not re.match(r"^[A-Za-z_][\w.\-/]*$", name)


def scope_module(node: onnx.NodeProto) -> str | None:
    """Module path of a node from exporter metadata: dynamo's name_scopes, or legacy node names."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s.strip().strip("'\"") for s in p.value.strip("[]").split(",")]
            except Exception:  # pragma: no cover - malformed metadata is only a hint
                return None
            # the last entry is the op's own name; the one before it is the innermost module
            return scopes[-2] if len(scopes) >= 2 else ""
    name = node.name
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p][:-1]
        path: list[str] = []
        last = ""
        for comp in parts:
            if last and comp.startswith(last + "."):
                path.append(comp[len(last) + 1:])  # indexed child: 'layers.1' then 'layers.1.0'
            else:
                path.append(comp)
            last = comp
        return ".".join(path)
    return None


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[int, int]]]:
    cons: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, n in enumerate(graph.node):
        for j, x in enumerate(n.input):
            if x:
                cons[x].append((i, j))
    return cons


# where the first elementwise op reads a parameter (node, input), and the elementwise ops it passes
_Through = tuple[int, int, tuple[str, ...]]


class _Analyzer:
    def __init__(self, model: onnx.ModelProto, read: Callable[[str], np.ndarray] | None = None) -> None:
        self.g = model.graph
        self.read = read
        self.marks = Marks(self.g)
        self._classified: dict[tuple[str, str], Provenance] = {}
        self.inits = {t.name: t for t in self.g.initializer}
        # weights some exporters keep in Constant nodes: their outputs act as initializers
        for n in self.g.node:
            t = constant_tensor(n)
            if t is not None and n.output and n.output[0] not in self.inits:
                self.inits[n.output[0]] = t
        self.prod = _producers(self.g)
        self.cons = _consumers(self.g)
        self.outputs = {o.name for o in self.g.output}
        self.graph_inputs = {x.name for x in self.g.input} - set(self.inits)
        # the batch size the graph was exported for (its first input's first dimension), when static
        self.batch = next((d.dim_value for i in self.g.input if i.name not in self.inits
                           for d in i.type.tensor_type.shape.dim[:1] if d.HasField("dim_value")), 0)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.constants = Constants(self.g, read, self.inits, opset)

    def _provenance(self, name: str, role: str):
        """``provenance.classify`` once per (initializer, role): a shared tensor is read once."""
        key = (name, role)
        if key not in self._classified:
            self._classified[key] = classify(name, role, is_generated_name(name), self.marks, self.read)
        return self._classified[key]

    def _learned_scalar(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether a one-element tensor is a parameter: of shape (1,) (StarReLU's scale) a name
        like a parameter's is evidence enough; of another rank (a 0-d gain, a (1, 1, 1) logit
        scale), where graphs also keep their epsilons and 1/sqrt(d) under names of their own
        (jax2onnx's ``c11_8``), the exporter must mark it a parameter or name it by its module
        path (``stages.0.0.skipinit_gain``)."""
        prov = self._provenance(name, "")
        if not prov.parameter:
            return False
        return len(shape) == 1 or prov.marked or "." in name

    # -------------------------------------------------------------- small graph queries
    def init_behind(self, value: str) -> onnx.TensorProto | None:
        """The initializer a value is, directly or through Identity/Cast nodes."""
        for _ in range(16):
            if value in self.inits:
                return self.inits[value]
            i = self.prod.get(value)
            if i is None or self.g.node[i].op_type not in WEIGHT_PATH:
                return None
            value = self.g.node[i].input[0]
        return None

    def is_weight(self, value: str) -> bool:
        """A float tensor of more than one element held in an initializer."""
        t = self.init_behind(value)
        return t is not None and t.data_type in FLOAT_TYPES and len(t.dims) >= 1 and int(np.prod(t.dims)) > 1

    def _static_int_values(self, name: str) -> list[int | None] | None:
        """Trailing-known values of an int64 shape tensor: from an initializer, a Constant,
        or a Concat of such pieces (dynamic pieces give None and hide what precedes)."""
        if name in self.inits:
            t = self.inits[name]
            if t.data_type in (TensorProto.INT64, TensorProto.INT32) and not t.external_data:
                return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
            return None
        if name not in self.prod:
            return None
        n = self.g.node[self.prod[name]]
        if n.op_type == "Constant":  # value (a tensor), or value_ints / value_int (the unoptimized dynamo export's)
            v = _attr(n, "value")
            if isinstance(v, onnx.TensorProto):
                return [int(x) for x in numpy_helper.to_array(v).reshape(-1)]
            ints = _attr(n, "value_ints")
            if ints is not None:
                return [int(x) for x in ints]
            one = _attr(n, "value_int")
            return None if one is None else [int(one)]
        if n.op_type == "Unsqueeze":
            return self._static_int_values(n.input[0])
        if n.op_type == "Concat":
            out: list[int | None] = []
            for x in n.input:
                v = self._static_int_values(x)
                out = [None] if v is None else out + v  # unknown length piece: forget the prefix
            return out
        return None

    def assembled_bias(self, value: str) -> list[str] | None:
        """The inputs of a Concat that builds a bias from equal 1-D pieces held in
        initializers (timm BEiT's ``cat(q_bias, k_bias, v_bias)``, its k piece a zero
        buffer), or None."""
        n = self.g.node[self.prod[value]] if value in self.prod else None
        if n is None or n.op_type != "Concat" or len(n.input) < 2:
            return None
        dims = set()
        for x in n.input:
            t = self.init_behind(x)
            if t is None or t.data_type not in FLOAT_TYPES or len(t.dims) != 1:
                return None
            dims.add(int(t.dims[0]))
        return list(n.input) if len(dims) == 1 else None

    def bias_piece(self, ci: int, cj: int) -> tuple[int, int, int] | None:
        """(projection node, part, parts) when input ``cj`` of Concat ``ci`` is one piece of a
        bias assembled for a projection (``assembled_bias``) that an Add adds to its output."""
        n = self.g.node[ci]
        if n.op_type != "Concat" or not n.output or self.assembled_bias(n.output[0]) is None:
            return None
        for ai, aj in self.cons.get(n.output[0], []):
            if self.g.node[ai].op_type == "Add":
                lin = self.linear_input_is_linear(ai, aj)
                if lin is not None:
                    return lin, cj, len(n.input)
        return None

    def _follow(self, value: str, skip_bias: bool = True) -> list[tuple[int, int]]:
        """Consumers of a value, looking through a bias Add (Add with an initializer, or with a
        bias assembled from initializers)."""
        result = []
        for ci, cj in self.cons.get(value, []):
            n = self.g.node[ci]
            if skip_bias and n.op_type == "Add" and any(self.is_weight(x) or self.assembled_bias(x)
                                                        for x in n.input):
                result.extend(self._follow(n.output[0], skip_bias=False))
            else:
                result.append((ci, cj))
        return result

    def fused_parts(self, node_idx: int, out_features: int) -> tuple[int, str]:
        """Whether a projection's output is split into equal parts (fused qkv), with evidence."""
        out = self.g.node[node_idx].output[0]
        for ci, _ in self._follow(out):
            n = self.g.node[ci]
            if n.op_type == "Split":
                k = len(n.output)
                sizes = self._static_int_values(n.input[1]) if len(n.input) > 1 and n.input[1] else None
                if k > 1 and (sizes is None or len(set(sizes)) == 1):
                    return k, f"output split into {k} equal parts"
            if n.op_type == "SplitToSequence":
                k = self._sequence_parts(n, out_features)
                if k > 1:
                    return k, f"output split into a sequence of {k} equal parts"
            if n.op_type == "Reshape":
                p = self._gathered_parts(n.output[0], width=out_features)
                if p > 1 and out_features % p == 0:
                    return p, f"output reshaped and indexed into {p} parts"
        return 1, ""

    def _sequence_parts(self, n: onnx.NodeProto, width: int | None) -> int:
        """How many equal parts a SplitToSequence makes (the dynamo exporter's ``split`` /
        ``chunk`` without its optimizer): its ``split`` input is a list of equal lengths, or
        one length (a chunk size) that divides ``width``; 1 when that is not known."""
        sizes = self._static_int_values(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        if not sizes or None in sizes:
            return 1
        if len(sizes) > 1:
            return len(sizes) if len(set(sizes)) == 1 else 1
        chunk = sizes[0]
        if width is None or chunk is None or chunk <= 0 or width % chunk:
            return 1
        return width // chunk

    def _gathered_parts(self, value: str, depth: int = 3, width: int | None = None) -> int:
        """How many equal parts a reshaped projection output is indexed into: scalar-index
        Gathers on one axis (through Transposes) taking indices 0..p-1 (the legacy exporter's
        ``unbind``), unit Slices on one axis taking [i, i+1) for i in 0..p-1 (the dynamo
        exporter's), or a p-way Split or SplitToSequence (``width``: the projection's out
        features, which a chunk size divides)."""
        by_axis: dict[int, set[int]] = defaultdict(set)
        for ci, _ in self.cons.get(value, []):
            n = self.g.node[ci]
            if n.op_type == "Gather" and len(n.input) > 1:
                idx = self._static_int_values(n.input[1])
                if idx is not None and len(idx) == 1 and idx[0] is not None:
                    by_axis[int(_attr(n, "axis", 0))].add(int(idx[0]))
            elif n.op_type == "Slice" and len(n.input) >= 3:
                unit = self._unit_slice(n)
                if unit is not None:
                    by_axis[unit[0]].add(unit[1])
            elif n.op_type == "Split" and len(n.output) > 1:
                return len(n.output)
            elif n.op_type == "SplitToSequence":
                return self._sequence_parts(n, width)
            elif n.op_type in ("Transpose", "Identity") and depth > 0:
                p = self._gathered_parts(n.output[0], depth - 1, width)
                if p > 1:
                    return p
        for idx in by_axis.values():
            if len(idx) > 1 and idx == set(range(len(idx))):
                return len(idx)
        return 1

    def _unit_slice(self, n: onnx.NodeProto) -> tuple[int, int] | None:
        """(axis, i) when a Slice takes exactly [i, i+1) of one axis with step 1."""
        starts, ends = self._static_int_values(n.input[1]), self._static_int_values(n.input[2])
        axes = self._static_int_values(n.input[3]) if len(n.input) > 3 and n.input[3] else [0]
        steps = self._static_int_values(n.input[4]) if len(n.input) > 4 and n.input[4] else [1]
        if not (starts and ends and axes and steps) or not (len(starts) == len(ends) == len(axes) == len(steps) == 1):
            return None
        if None in (starts[0], ends[0], axes[0], steps[0]) or steps[0] != 1 or ends[0] != starts[0] + 1:
            return None
        return int(axes[0]), int(starts[0])

    def feeds_output(self, node_idx: int) -> bool:
        """True when the node's output reaches a graph output without another weight layer,
        a residual Add or a normalization: its output axis then indexes classes or
        vocabulary. (A block's last projection reaches an output too, e.g. an encoder's
        hidden states, but through the residual stream and a norm: that axis is the width.)"""
        seen: set[int] = set()
        queue = deque([node_idx])
        while queue:
            i = queue.popleft()
            for o in self.g.node[i].output:
                if o in self.outputs and not self.is_cache(o):
                    return True
                for ci, _ in self.cons.get(o, []):
                    if ci in seen:
                        continue
                    seen.add(ci)
                    n = self.g.node[ci]
                    if n.op_type in WEIGHT_OPS and (n.op_type == "MatMulNBits" or any(self.is_weight(x) for x in n.input)):
                        continue
                    if n.op_type in _NORM_OPS:
                        continue
                    if n.op_type in ("Add", "Sub") and not any(self.init_behind(x) is not None for x in n.input):
                        continue  # a residual: two activations meet
                    queue.append(ci)
        return False

    def is_cache(self, value: str) -> bool:
        """A graph output that is a key/value cache (``present``): an attention op's cache
        output, or a Concat of a graph input (the past) with the new keys or values. A
        projection reaching one is not an output layer."""
        i = self.prod.get(value)
        if i is None:
            return False
        n = self.g.node[i]
        if n.op_type in ("GroupQueryAttention", "MultiHeadAttention", "Attention", "SparseAttention"):
            return value != n.output[0]
        return n.op_type == "Concat" and any(x in self.graph_inputs for x in n.input)

    def is_normalized(self, value: str, depth: int = 6) -> bool:
        """Whether a value is a normalized activation: produced (within a few ops) by
        InstanceNormalization, or by ReduceMean together with Sqrt or Reciprocal (LayerNorm
        decomposed by tf2onnx, jax2onnx and others)."""
        seen, frontier, ops = set(), [value], set()
        for _ in range(depth):
            nxt = []
            for v in frontier:
                i = self.prod.get(v)
                if i is None or i in seen:
                    continue
                seen.add(i)
                n = self.g.node[i]
                if n.op_type in WEIGHT_OPS or (n.op_type == "Mul" and any(self.is_weight(x) for x in n.input)):
                    continue  # another layer: stop there
                ops.add(n.op_type)
                nxt.extend(n.input)
            frontier = nxt
        return "InstanceNormalization" in ops or ("ReduceMean" in ops and bool(ops & {"Sqrt", "Reciprocal"}))

    def norm_scale_before(self, add_idx: int, init_input: int) -> int | None:
        """For an Add with a weight, the decomposed normalization's scaling Mul feeding it."""
        n = self.g.node[add_idx]
        for j, x in enumerate(n.input):
            p = self.prod.get(x) if j != init_input else None
            if p is None:
                continue
            m = self.g.node[p]
            if m.op_type == "Mul" and any(self.is_weight(y) for y in m.input):
                other = [y for y in m.input if not self.is_weight(y)]
                if other and self.is_normalized(other[0]):
                    return p
        return None

    def linear_input_is_linear(self, add_idx: int, init_input: int) -> int | None:
        """For an Add with an initializer, the index of the MatMul/Gemm producing the other input."""
        n = self.g.node[add_idx]
        if (n.op_type, init_input) in _FUSED_BIAS:
            return self.linear_producer(n.input[0])
        for j, x in enumerate(n.input):
            if j != init_input:
                lin = self.linear_producer(x)
                if lin is not None:
                    return lin
        return None

    # -------------------------------------------------------------- roles
    def role_of(self, ci: int, cj: int, shape: tuple[int, ...], scalar: bool = False
                ) -> tuple[str | None, Layout | None, str, list[str]]:
        """The role and layout of a tensor of ``shape`` read as input ``cj`` of node ``ci``, or
        None and why not. One element is a constant (an epsilon, a scale factor) unless
        ``scalar``: the caller has shown it a parameter (StarReLU's learned scale and bias)."""
        n = self.g.node[ci]
        op, rank = n.op_type, len(shape)
        ev = [f"{op} input {cj}"]
        size = int(np.prod(shape, dtype=np.int64))
        per_channel = (op in ("Conv", "ConvTranspose") and cj == 2) or \
            (op in ("BatchNormalization", "InstanceNormalization") and cj >= 1)
        if size == 0 or (size == 1 and not scalar and not per_channel):
            return None, None, "scalar constant, not a weight", ev  # (per channel inputs: one channel)
        if op == "MatMul" and cj == 1 and rank == 2:
            return "linear.weight", Layout((1, 0), (FEATURE, FEATURE), name="[in, out]"), "", ev
        if op == "MatMul" and cj == 0 and rank == 2 and len(n.input) > 1 and not self.constants.is_constant(n.input[1]):
            # W @ x (Mamba's dt_proj): the weight's rows are the output's units, its columns x's
            return "linear.weight", Layout((0, 1), (FEATURE, FEATURE), name="[out, in] (W @ x)"), "", \
                ev + ["the left factor: out axis the output's second to last, in axis x's"]
        if op == "Gemm" and cj == 1 and rank == 2:
            if _attr(n, "transB", 0):
                return "linear.weight", Layout((0, 1), (FEATURE, FEATURE), name="[out, in]"), "", ev + ["transB=1"]
            return "linear.weight", Layout((1, 0), (FEATURE, FEATURE), name="[in, out]"), "", ev + ["transB=0"]
        if op == "Gemm" and cj == 2 and rank == 1:
            return "linear.bias", Layout((0,), (FEATURE,), name="[out]"), "", ev
        if op == "Conv" and cj == 1 and rank >= 3:
            # one input channel per group (depthwise) indexes nothing; a plain conv of one input
            # channel (a squeeze-excite expansion of a narrow model) is a feature axis of width 1
            depthwise = shape[1] == 1 and _attr(n, "group", 1) > 1
            kinds = (FEATURE, INDEX if depthwise else FEATURE) + (SPATIAL,) * (rank - 2)
            return "conv.weight", Layout(tuple(range(rank)), kinds, name="[out, in/groups, k...]"), "", ev
        if op == "ConvTranspose" and cj == 1 and rank >= 3:
            kinds = (FEATURE, INDEX if shape[0] == 1 and _attr(n, "group", 1) > 1 else FEATURE) + (SPATIAL,) * (rank - 2)
            return "conv.weight", Layout((1, 0) + tuple(range(2, rank)), kinds, name="[in, out/groups, k...]"), "", ev
        if op in ("Conv", "ConvTranspose") and cj == 2 and rank == 1:
            return "conv.bias", Layout((0,), (FEATURE,), name="[out]"), "", ev
        if op in _ROTARY_CACHES and cj in _ROTARY_CACHES[op]:
            return None, None, f"constant, not a parameter: a rotary cache ({op} input {cj})", ev
        if (op, cj) in _FUSED_BIAS and rank == 1:
            if self.linear_producer(n.input[0]) is not None:
                return "linear.bias", Layout((0,), (FEATURE,), name="[out]"), "", ev + ["the bias of the projection feeding it"]
            return "parameter", _broadcast_layout(shape), "", ev
        if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") and cj in (2, 3):
            return ("norm.scale" if cj == 2 else "norm.bias"), _broadcast_layout(shape), "", ev
        if op == "EmbedLayerNormalization" and cj in (2, 3, 4) and rank == 2:
            return "embedding", Layout((0, 1), (INDEX, FEATURE), name="[vocab, dim]"), "", ev
        if op == "EmbedLayerNormalization" and cj in (5, 6):
            return ("norm.scale" if cj == 5 else "norm.bias"), _broadcast_layout(shape), "", ev
        if op in ("Attention", "MultiHeadAttention", "PackedAttention") and ((op == "Attention" and cj in (1, 2))
                                                                         or (op == "MultiHeadAttention" and cj == 3)):
            sizes = _attr(n, "qkv_hidden_sizes", None)
            if sizes and len(set(sizes)) > 1:
                return None, None, f"unsupported consumer {op} input {cj} (q, k and v of different widths)", ev
            heads = int(_attr(n, "num_heads", 0))
            weight = cj == 1 and op == "Attention"
            if (rank, weight) not in ((2, True), (1, False)) or shape[-1] % 3 or (heads and (shape[-1] // 3) % heads):
                return None, None, f"unsupported consumer {op} input {cj} (shape {list(shape)})", ev
            perm, kinds = ((1, 0), (FEATURE, FEATURE)) if weight else ((0,), (FEATURE,))
            h = (heads,) + (0,) * (len(perm) - 1) if heads else ()
            kinds = (PARTS,) + ((FEATURE, FEATURE) if heads else (FEATURE,)) + kinds[1:]
            ev = ev + [f"fused q, k and v of {heads} heads ({op})"]
            return ("linear.weight" if weight else "linear.bias"), Layout(perm, kinds, 3, "[in, 3*out]" if weight
                                                                          else "[3*out]", heads=h), "", ev
        if op in ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
                  "SimplifiedLayerNormalization", "RMSNormalization") and cj >= 1:
            names = {1: "norm.scale", 2: "norm.bias", 3: "norm.mean", 4: "norm.var"}
            return names.get(cj, f"norm.input{cj}"), _broadcast_layout(shape), "", ev
        if op in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization") and cj == 0 and rank >= 2:
            # a table the graph normalizes before use (DeBERTa's relative-position embeddings)
            return "parameter", _broadcast_layout(shape), "", ev + ["a table the graph normalizes"]
        if op == "Gather" and cj == 0 and rank == 2 and _attr(n, "axis", 0) == 0:
            return "embedding", Layout((0, 1), (INDEX, FEATURE), name="[vocab, dim]"), "", ev
        if op in ("Add", "Sub") and cj in (0, 1):
            lin = self.linear_input_is_linear(ci, cj)
            if lin is not None and rank == 1:
                return "linear.bias", Layout((0,), (FEATURE,), name="[out]"), "", ev + ["after a projection"]
            if self.norm_scale_before(ci, cj) is not None:
                return "norm.bias", _broadcast_layout(shape), "", ev + ["after a decomposed normalization's scale"]
            return "parameter", _broadcast_layout(shape), "", ev
        if op == "Mul" and cj in (0, 1) and self.is_normalized(n.input[1 - cj]):
            return "norm.scale", _broadcast_layout(shape), "", ev + ["scales a decomposed normalization"]
        if op in ("Mul", "Div") and cj in (0, 1):
            return "scale", _broadcast_layout(shape), "", ev
        if op == "Concat" and rank == 1:
            piece = self.bias_piece(ci, cj)
            if piece is not None:
                _, k, p = piece
                return "linear.bias", Layout((0,), (FEATURE,), name=f"[out] (part {k} of {p})", piece=(k, p)), "", \
                    ev + [f"part {k} of {p} of a bias assembled by Concat for a fused projection"]
        if (op == "Concat" or (op in ("Expand", "Tile") and cj == 0)):
            return "token", _broadcast_layout(shape), "", ev
        if op == "Where" and cj in (1, 2):  # a table chosen per position (masked relative-position biases)
            return "parameter", _broadcast_layout(shape), "", ev
        if op in ("Shape", "Size"):
            return None, None, f"only its shape is read ({op}), not its values", ev
        if op == "CastLike" and cj == 1:
            return None, None, "only its type is read (CastLike input 1), not its values", ev
        if cj in _CONFIG_INPUTS.get(op, ()):
            return None, None, f"a configuration input of {op} (input {cj}), not a weight", ev
        return None, None, f"unsupported consumer {op} input {cj}", ev

    def _uses(self, ni: int, j: int, rank: int) -> list[tuple[int, int, list[int], _Through | None]]:
        """Where input ``j`` of node ``ni`` (an initializer) is used: (node, input, view, first)
        past the ops it passes through unchanged or transposed (``view``: the use sees the stored
        tensor transposed so) and through elementwise ops (``ELEMENTWISE``; ``first``: where
        the first of them reads it and the ops, None without one). A pass-through with several consumers
        is one use per consumer: the legacy exporter routes a layer applied more than once
        (ALBERT's shared layers) and a fresh model's equal tensors through Identity nodes."""
        out: list[tuple[int, int, list[int], _Through | None]] = []
        todo: list[tuple[int, int, list[int], int, _Through | None]] = [(ni, j, list(range(rank)), 0, None)]
        while todo and len(out) < 64:
            ci, cj, view, hops, first = todo.pop(0)
            n = self.g.node[ci]
            elementwise = cj == 0 and n.op_type in ELEMENTWISE and n.domain in ("", "ai.onnx") and \
                all(self.constants.is_constant(x) for x in n.input[1:] if x)
            routed = self._routed_axis(n, cj, view) if first is None else None
            nxt = self.cons.get(n.output[0], []) if (n.op_type in WEIGHT_PATH or elementwise or routed is not None) \
                and n.output else []
            if not nxt or hops >= 16 or (len(nxt) > 1 and n.op_type not in PASS_THROUGH):
                out.append((ci, cj, view, first))
                continue
            if n.op_type == "Transpose":
                q = _attr(n, "perm", None) or list(reversed(range(len(view))))
                view = [view[k] for k in q]
            if routed is not None:  # the gathered axis: its stored axis, as -(axis + 1)
                view = [-(v + 1) if k == routed else v for k, v in enumerate(view)]
            if elementwise:
                first = (first[0], first[1], first[2] + (n.op_type,)) if first else (ci, cj, (n.op_type,))
            todo.extend((a, b, view, hops + 1, first) for a, b in nxt)
        return out

    def _routed_axis(self, n: onnx.NodeProto, cj: int, view: list[int]) -> int | None:
        """The axis of a weight a Gather or GatherND takes entries of at computed indices (a
        mixture of experts' weights, taken per token by its router: ``gate_up_proj[expert_ids]``),
        the entries staying whole; None for any other node, or a second such gather."""
        if n.op_type not in ("Gather", "GatherND") or cj != 0 or len(view) not in (2, 3) or len(n.input) < 2 \
                or self.constants.is_constant(n.input[1]) or any(v < 0 for v in view):
            return None
        if not self._routed(n.input[1]):
            return None  # a table's lookup (an embedding, at the input's ids) is the Gather's own
        if not self._feeds(n.output[0], "MatMul" if len(view) == 3 else "Add"):
            return None
        if n.op_type == "GatherND":
            return 0 if _attr(n, "batch_dims", 0) == 0 else None  # indices (S, 1): rows of the leading axis
        return int(_attr(n, "axis", 0)) % len(view)

    def _routed(self, indices: str) -> bool:
        """Whether gather indices are a router's choice: computed from a TopK's indices."""
        todo, seen = [indices], set()
        while todo and len(seen) < 16:
            v = todo.pop()
            i = self.prod.get(v)
            if i is None or i in seen:
                continue
            seen.add(i)
            n = self.g.node[i]
            if n.op_type == "TopK":
                return v == n.output[1] if len(n.output) > 1 else False
            todo.extend(x for x in n.input if x and not self.constants.is_constant(x))
        return False

    def _feeds(self, value: str, op: str) -> bool:
        """Whether a value reaches a node of type ``op`` through layout ops only (one consumer each)."""
        for _ in range(8):
            uses = self.cons.get(value, [])
            if len(uses) != 1:
                return False
            n = self.g.node[uses[0][0]]
            if n.op_type == op:
                return True
            if n.op_type not in WEIGHT_PATH or not n.output:
                return False
            value = n.output[0]
        return False

    def _routed_slot(self, ni: int, j: int, x: str, t: onnx.TensorProto, shape: tuple[int, ...],
                     ci: int, cj: int, view: list[int]) -> Slot:
        """A weight taken per token from a stack of experts' weights, read by a batched MatMul:
        a projection of each expert, canonical (out, in, experts); the experts axis is an index
        (the target must have as many). Anything else such a gather feeds is left, and why."""
        n = self.g.node[ci]
        experts = next(-v - 1 for v in view if v < 0)
        ev = [f"{n.op_type} input {cj}", f"taken per token from axis {experts} (the experts) by computed indices"]
        role, layout, reason = None, None, f"a parameter gathered at computed indices and read by {n.op_type} " \
            f"(input {cj}), an op front-onnx does not transfer so: left as it is"
        anchor, output = ci, None
        if n.op_type == "MatMul" and cj in (0, 1) and len(view) == 3 and view[0] < 0:
            out_k, in_k = (1, 2) if cj == 0 else (2, 1)  # W (S, out, in) @ x, or x @ W (S, in, out)
            role = "linear.weight"
            layout = Layout((view[out_k], view[in_k], experts), (FEATURE, FEATURE, INDEX), name="[out, in, experts]")
            reason = ""
            ev.append("one projection per expert (a batched MatMul of the tokens' experts)")
        elif n.op_type == "Add" and cj in (0, 1) and len(view) == 2 and view[0] < 0:
            lin = self._routed_projection(n.input[1 - cj])
            if lin is not None:  # each expert's bias, added to its projection's output (where its units are)
                role, reason, anchor, output = "linear.bias", "", lin, (n.output[0], -1)
                layout = Layout((view[1], experts), (FEATURE, INDEX), name="[out, experts]")
                ev.append("one bias per expert, added to the output of the tokens' experts' projection")
        prov = self._provenance(x, role or "")
        if not prov.parameter:
            role, layout = None, None
            reason = f"constant, not a parameter: {prov.evidence}"
        return Slot(ni, j, x, shape, t.data_type, ci, cj, n.op_type, role, layout, reason=reason, evidence=ev,
                    anchor=anchor, provenance=prov.evidence, unsupported=role is None and prov.parameter,
                    output_piece=output if role else None, experts=role is not None)

    def _routed_projection(self, value: str) -> int | None:
        """The batched MatMul of experts' weights a value comes from, through Squeeze,
        Unsqueeze and Reshape."""
        for _ in range(4):
            i = self.prod.get(value)
            if i is None:
                return None
            n = self.g.node[i]
            if n.op_type == "MatMul":
                return i
            if n.op_type not in ("Squeeze", "Unsqueeze", "Reshape"):
                return None
            value = n.input[0]
        return None

    def _slot(self, slots: list[Slot], ni: int, j: int, x: str, t: onnx.TensorProto, shape: tuple[int, ...],
              ci: int, cj: int, view: list[int], first: _Through | None = None) -> None:
        """The slot (or a view's slots) of one use of initializer ``x``, read as input ``j`` of
        node ``ni`` and used as input ``cj`` of node ``ci``."""
        if any(v < 0 for v in view):
            slots.append(self._routed_slot(ni, j, x, t, shape, ci, cj, view))
            return
        vshape = tuple(shape[k] for k in view)
        if first is not None:  # read through elementwise ops: a broadcast role where they end, else read there
            scalar = int(np.prod(shape, dtype=np.int64)) == 1 and not is_generated_name(x) and \
                self._learned_scalar(x, shape)
            role, _, _, _ = self.role_of(ci, cj, vshape, scalar=scalar)
            through = (f"read through {' -> '.join(first[2])} (elementwise: the stored values are transferred, "
                       "the graph applies the ops)")
            if role in _ELEMENTWISE_ROLES and self._provenance(x, role).parameter:
                elementwise = [through]
            else:  # then through view ops (Mamba's A_log: Exp -> Neg -> Unsqueeze -> Mul), or read where they start
                folded = self._view_slots(ni, j, x, t, shape, ci, cj, vshape, start=(ci, cj)) \
                    if self.g.node[ci].op_type in VIEW_OPS - WEIGHT_PATH and view == list(range(len(shape))) else []
                if folded and all(f.role in _ELEMENTWISE_ROLES for f in folded):
                    for f in folded:
                        f.evidence.append(through)
                    slots.extend(folded)
                    return
                ci, cj, elementwise = first[0], first[1], []
        else:
            elementwise = []
        if self.g.node[ci].op_type in VIEW_OPS - WEIGHT_PATH and not elementwise:
            folded = self._view_slots(ni, j, x, t, shape, ci, cj, vshape)
            if folded:
                slots.extend(folded)
                return
        role, layout, reason, ev = self.role_of(ci, cj, vshape)
        ev = ev + elementwise
        provenance = ""
        masked = None
        candidate = None
        unsupported = False
        if role is None and reason.startswith("scalar constant") and int(np.prod(shape, dtype=np.int64)) == 1 \
                and not is_generated_name(x) and self._learned_scalar(x, shape):
            # a learned scalar, named as the module's parameter: one weight, written as one (a
            # generated name is a constant, even one the exporter says it folded from a tensor)
            role, layout, reason, ev = self.role_of(ci, cj, vshape, scalar=True)
        if role is None and reason.startswith("unsupported consumer"):
            prov = self._provenance(x, "")
            if prov.parameter:  # a parameter all the same: counted, and left with the reason
                unsupported, provenance = True, prov.evidence
                reason = (f"a parameter read by {self.g.node[ci].op_type} (input {cj}), an op front-onnx "
                          "does not transfer: left as it is")
            else:
                provenance = prov.evidence
                reason = f"{reason}; {'' if prov.unproven else 'a constant: '}{prov.evidence}"
        if role is not None:
            prov = self._provenance(x, role)
            provenance = prov.evidence
            if not prov.parameter:
                if prov.unproven and layout is not None:
                    candidate = (role, layout, prov.masked)
                role, layout, reason = None, None, f"constant, not a parameter: {prov.evidence}"
                if prov.derived:  # trained values all the same: counted, and left with the reason
                    unsupported = True
                    reason = (f"computed by the exporter from module tensors ({', '.join(prov.derived[:3])}) and "
                              "other values: left as it is (the transfer does not write it: it keeps the values "
                              "this model's own tensors gave it)")
            elif prov.masked and self.read is not None:
                values = np.asarray(self.read(x))
                m = mask_entries(values)
                masked = View(["mask"], shape, None, None, m, covered=int((~m).sum()))
                if _batch_copies(values, self.batch):  # one copy per batch row: one parameter view
                    masked = View(["mask", "batch copies"], shape,
                                  np.arange(int(np.prod(shape[1:]))).reshape((1,) + shape[1:]), None,
                                  m[:1], covered=int((~m[:1]).sum()), copies=shape[0])
                    layout = _broadcast_layout((1,) + shape[1:])
                    ev.append(f"{shape[0]} identical copies along the batch axis: one parameter view")
        if layout is not None and view != list(range(len(shape))):
            layout = Layout(tuple(view[k] for k in layout.perm), layout.kinds, layout.parts,
                            f"{layout.name} through Transpose{tuple(view)}")
            ev.append(f"reached through Transpose (stored axes {tuple(view)})")
        slots.append(Slot(ni, j, x, tuple(masked.index.shape) if masked is not None and masked.index is not None
                          else shape, t.data_type, ci, cj, self.g.node[ci].op_type,
                          role, layout, reason=reason, evidence=ev, anchor=ci, provenance=provenance,
                          view=masked, candidate=candidate, unsupported=unsupported))

    def analyze(self) -> GraphSlots:
        slots: list[Slot] = []
        for ni, node in enumerate(self.g.node):
            quantized = node.op_type == "MatMulNBits" and self._quant_slot(ni, node, slots)
            for j, x in enumerate(node.input):
                if quantized and 1 <= j <= 4:
                    continue  # codes, scales, zero points and group index: the quantized weight's slot
                t = self.inits.get(x)
                if t is None or t.data_type not in FLOAT_TYPES:
                    continue  # integer, shape, axes and bool tensors are never touched
                shape = tuple(int(d) for d in t.dims)
                for ci, cj, view, first in self._uses(ni, j, len(shape)):
                    self._slot(slots, ni, j, x, t, shape, ci, cj, view, first)
            if node.op_type in _QUANTIZED_OPS and not quantized:
                slots.extend(self._unsupported_quantized(ni, node))
        shared: dict[str, list[int]] = defaultdict(list)
        for k, s in enumerate(slots):
            shared[s.initializer].append(k)
        shared = {k: v for k, v in shared.items() if len(v) > 1}
        self._assign_modules(slots, shared)
        self._refine_layouts(slots)
        slots = self._split_packed_attention(slots)
        weights: dict[str, list[Slot]] = defaultdict(list)
        for s in slots:
            if s.role is not None:
                weights[s.initializer].append(s)
        for s in slots:
            if s.unsupported and s.initializer in weights:  # written through its other use
                s.follows = True   # it reads what that use gets: the writer splits nothing for it
                total = int(np.prod(s.view.stored_shape if s.view is not None else s.shape, dtype=np.int64))
                covered = _covered(weights[s.initializer], total)
                if covered >= total:
                    s.unsupported = False  # counted through the other use
                    s.reason += "; the tensor is written through its other use"
                else:  # views of a part of it (HF BEiT's relative-position table: the class rows)
                    s.reason += (f"; its other uses write {covered} of its {total} elements, the rest keep "
                                 "the target's values")
        slots.extend(self._absent_biases(slots))
        return GraphSlots(slots)

    def _packed_heads(self, lin: int) -> tuple[int, int] | None:
        """(query heads, key/value heads) when a projection's output is a ``GroupQueryAttention``'s
        packed q|k|v input (its key and value inputs empty), else None."""
        for ci, cj in self._follow(self.g.node[lin].output[0]):
            n = self.g.node[ci]
            ins = list(n.input) + ["", ""]
            if n.op_type == "GroupQueryAttention" and cj == 0 and not ins[1] and not ins[2]:
                h, kv = int(_attr(n, "num_heads", 0)), int(_attr(n, "kv_num_heads", 0))
                return (h, kv) if h and kv else None
        return None

    def _split_packed_attention(self, slots: list[Slot]) -> list[Slot]:
        """A projection packed as q|k|v for ``GroupQueryAttention`` (onnxruntime-genai) has
        parts of different widths (heads*d, kv_heads*d, kv_heads*d): its weight and bias are
        read as three views, one per part, each split by its heads, so that q, k and v are
        resampled apart, as separate projections are."""
        out: list[Slot] = []
        cache: dict[int, tuple[int, int] | None] = {}
        for s in slots:
            lin = s.consumer if s.role == "linear.weight" else s.anchor if s.role == "linear.bias" else -1
            if lin < 0 or s.layout is None or s.view is not None or s.layout.parts > 1:
                out.append(s)
                continue
            if lin not in cache:
                cache[lin] = self._packed_heads(lin)
            heads = cache[lin]
            weight = s.role == "linear.weight"
            if heads is None or (weight and (len(s.shape) != 2 or s.layout.perm != (1, 0))) or \
                    (not weight and len(s.shape) != 1):
                out.append(s)
                continue
            h, kv = heads
            width = s.shape[-1]
            if width % (h + 2 * kv):
                out.append(s)
                continue
            d = width // (h + 2 * kv)
            start = 0
            for part, n in (("q", h), ("k", kv), ("v", kv)):
                piece = _out_piece(s, start, start + n * d, f"{part} of packed q|k|v")
                start += n * d
                lay = Layout(s.layout.perm, (FEATURE,) * (len(s.shape) + 1), name=f"{s.layout.name} {part} part by heads",
                             heads=(n,) + (0,) * (len(s.shape) - 1))
                out.append(replace(piece, layout=lay, evidence=s.evidence + [
                    f"the {part} part of a q|k|v projection packed for GroupQueryAttention ({h} query heads, "
                    f"{kv} key/value heads of {d})"]))
        return out

    def _quant_slot(self, ni: int, node: onnx.NodeProto, slots: list[Slot]) -> bool:
        """The slot of a ``MatMulNBits`` weight (``QuantRef``): its values are the dequantized
        [K, N] matrix, a projection weight like a MatMul's. False when its codes or scales
        are not stored in the graph (or a group index reorders K: not supported)."""
        ins = list(node.input) + [""] * 6
        b, sc, zp, gidx = ins[1], ins[2], ins[3], ins[4]
        tb, ts = self.inits.get(b), self.inits.get(sc)
        if tb is None or ts is None or ts.data_type not in FLOAT_TYPES or gidx:
            return False
        if zp and (zp not in self.inits or self.inits[zp].data_type != TensorProto.UINT8):
            return False  # float zero points: not supported, left
        k, n = int(_attr(node, "K", 0)), int(_attr(node, "N", 0))
        spec = BlockQuant(k, n, int(_attr(node, "bits", 4)), int(_attr(node, "block_size", 0)), bool(zp))
        if not (k and n and spec.block_size and spec.bits in (2, 4, 8)) or tuple(tb.dims) not in (
                spec.packed_shape(), (spec.n, spec.k_blocks * spec.blob_size), (spec.n * spec.k_blocks * spec.blob_size,)):
            return False
        ev = ["MatMulNBits input 1", f"{spec.bits}-bit codes in blocks of {spec.block_size} with scales"
              + (" and zero points" if zp else "") + ": read dequantized, written requantized"]
        slots.append(Slot(ni, 1, b, (k, n), ts.data_type, ni, 1, node.op_type, "linear.weight",
                          Layout((1, 0), (FEATURE, FEATURE), name="[in, out] (dequantized)"), evidence=ev, anchor=ni,
                          provenance="a quantized projection weight (MatMulNBits)",
                          quant=QuantRef(sc, zp or None, spec)))
        return True

    def _unsupported_quantized(self, ni: int, node: onnx.NodeProto) -> list[Slot]:
        """Slots for the integer weights of quantized ops the transfer does not read (a
        DequantizeLinear's codes, a MatMulNBits with a group index): parameters, counted in
        the totals and left with the reason."""
        out = []
        for j in _QUANTIZED_OPS[node.op_type]:
            x = node.input[j] if j < len(node.input) else ""
            t = self.inits.get(x)
            if t is None or t.data_type in FLOAT_TYPES or int(np.prod(t.dims)) <= 1:
                continue
            out.append(Slot(ni, j, x, tuple(int(d) for d in t.dims), t.data_type, ni, j, node.op_type, None, None,
                            reason=f"a quantized parameter read by {node.op_type} (input {j}), a form front-onnx "
                                   "does not transfer: left as it is", evidence=[f"{node.op_type} input {j}"],
                            anchor=ni, provenance="quantized weights are parameters", unsupported=True))
        return out

    def linear_producer(self, value: str) -> int | None:
        """The projection (MatMul, Gemm, MatMulNBits with a weight) producing a value, if any."""
        i = self.prod.get(value)
        if i is None:
            return None
        p = self.g.node[i]
        if p.op_type not in LINEAR_OPS or len(p.input) < 2:
            return None
        weight = p.input[1] in self.inits if p.op_type == "MatMulNBits" else self.is_weight(p.input[1])
        return i if weight else None

    def _view_slots(self, ni: int, j: int, x: str, t: onnx.TensorProto, shape: tuple[int, ...],
                    ci: int, cj: int, vshape: tuple[int, ...], start: tuple[int, int] | None = None) -> list[Slot]:
        """Slots of a parameter that reaches activations through view ops with constant
        inputs (``folding``): one per consumer of the view, with the role and layout the
        view has there, as an exporter that folds constants would store it. [] when there
        is no such view, or the frontier gives it no role (then the first op's reading stands).
        ``start``: where the view ops begin, when elementwise ops come first (values of the
        stored shape)."""
        at = start or (ni, j)
        tr = trace(self.g, self.constants, self.cons, self.outputs, at[0], at[1], shape,
                   cast_like=not is_generated_name(x))
        if tr is None:
            return []
        first_role, _, _, _ = self.role_of(ci, cj, vshape)
        masked = mask_entries(tr.offset) if tr.offset is not None else None
        idx = tr.index if masked is None else tr.index[~masked]
        out = []
        for fi, fj in tr.frontier:
            role, layout, reason, ev = self.role_of(fi, fj, tuple(tr.index.shape))
            if role is None:
                return []
            prov = self._provenance(x, first_role or role)
            candidate = None
            if not prov.parameter:
                if prov.unproven and layout is not None and not prov.masked:
                    candidate = (role, layout, False)
                role, layout, reason = None, None, f"constant, not a parameter: {prov.evidence}"
            what = " -> ".join(tr.ops)
            view = View(tr.ops, shape, tr.index, tr.offset, masked, covered=int(np.unique(idx).size))
            ev = ev + [f"a view of the stored {list(shape)} through {what} (constant inputs)"]
            out.append(Slot(ni, j, x, tuple(tr.index.shape), t.data_type, fi, fj, self.g.node[fi].op_type,
                            role, layout, reason=reason, evidence=ev, anchor=fi, provenance=prov.evidence,
                            view=view, candidate=candidate))
        return out

    def _absent_biases(self, slots: list[Slot]) -> list[Slot]:
        """A slot for the zero bias of every projection or convolution that has none: the
        exporter drops all-zero bias inputs (and whole Adds of zeros), so a fresh model's
        export lacks biases its trained counterpart has. Such a slot reads as zeros; when
        the node has an optional bias input (Conv, ConvTranspose, Gemm) a value can be
        restored into it."""
        biased = {s.anchor for s in slots if s.role in BIAS_ROLES}
        # a projection whose output an Add adds a stored vector to has a bias, even one that is
        # no parameter (a q | 0 | v bias the exporter folded from a parameter and a buffer)
        for ai, n in enumerate(self.g.node):
            if n.op_type == "Add":
                for j, x in enumerate(n.input):
                    if (self.is_weight(x) and len(self.init_behind(x).dims) == 1) or self.assembled_bias(x):  # type: ignore[union-attr]
                        lin = self.linear_input_is_linear(ai, j)
                        if lin is not None:
                            biased.add(lin)
        out = []
        for w in slots:
            if w.role not in ("linear.weight", "conv.weight") or w.layout is None or w.anchor in biased:
                continue
            node = self.g.node[w.consumer]
            canon = w.layout.canonical_shape(tuple(w.shape))
            if w.role == "conv.weight":
                out_ch = canon[0] * (int(_attr(node, "group", 1)) if node.op_type == "ConvTranspose" else 1)
                kinds: tuple[str, ...] = (w.layout.kinds[0],)
                if node.op_type == "ConvTranspose" and out_ch != canon[0]:
                    kinds = (FEATURE,)
                layout = Layout((0,), kinds, 1, "[out] (absent: zero)")
                role = "conv.bias"
            else:
                parts = w.layout.parts
                out_ch = canon[0] * canon[1] if parts > 1 else canon[0]
                kinds = w.layout.kinds[:2] if parts > 1 else w.layout.kinds[:1]
                layout = Layout((0,), kinds, parts, "[out] (absent: zero)")
                role = "linear.bias"
            restorable = node.op_type in _OPTIONAL_BIAS_OPS and (len(node.input) < 3 or not node.input[2])
            biased.add(w.anchor)
            out.append(Slot(w.consumer, 2 if restorable else -1, w.initializer + ABSENT_SUFFIX, (int(out_ch),),
                            w.dtype, w.consumer, 2, w.op, role, layout, w.module, w.module_evidence,
                            evidence=[f"{node.op_type} without a bias: a zero bias"], anchor=w.anchor,
                            provenance="absent: the layer's bias is zero", absent=True, restorable=restorable))
        return out

    def _assign_modules(self, slots: list[Slot], shared: dict[str, list[int]]) -> None:
        """Module path per consumer node: from an unshared, exporter-kept parameter name of
        one of its slots (``blocks.0.attn.qkv.bias`` -> ``blocks.0.attn.qkv``), else from the
        node's scope metadata or legacy node name."""
        by_node: dict[int, list[Slot]] = defaultdict(list)
        for s in slots:
            by_node[s.consumer].append(s)
        # an Add bias and the MatMul it follows belong to the same module
        for ci, group in by_node.items():
            module, evidence = None, ""
            for s in sorted(group, key=lambda s: s.consumer_input):
                if s.initializer not in shared and not is_generated_name(s.initializer):
                    module = s.initializer.rsplit(".", 1)[0] if "." in s.initializer else s.initializer
                    evidence = f"initializer name '{s.initializer}'"
                    break
            if module is None:
                sm = scope_module(self.g.node[ci])
                if sm:
                    module, evidence = sm, "node scope"
            for s in group:
                s.module, s.module_evidence = module, evidence
        # bias Adds inherit the projection's module when they have none of their own
        for s in slots:
            if s.role == "linear.bias" and _bias_after(s) and not s.module:
                lin = self.linear_input_is_linear(s.consumer, s.consumer_input)
                if lin is not None and by_node.get(lin):
                    s.module = by_node[lin][0].module
                    s.module_evidence = "bias of " + (s.module or "?")

    def _refine_layouts(self, slots: list[Slot]) -> None:
        """Fused projections (parts) and output layers (index out axis), per consumer node;
        a decomposed normalization's bias joins its scale's layer."""
        for s in slots:
            if s.role == "norm.bias" and s.op in ("Add", "Sub"):
                mul = self.norm_scale_before(s.consumer, s.consumer_input)
                if mul is not None:
                    s.anchor = mul
        head_cache: dict[int, bool] = {}
        parts_cache: dict[int, tuple[int, str]] = {}
        for s in slots:
            if s.role not in ("linear.weight", "linear.bias") or s.layout is None:
                continue
            lin = s.consumer
            if s.layout.piece:  # one part's bias: the projection's parts come from its weight
                piece = self.bias_piece(s.consumer, s.consumer_input)
                if piece is not None:
                    s.anchor = piece[0]
                continue
            if s.role == "linear.bias" and _bias_after(s):
                found = self.linear_input_is_linear(s.consumer, s.consumer_input)
                if found is None:
                    continue
                lin = found
                s.anchor = lin
            out_features = s.layout.canonical_shape(s.shape)[0]
            if lin not in head_cache:
                head_cache[lin] = self.feeds_output(lin)
            if head_cache[lin]:
                kinds = (INDEX,) + s.layout.kinds[1:]
                s.layout = Layout(s.layout.perm, kinds, 1, s.layout.name)
                s.evidence.append("output layer: out axis is a model output's (classes, vocabulary or returned features)")
                continue
            if s.layout.parts > 1:
                continue  # a fused op's own q, k, v parts (Attention)
            if lin not in parts_cache:
                parts_cache[lin] = self.fused_parts(lin, out_features)
            p, why = parts_cache[lin]
            if p > 1 and out_features % p == 0:
                s.layout = Layout(s.layout.perm, (PARTS,) + s.layout.kinds, p, s.layout.name)
                s.evidence.append(f"fused projection of {p} parts ({why})")


def _out_piece(s: Slot, start: int, end: int, what: str, step: int = 1) -> Slot:
    """The slot as a view of output features [start, end) (every ``step``-th) of its stored
    tensor (the stored axis its layout makes canonical axis 0): one piece of a fused projection."""
    assert s.layout is not None
    index = np.arange(int(np.prod(s.shape))).reshape(s.shape)
    rows = np.take(index, np.arange(start, end, step), axis=s.layout.perm[0])
    view = View([what], tuple(s.shape), rows, None, None, covered=int(rows.size))
    return replace(s, shape=tuple(rows.shape), view=view, evidence=list(s.evidence))


def cut_into_pieces(gs: GraphSlots, pieces: dict[int, list[tuple[int, int, int, str, int]]]) -> GraphSlots:
    """The slots with each projection whose output the graph cuts into pieces of unequal widths,
    or interleaves (``DimensionFlow.pieces``), read as one view per piece, each producing its
    piece (``Slot.output_piece``): resampled apart, as separate q, k and v (or gate and up)
    projections are. The writer puts the pieces back into the one stored tensor."""
    out: list[Slot] = []
    for i, s in enumerate(gs.slots):
        found = pieces.get(i)
        if not found:
            out.append(s)
            continue
        assert s.layout is not None
        width = found[-1][1]
        for k, (start, end, step, value, axis) in enumerate(found):
            where = f"{start}:{end}" if step == 1 else f"{start}::{step}"
            what = f"piece {k} of {len(found)} (features {where} of {width})"
            piece = _out_piece(s, start, end, what, step)
            piece.layout = replace(s.layout, name=f"{s.layout.name} {what}")
            piece.output_piece = (value, axis)
            how = "pieces of unequal widths" if step == 1 else "interleaved pieces"
            piece.evidence.append(f"{what} of a fused projection whose output the graph cuts into {how} "
                                  "(dimension flow)")
            out.append(piece)
    return GraphSlots(out)


def _covered(uses: list[Slot], total: int) -> int:
    """How many stored elements of one tensor these uses read (a use without a view: all)."""
    if any(u.view is None or u.view.index is None for u in uses):
        return total
    return int(np.unique(np.concatenate([np.asarray(u.view.index).reshape(-1) for u in uses])).size)  # type: ignore[union-attr]


def _bias_after(s: Slot) -> bool:
    """A bias that a later op adds to a projection's output (an Add, or a fused op's bias input)."""
    return s.op in ("Add", "Sub") or (s.op, s.consumer_input) in _FUSED_BIAS


def _batch_copies(a: np.ndarray, batch: int) -> bool:
    """Whether a tensor of rank >= 3 is ``batch`` > 1 identical copies along its first axis:
    a parameter view an exporter expanded to the batch it traced (T5's position bias folded
    with the causal mask), which another exporter leaves to broadcasting."""
    return a.ndim >= 3 and batch > 1 and a.shape[0] == batch and \
        bool(np.all(a.reshape(batch, -1).view(np.uint8 if a.dtype.itemsize == 1 else f"u{a.dtype.itemsize}")
                    == a.reshape(batch, -1)[:1].view(np.uint8 if a.dtype.itemsize == 1 else f"u{a.dtype.itemsize}")))


def _broadcast_layout(shape: tuple[int, ...]) -> Layout:
    """Parameter tensors (norm scales, biases, position tables, tokens): axes of length 1
    broadcast and are index axes; the others are feature axes."""
    kinds = tuple(INDEX if d == 1 else FEATURE for d in shape)
    return Layout(tuple(range(len(shape))), kinds, name="[" + ", ".join("1" if d == 1 else "d" for d in shape) + "]")


def slot_array(read: Callable[[str], np.ndarray], s: Slot) -> np.ndarray:
    """A slot's values, of ``s.shape``: zeros for an absent bias, a view's elements for a view."""
    if s.absent:
        return np.zeros(s.shape, np_dtype(s.dtype))
    stored = stored_values(read, s)
    if s.view is not None:
        return s.view.read(stored)
    return stored


def stored_values(read: Callable[[str], np.ndarray], s: Slot) -> np.ndarray:
    """The values of the tensor a slot's initializer stores: a quantized weight's codes
    dequantized, anything else as read."""
    return s.quant.decode(read, s.initializer) if s.quant is not None else read(s.initializer)


def slot_dtype(s: Slot) -> np.dtype:
    """The numpy dtype a slot's values are stored in."""
    return np_dtype(s.dtype)


def analyze_slots(model: onnx.ModelProto, read: Callable[[str], np.ndarray] | None = None) -> GraphSlots:
    """Every float-initializer slot of the main graph with its role and layout; a slot whose
    initializer the evidence does not show to be a parameter gets no role (see
    ``provenance``). ``read`` gives an initializer's values, for the value evidence."""
    return _Analyzer(model, read).analyze()
