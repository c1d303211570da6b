"""A model's float weights keyed by the training framework's parameter names.

front-onnx writes initialized weights into an ONNX graph, but training happens in the
framework the model came from. This module reads an ONNX model (typically a front-onnx
output) and returns its weights as a ``state_dict``-like mapping in the framework's own
layout, so that ``model.load_state_dict(...)`` works for a torch model exported by
either torch exporter. It is part of the ONNX layer and knows nothing of FRONT.

Names come from graph evidence only, never from a framework model:

- the initializer's own name, when it is a parameter name: the dynamo exporter marks
  those in ``value_info`` metadata (``pkg.torch.export.graph_signature.InputSpec.kind``);
  the legacy exporter keeps parameter names and invents ``onnx::*`` names otherwise;
- ``pkg.onnxscript.optimizer.folded_from`` (on ``value_info`` or the initializer): the
  parameter a constant-folded tensor (a transposed Linear weight) was made from;
- the module path of the consuming node (dynamo ``pkg.torch.onnx.name_scopes``, legacy
  node names ``/blocks.0/attn/qkv/MatMul``) plus the attribute its role implies
  (``weight``/``bias``/``running_mean``...), checked against the parameter placeholders
  (``%p_blocks_0_attn_qkv_weight``) in dynamo's ``pkg.torch.onnx.fx_node`` when present.

Per *slot* (one use of an initializer), so that a tensor the exporter deduplicated
(all fresh LayerNorm scales, zero biases) is written under every parameter that used it.
Layouts are undone per slot: a MatMul ``[in, out]`` weight becomes torch's ``[out, in]``.

Both torch exporters fold eval-mode BatchNorm into the preceding Conv. When the graph
names the BatchNorm module (dynamo: the Conv node's scope and fx node are the
BatchNorm's), the folded kernel is written as the Conv's weight and the BatchNorm as an
identity (weight 1, bias = folded bias, running_mean 0, running_var 1 - eps), which gives
the same eval outputs. The legacy exporter leaves no trace of the BatchNorm's name: its
folded bias is reported as unnamed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from front_onnx.analysis.slots import (
    FLOAT_TYPES,
    Slot,
    analyze_slots,
    is_generated_name,
    scope_module,
    stored_values,
)
from front_onnx.analysis.provenance import FX_KEY, SIGNATURE_KEY, SIGNATURE_LINE, Marks, _folded, props
from front_onnx.onnxio import OnnxModel, load_model

NAMES = ("torch", "onnx")

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_DEFAULT_BN_EPS = 1e-5

# role -> the torch attribute a slot of that role is stored under
_ATTRIBUTE = {"linear.weight": "weight", "linear.bias": "bias", "conv.weight": "weight", "conv.bias": "bias",
              "embedding": "weight", "norm.scale": "weight", "norm.bias": "bias", "norm.mean": "running_mean",
              "norm.var": "running_var"}
_PARAM_NAME = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")
_SPLIT = re.compile(r"__front\d+$")  # copies front-onnx made of a shared initializer: not a parameter name


@dataclass
class NamedWeights:
    """Weights keyed by framework names, and what could not be named.

    ``tensors``: name -> array in the framework's layout (contiguous, stored dtype).
    ``unnamed``: (initializer, reason) for each weight without a name.
    ``sources``: name -> (initializer or '' when synthesized, evidence).
    ``notes``: assumptions made on the way (synthesized BatchNorm statistics, ...).
    ``skipped``: float initializers that are not weights (scalar constants, ...) and why.
    ``missing``: (parameter or buffer name, reason) for each one the graph names (the dynamo
    exporter's graph signature, ``folded_from``) whose values cannot be written: only some of
    its rows or entries are in the graph, or no tensor of the graph is it.
    ``assumed``: (name, reason) for each tensor written on an assumption the graph cannot
    check (a position table the graph reads rows 0..T-1 of, taken for the whole table).
    ``expected``: the module's ``state_dict`` keys when the graph lists them (dynamo's graph
    signature: parameters and persistent buffers), else None."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    unnamed: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    assumed: list[tuple[str, str]] = field(default_factory=list)
    expected: list[str] | None = None
    names: str = "torch"

    @property
    def complete(self) -> bool:
        """Every weight of the graph is named, every parameter the graph names is written, and
        nothing written rests on an assumption the graph cannot check."""
        return not self.unnamed and not self.missing and not self.assumed

    def summary_line(self) -> str:
        n = sum(int(a.size) for a in self.tensors.values())
        return (f"{len(self.tensors)} tensors ({n} elements) named by {self.names} names; "
                f"{len(self.unnamed)} weights unnamed; {len(self.missing)} parameters missing; "
                f"{len(self.assumed)} assumed")

    def safetensors(self) -> bytes:
        """The tensors as a safetensors file (``format`` metadata: 'pt' for torch names)."""
        from safetensors.numpy import save

        return save(self.tensors, metadata={"format": "pt" if self.names == "torch" else "onnx",
                                            "names": self.names})


# ----------------------------------------------------------------------------- evidence
@dataclass
class _Fx:
    """What dynamo's ``pkg.torch.onnx.fx_node`` says about a node."""

    target: str
    placeholders: set[str]   # 'p_blocks_0_attn_qkv_weight', 'b_..._running_mean'
    numbers: list[float]     # numeric literal arguments, in order


def _fx(node: onnx.NodeProto) -> _Fx | None:
    text = props(node.metadata_props).get(FX_KEY)
    if not text:
        return None
    m = re.search(r"target=([\w.]+)\]\(args = \((.*)\), kwargs", text, re.S)
    if not m:
        return None
    args = m.group(2)
    holders = set(re.findall(r"%([pb]_\w+)", args))
    nums = [float(x) for x in re.findall(r"(?<![\w%.])(-?\d+\.\d*(?:e-?\d+)?|-?\d+e-?\d+)(?![\w.])", args)]
    return _Fx(m.group(1), holders, nums)


def _placeholder(name: str, kind: str = "p") -> str:
    return f"{kind}_{name.replace('.', '_')}"




def _signature(graph: onnx.GraphProto) -> list[str] | None:
    """The module's state_dict keys as the dynamo exporter lists them in its graph signature:
    every parameter (tied ones under each of their names) and persistent buffer, in order."""
    text = props(graph.metadata_props).get(SIGNATURE_KEY)
    if not text:
        return None
    return [target for _, kind, target, persistent in SIGNATURE_LINE.findall(text)
            if kind == "PARAMETER" or persistent != "False"]


class _Evidence:
    """Per-graph name evidence: parameter names, folded_from, node scopes, the signature."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        g = proto.graph
        self.marks = marks = Marks(g)
        self.kind, self.folded = marks.kind, marks.folded
        # dynamo graphs carry scope metadata; legacy graphs (and other exporters) do not
        self.dynamo = any(_SCOPES_KEY in props(n.metadata_props) for n in g.node)
        self._fx: dict[int, _Fx | None] = {}
        self.nodes = g.node
        self.expected = _signature(g)
        self.expected_set = set(self.expected or ())
        self.stored = {t.name for t in g.initializer}

    def fx(self, i: int) -> _Fx | None:
        if i not in self._fx:
            self._fx[i] = _fx(self.nodes[i])
        return self._fx[i]

    def explicit(self, init: str, role: str | None) -> tuple[str | None, str, str]:
        """A parameter name stated for the initializer itself: (name, evidence, how). ``how``:
        'self' (the initializer is the parameter, in the parameter's own layout), 'view' (a
        layout view the exporter computed from it: transposed, reshaped, expanded), 'entries'
        (rows or entries of it taken at constant positions: the parameter itself is not in
        the graph), 'computed' (computed from it and other parameters only), 'constant'
        (computed with buffers or other values: not a parameter; the name is the evidence)."""
        base = _SPLIT.sub("", init)   # a copy front-onnx made of a shared initializer reads as the original
        if self.kind.get(base) in ("PARAMETER", "BUFFER"):
            return base, f"initializer name (exporter marks it a {self.kind[base].lower()})", "self"
        if base in self.folded:
            init = base
            prov = _folded(self.marks, init, role)
            if prov is None or not prov.parameter:
                return None, prov.evidence if prov is not None else "", "constant"
            m = re.match(r"^(a layout view of|rows of|entries of|a [\w.]+ computed from) the parameters? (\S+?)[ ,]",
                         prov.evidence + " ")
            if not m or "," in prov.evidence.split("(exporter")[0].split("parameters ")[-1]:
                return None, prov.evidence, "constant"  # several parameters: no one name
            how = {"a layout view of": "view", "rows of": "rows", "entries of": "entries"}.get(m.group(1), "computed")
            if self.expected is not None and m.group(2) not in self.expected_set:
                return None, f"{prov.evidence}; {m.group(2)!r} is not in the exporter's graph signature", "constant"
            return m.group(2), f"folded_from: {prov.evidence}", how
        if not self.dynamo and not is_generated_name(init) and _PARAM_NAME.match(init) and not _SPLIT.search(init):
            return init, "initializer name (kept by the exporter)", "self"
        return None, "", ""


def _undo_fold(a: np.ndarray, init: str) -> tuple[np.ndarray, str]:
    """A parameter from the view of it the dynamo exporter folded into an initializer named
    after the op (``expand``, ``view_3``): expanded copies collapsed (a token expanded over
    the batch), unit axes a view added removed (a layer scale viewed as [1, C, 1, 1])."""
    op = re.sub(r"_\d+$", "", _SPLIT.sub("", init))
    if op == "expand" and a.ndim >= 2:
        for ax in range(a.ndim - 1):   # the feature axis is never an expanded one
            first = np.take(a, [0], axis=ax)
            if a.shape[ax] > 1 and np.array_equal(np.broadcast_to(first, a.shape), a):
                a = first
        return a, f"{init}: equal copies along the expanded axes collapsed to one"
    if op in ("view", "reshape", "_unsafe_view", "unsqueeze") and a.ndim >= 2 and 1 in a.shape:
        return a.reshape([d for d in a.shape if d != 1]), f"{init}: the unit axes the view added removed"
    return a, ""


def _framework_perm(s: Slot) -> tuple[int, ...]:
    """Stored -> torch axis order for a slot: canonical (out, in, k...) is torch's layout
    for Linear, Conv and Embedding; torch's ConvTranspose keeps ONNX's [in, out, k...]."""
    if s.view is not None:  # a view computed with constants: the stored tensor is the parameter
        return tuple(range(len(s.view.stored_shape)))
    perm = s.layout.perm if s.layout is not None else tuple(range(len(s.shape)))
    if s.op == "ConvTranspose" and s.role == "conv.weight" and len(perm) >= 2:
        perm = (perm[1], perm[0]) + tuple(perm[2:])
    return perm


def _batchnorm_fold(ev: _Evidence, s: Slot) -> tuple[str, float | None] | None:
    """The BatchNorm module a Conv was folded with, when the graph names it (dynamo: the
    Conv node's fx node is the BatchNorm call and its scope is the BatchNorm module)."""
    if s.op != "Conv":
        return None
    fx = ev.fx(s.consumer)
    if fx is None or "batch_norm" not in fx.target:
        return None
    module = scope_module(ev.nodes[s.consumer])
    if not module:
        return None
    eps = fx.numbers[-1] if fx.numbers else None
    return module, eps


# ----------------------------------------------------------------------------- naming
def named_weights(model: str | Path | OnnxModel, names: str = "torch") -> NamedWeights:
    """The model's float weights keyed by framework parameter names (``names="torch"``,
    torch layout) or by ONNX initializer names as stored (``names="onnx"``)."""
    if names not in NAMES:
        raise ValueError(f"names must be one of {NAMES}, got {names!r}")
    m = model if isinstance(model, OnnxModel) else load_model(model)
    if names == "onnx":
        return _onnx_names(m)
    return _torch_names(m)


def _onnx_names(m: OnnxModel) -> NamedWeights:
    out = NamedWeights(names="onnx")
    for t in m.proto.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            out.tensors[t.name] = np.array(m.array(t.name), order="C", copy=True)
            out.sources[t.name] = (t.name, "ONNX initializer, as stored")
    return out


def _torch_names(m: OnnxModel) -> NamedWeights:
    ev = _Evidence(m.proto)
    gs = analyze_slots(m.proto)
    out = NamedWeights(names="torch", expected=ev.expected)
    by_init: dict[str, list[Slot]] = {}
    for s in gs.slots:
        if not s.absent:  # a bias the graph does not have: nothing to name
            by_init.setdefault(s.initializer, []).append(s)
    arrays: dict[str, np.ndarray] = {}
    quant = {s.initializer: s for s in gs.slots if s.quant is not None}

    def value(init: str) -> np.ndarray:
        if init not in arrays:  # a quantized weight's codes are read as the weight they encode
            arrays[init] = stored_values(m.array, quant[init]) if init in quant else m.array(init)
        return arrays[init]

    def put(name: str, a: np.ndarray, init: str, why: str) -> bool:
        if name in out.tensors:
            prev = out.tensors[name]
            if prev.shape == a.shape and prev.dtype == a.dtype and np.array_equal(prev, a):
                return True   # the same parameter read twice (a weight used by two nodes of its module)
            out.unnamed.append((init, f"name {name!r} already taken by {out.sources[name][0] or 'a synthesized tensor'}"))
            return False
        out.tensors[name] = np.array(a, order="C", copy=True)  # writable: torch.from_numpy wants it
        out.sources[name] = (init, why)
        return True

    def miss(name: str, why: str) -> None:
        if name not in out.tensors and all(k != name for k, _ in out.missing):
            out.missing.append((name, why))

    folded_bn: dict[str, tuple[str, float | None, int]] = {}  # bn module -> (bias initializer, eps, channels)
    carries: list[str] = []  # Conv kernels with a folded BatchNorm whose module the graph does not name
    extras: list[tuple[str, np.ndarray, str, str]] = []
    for init, slots in by_init.items():
        weights = [s for s in slots if s.role is not None]
        role = weights[0].role if weights else None
        explicit, exp_why, how = ev.explicit(init, role)
        if how == "entries":
            shape = "x".join(str(d) for d in slots[0].shape)
            miss(explicit, f"only some of its rows or entries are in the graph: initializer {init!r} ({shape}) holds "
                           f"them as the exporter gathered them ({exp_why}); the parameter itself cannot be recovered")
            continue
        if how == "rows":
            a = value(init)
            while a.ndim > 2 and a.shape[0] == 1:
                a = a[0]
            put(explicit, a, init, f"rows of the parameter, read as the whole table ({exp_why})")
            why_rows = (f"the graph holds the {a.shape[0]} rows of it the model reads (initializer {init!r}); "
                        "taken for the whole table, which cannot be told from the graph: a table with more rows "
                        "fails a strict load on its shape")
            out.assumed.append((explicit, why_rows))
            continue
        if how == "constant" and not weights:
            out.skipped.append((init, f"constant, not a parameter: {exp_why}"))
            continue
        marked = exp_why.startswith("initializer name (exporter marks") or how in ("view", "rows", "entries", "computed")
        if not weights and not marked and any(x.reason.startswith("constant, not a parameter") for x in slots):
            # the analysis shows it a constant (a rotary cache read by GroupQueryAttention) and
            # no exporter mark says otherwise: a name that reads like a parameter's is no evidence
            out.skipped.append((init, next(x.reason for x in slots if x.reason.startswith("constant"))))
            continue
        if not weights and explicit is None:
            out.skipped.append((init, slots[0].reason or "not a weight"))
            continue
        for s in weights or slots:
            for k, (name, why) in enumerate(_slot_names(ev, s, explicit if how != "constant" else None, exp_why,
                                                        len(weights) > 1, folded_bn, out)):
                if how == "computed" and name == explicit:
                    out.notes.append(f"{name}: taken to be {init!r}, which the exporter computed from it "
                                     f"({exp_why}); the shapes are not checked against the parameter")
                if "folded BatchNorm" in why:
                    carries.append(name)
                a = value(init)
                if (how == "self" and (marked or name == explicit)) or (name == init and not is_generated_name(init)):
                    pass  # the parameter itself, stored in its own layout (a GPT-2 Conv1D weight stays [in, out])
                # else: named after its module, so in the module's layout (onnxruntime-genai stores
                # a Linear's weight ``...MatMul.weight`` as [in, out]; torch's is [out, in])
                else:
                    perm = _framework_perm(s)
                    if perm != tuple(range(a.ndim)):
                        a = np.transpose(a, perm)
                    if how == "view" and s.view is None:
                        a, note = _undo_fold(a, init)
                        if note:
                            out.notes.append(f"{name}: {note}")
                if k == 0:
                    put(name, a, init, why)
                else:
                    extras.append((name, a, init, why))
    # a tensor's own parameter name beside its module's (a tied parameter): only where no
    # module claims that name itself (an exporter that merged equal tensors named the merged
    # one after one of them: in a fresh model, all LayerNorm scales)
    for name, a, init, why in extras:
        if name not in out.tensors:
            put(name, a, init, why)
    used = set(by_init)
    for t in m.proto.graph.initializer:
        if t.data_type in FLOAT_TYPES and t.name not in used:
            out.skipped.append((t.name, "not used by any node of the main graph"))
    if carries:
        out.notes.append(f"{len(carries)} Conv kernel(s) carry a BatchNorm the exporter folded into them "
                         f"(e.g. {carries[0]}); the BatchNorm parameters cannot be named from this graph")
    # identity BatchNorms for the ones folded into Convs
    for bn, (bias_init, eps, channels) in folded_bn.items():
        bias = value(bias_init)
        dt = bias.dtype
        if eps is None:
            eps = _DEFAULT_BN_EPS
            out.notes.append(f"{bn}: eps not found in the graph; assumed {eps}")
        put(f"{bn}.weight", np.ones(channels, dt), "", "identity BatchNorm (folded into the preceding Conv)")
        put(f"{bn}.bias", bias, bias_init, "folded BatchNorm: the Conv's folded bias")
        put(f"{bn}.running_mean", np.zeros(channels, dt), "", "identity BatchNorm")
        put(f"{bn}.running_var", np.full(channels, 1.0 - eps, dt), "", f"identity BatchNorm (1 - eps, eps={eps:g})")
        put(f"{bn}.num_batches_tracked", np.array(0, np.int64), "", "identity BatchNorm")
    if folded_bn:
        out.notes.append(f"{len(folded_bn)} BatchNorm(s) folded into Convs by the exporter were written as identity "
                         "BatchNorms after the folded kernels: same eval outputs, not the original statistics")
    if ev.expected is not None:
        for k in ev.expected:
            if k not in out.tensors:
                miss(k, "listed in the exporter's graph signature, but no tensor of the graph is it: a parameter "
                        "tied to another one (the exporter keeps one of the names), or one the forward pass "
                        "does not use")
    return out


def _slot_names(ev: _Evidence, s: Slot, explicit: str | None, exp_why: str, shared: bool,
                folded_bn: dict, out: NamedWeights) -> list[tuple[str, str]]:
    """Every framework name of one slot, with its evidence; what stands against a name goes
    to ``out.unnamed``. A tied parameter has several: the name the exporter kept for the
    tensor and the module each use is made by (GPT-2's lm_head.weight is transformer.wte's)."""
    name, why = _slot_name(ev, s, explicit, exp_why, shared, folded_bn)
    if name is None:
        if why:
            out.unnamed.append((s.initializer, why))
        return []
    names = [(name, why)]
    if explicit and explicit != name and ev.expected_set and explicit in ev.expected_set and \
            "folded" not in why:
        names.append((explicit, exp_why))   # the tensor's own parameter name, beside its module's
    elif explicit and explicit != name and not ev.dynamo and "folded" not in why:
        names.append((explicit, exp_why))
    return names


def _slot_name(ev: _Evidence, s: Slot, explicit: str | None, exp_why: str, shared: bool,
               folded_bn: dict) -> tuple[str | None, str]:
    """The framework name of one slot and its evidence, or (None, why not)."""
    node = ev.nodes[s.consumer]
    bn = _batchnorm_fold(ev, s)
    if bn is not None:
        module, eps = bn
        if s.role == "conv.bias":
            folded_bn[module] = (s.initializer, eps, int(np.prod(s.shape)))
            return None, ""  # written with the identity BatchNorm
        if s.role == "conv.weight":
            if explicit:
                return explicit, f"folded Conv kernel; {exp_why}"
            own = s.initializer
            if not is_generated_name(own) and own.endswith(".weight") and _PARAM_NAME.match(own):
                return own, "folded Conv kernel; initializer name kept by the exporter"
            return None, f"Conv kernel folded with BatchNorm {module!r}: the Conv's own name is not in the graph"
    module = scope_module(node)
    attr = _ATTRIBUTE.get(s.role or "")
    scoped = f"{module}.{attr}" if module and attr else None
    fx = ev.fx(s.consumer)
    verified = scoped is not None and fx is not None and (
        _placeholder(scoped) in fx.placeholders or _placeholder(scoped, "b") in fx.placeholders)
    if verified:
        return scoped, f"module {module!r} from the node scope, checked against the fx node"
    if scoped is not None and scoped in ev.expected_set:
        return scoped, f"module {module!r} from the node scope, listed in the exporter's graph signature"
    if explicit and module and "." in explicit and ev.expected_set:
        owner, attribute = explicit.rsplit(".", 1)
        mine = f"{module}.{attribute}"
        if owner != module and mine in ev.expected_set and mine not in ev.stored:
            # the exporter merged equal tensors (a fresh model's layer scales) or tied ones
            # and kept one name: this use is in another module that has the same parameter
            # (one whose own tensor the graph stores is another: DeBERTa's relative-position
            # table, read by its LayerNorm, is not that LayerNorm's weight)
            return mine, (f"module {module!r} from the node scope, listed in the exporter's graph signature; "
                          f"the tensor is {explicit!r}'s, merged by the exporter ({exp_why})")
    if scoped and not ev.dynamo and s.op != "Conv":
        return scoped, f"module {module!r} from the node name"
    if explicit and not shared:
        return explicit, exp_why
    if not ev.dynamo and s.op == "Conv" and s.role == "conv.bias" and len(node.input) > 1 and \
            is_generated_name(node.input[1]) and not is_generated_name(s.initializer):
        # legacy: the kernel was folded with a BatchNorm, so the bias is the folded one, merged
        # by the exporter with an equal tensor of another name (zeros, in a fresh model)
        return None, (f"Conv bias created by folding a BatchNorm into Conv {module!r} (stored as the equal tensor "
                      f"{s.initializer!r}); the BatchNorm's module name is not in the graph (legacy exporter)")
    if not ev.dynamo and s.op == "Conv" and s.role in ("conv.weight", "conv.bias") and is_generated_name(s.initializer):
        # legacy: a Conv whose tensors got generated names was folded with a BatchNorm
        bias = len(node.input) > 2 and node.input[2] != ""
        if s.role == "conv.bias":
            return None, (f"Conv bias created by folding a BatchNorm into Conv {module!r}; the BatchNorm's module "
                          "name is not in the graph (legacy exporter)")
        if scoped and bias:
            return scoped, f"module {module!r} from the node name; the kernel carries a folded BatchNorm"
    if scoped and (fx is None or not ev.dynamo):
        return scoped, f"module {module!r} from the node {'scope' if ev.dynamo else 'name'}"
    if scoped:
        return scoped, f"module {module!r} from the node scope (not among the fx node's parameters)"
    if explicit:
        return explicit, exp_why
    if not module:
        return None, f"no parameter name in the graph for this {s.role or 'tensor'} (node {node.name or node.op_type!r})"
    return None, f"role {s.role!r} at node {node.name or node.op_type!r} implies no attribute name"
