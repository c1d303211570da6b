"""Validation of an initialized model with onnxruntime: does it run where it will be
deployed, and are its numbers sane?

Checks, each pass / fail / warn / skip with its figure:
  files      every external data file is present, long enough and inside the model's folder,
             and every initializer's declared size agrees with its data; a failure is
             recorded in the report and raised as ModelFilesError (an OnnxFileError carrying
             the report), since nothing else can be checked on a model that cannot be read
  checker    onnx.checker full check (shape inference included)
  structure  the graph equals the reference's, apart from initializer values and names
  run        onnxruntime runs it on the chosen device
  finite     every output finite, with the reference's shapes
  scale      std of each output and of each block's output vs the source (or reference)
  agreement  outputs equal the source's (identical architectures only)
  latency    median of a few runs after warm-up (information)
"""
from __future__ import annotations

import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from front_onnx import progress
from front_onnx.analysis import analyze
from front_onnx.analysis.slots import PASS_THROUGH
from front_onnx.errors import DeviceError, ModelFilesError, OnnxFileError
from front_onnx.onnxio import OnnxModel, check_tensors, external_data_files, load_model
from front_onnx.validation.runtime import Session, open_session, with_outputs

SCALE_RANGE = (0.1, 10.0)
TOLERANCE = {TensorProto.FLOAT: 1e-5, TensorProto.DOUBLE: 1e-9, TensorProto.FLOAT16: 1e-2,
             TensorProto.BFLOAT16: 5e-2}
DEFAULT_DIMS = {"batch": 1, "sequence": 16, "past": 4}
_INDEX_PATH_OPS = PASS_THROUGH | {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"}


@dataclass
class Check:
    name: str
    status: str                  # 'pass', 'fail', 'warn', 'skip', 'info'
    figure: str = ""
    detail: str = ""
    hard: bool = True            # a failure makes the model invalid


@dataclass
class ValidationReport:
    model: str
    device: str                  # what was asked for
    provider: str                # what actually ran
    provider_note: str           # why CUDA was not used, when it was wanted
    checks: list[Check] = field(default_factory=list)
    strict: bool = False
    latency_ms: float | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail" or (self.strict and c.status == "warn")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def warning_lines(self) -> list[str]:
        """One line per warning: an activation scale with the range it fell outside, any
        other check with what it found."""
        lo, hi = SCALE_RANGE
        return [f"{c.name}: {c.figure} ({c.detail}) is outside [{lo:g}, {hi:g}]" if c.name.startswith("scale")
                else f"{c.name}: {c.detail}" for c in self.checks if c.status == "warn"]

    def provider_line(self, verbose: bool = False) -> str:
        """The provider that ran the model. Why CUDA was not used is said only when CUDA was
        asked for (``device='cuda'``), or when ``auto`` fell back to CPU and ``verbose``: a
        CPU machine is not told about CUDA on every run. ``provider_note`` always has it."""
        if self.provider.startswith("CUDA"):
            return f"provider: {self.provider}"
        if self.device == "cuda" or (self.device == "auto" and verbose):
            why = f" ({self.provider_note})" if self.provider_note else ""
            return f"provider: {self.provider}; CUDA not used{why}"
        return f"provider: {self.provider}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "device": self.device, "provider": self.provider,
                "provider_note": self.provider_note, "strict": self.strict, "latency_ms": self.latency_ms,
                "inputs": self.inputs, "checks": [asdict(c) for c in self.checks]}

    def table(self, verbose: bool = False) -> str:
        rows = [("check", "result", "figure", "detail")]
        for c in self.checks:
            status = c.status.upper() if c.status in ("fail", "warn") else c.status
            rows.append((c.name, status, c.figure, c.detail))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [self.provider_line(verbose)]
        lines += ["  ".join(r[i].ljust(w[i]) for i in range(3)) + "  " + r[3] for r in rows]
        verdict = "valid" if self.ok else "INVALID: " + "; ".join(f"{c.name}: {c.detail or c.figure}"
                                                                 for c in self.failed)
        lines.append(f"{self.model}: {verdict}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- inputs
def _dims_of(vi: onnx.ValueInfoProto, dims: Mapping[str, int], position: int,
             tied: Mapping[int, int] | None = None) -> list[int]:
    out = []
    for k, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.dim_param and d.dim_param in dims:
            out.append(int(dims[d.dim_param]))
        elif tied and k in tied:  # a weight's shape says the length (a Conv's input channels)
            out.append(int(tied[k]))
        else:
            name = d.dim_param.lower()
            if "batch" in name or (k == 0 and not name):
                out.append(dims.get("batch", DEFAULT_DIMS["batch"]))
            elif k == 0 and not any(s in name for s in ("seq", "len", "token", "time")):
                out.append(dims.get("batch", DEFAULT_DIMS["batch"]))
            else:
                out.append(dims.get("sequence", DEFAULT_DIMS["sequence"]))
    return out


_ELEMENTWISE = PASS_THROUGH | {"Sub", "Div", "Mul", "Add"}  # e.g. an image normalized before the first Conv


def _weight_tied_dims(model: onnx.ModelProto, input_name: str) -> dict[int, int]:
    """Axis -> length of a float input's axes that a weight's shape fixes: the channel axis
    of an input read (through elementwise ops) by a Conv (its kernel's input channels times
    the groups), the last axis of one read by a MatMul or Gemm with a weight."""
    g = model.graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    cons: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for j, x in enumerate(n.input):
            cons.setdefault(x, []).append((n, j))
    rank = len(next((i for i in g.input if i.name == input_name)).type.tensor_type.shape.dim)
    frontier, seen = [input_name], {input_name}
    for _ in range(8):
        nxt = []
        for v in frontier:
            for n, j in cons.get(v, []):
                w = dims.get(n.input[1]) if len(n.input) > 1 else None
                group = next((a.i for a in n.attribute if a.name == "group"), 1)
                if n.op_type == "Conv" and j == 0 and w is not None and len(w) >= 3 and rank >= 2:
                    return {1: int(w[1]) * int(group), **_patch_grid(g, n, w, rank)}
                if n.op_type == "MatMul" and j == 0 and w is not None and len(w) == 2:
                    return {rank - 1: int(w[0])}
                if n.op_type == "Gemm" and j == 0 and w is not None and len(w) == 2:
                    trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                    return {rank - 1: int(w[1] if trans_b else w[0])}
                if n.op_type in _ELEMENTWISE:
                    for o in n.output:
                        if o not in seen:
                            seen.add(o)
                            nxt.append(o)
        frontier = nxt
    return {}


def _patch_grid(g: onnx.GraphProto, conv: onnx.NodeProto, w: list[int], rank: int) -> dict[int, int]:
    """The image size of a vision transformer's input: its patch embedding (a Conv whose
    stride is its kernel) makes tokens a position table [1, T, width] holds, after up to two
    class/distillation tokens; a square grid of n x n patches is n times the patch size."""
    if rank != 4 or len(w) != 4:
        return {}
    strides = next((list(a.ints) for a in conv.attribute if a.name == "strides"), [1, 1])
    if list(strides) != list(w[2:]) or w[2] != w[3]:
        return {}
    tables = sorted((list(t.dims) for t in g.initializer), key=lambda d: -d[1] if len(d) == 3 else 0)
    for dims in tables:  # the longest table: a class token [1, 1, width] is one too
        if len(dims) == 3 and dims[0] == 1 and dims[2] == w[0] and dims[1] > 2:
            for extra in (0, 1, 2):
                n = int(round((dims[1] - extra) ** 0.5))
                if n > 0 and n * n == dims[1] - extra:
                    return {2: n * int(w[2]), 3: n * int(w[3])}
    return {}


def _table_rows(model: onnx.ModelProto, input_name: str) -> int | None:
    """The fewest rows among the Gather tables an integer input indexes (through reshapes)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for j, x in enumerate(n.input):
            cons.setdefault(x, []).append((n, j))

    def table(value: str) -> onnx.TensorProto | None:
        for _ in range(16):
            if value in inits:
                return inits[value]
            n = prod.get(value)
            if n is None or n.op_type not in PASS_THROUGH:
                return None
            value = n.input[0]
        return None

    rows: list[int] = []
    frontier, seen = [input_name], {input_name}
    while frontier:
        v = frontier.pop()
        for n, j in cons.get(v, []):
            if n.op_type == "Gather" and j == 1:
                t = table(n.input[0])
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                if t is not None and len(t.dims) > axis:
                    rows.append(int(t.dims[axis]))
            elif n.op_type in _INDEX_PATH_OPS and j == 0:
                for o in n.output:
                    if o not in seen:
                        seen.add(o)
                        frontier.append(o)
    return min(rows) if rows else None


def _symbol_length(name: str, dims: Mapping[str, int]) -> int:
    """The length of a symbolic dimension from its name: a decoder's past (``past_sequence_length``),
    total = past + new (``total_sequence_length``), a sum (``past_sequence_length + sequence_length``,
    optimum), a batch, else a sequence."""
    if name in dims:
        return int(dims[name])
    if "+" in name:
        return sum(int(t) if t.strip().isdigit() else _symbol_length(t.strip(), dims) for t in name.split("+"))
    low = name.lower()
    past, seq = dims.get("past", DEFAULT_DIMS["past"]), dims.get("sequence", DEFAULT_DIMS["sequence"])
    if "past" in low:
        return int(past)
    if "total" in low:
        return int(past) + int(seq)
    if "batch" in low:
        return int(dims.get("batch", DEFAULT_DIMS["batch"]))
    return int(seq)


def _cache_head_size(model: onnx.ModelProto, input_name: str) -> int | None:
    """The head size of a key/value cache input that a ``GroupQueryAttention`` reads: twice
    its rotary cache's width, or its packed q|k|v projection's width over the heads."""
    g = model.graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type != "GroupQueryAttention" or input_name not in list(n.input)[3:5]:
            continue
        attrs = {a.name: a.i for a in n.attribute}
        ins = list(n.input) + [""] * 9
        if attrs.get("do_rotary") and ins[7] in dims and len(dims[ins[7]]) == 2:
            return 2 * int(dims[ins[7]][1])
        q = prod.get(ins[0])
        heads = attrs.get("num_heads", 0) + (2 * attrs.get("kv_num_heads", 0) if not ins[1] else 0)
        if q is not None and q.op_type == "MatMul" and q.input[1] in dims and heads:
            return int(dims[q.input[1]][-1]) // heads
    return None


def sample_batch(model: onnx.ModelProto, batch: int) -> int:
    """``batch``, or 1 for a decoder with past key values: onnxruntime's GroupQueryAttention
    refuses a batch above 1 when a past and several new tokens are given."""
    return 1 if any("past" in vi.name.lower() for vi in model.graph.input) else batch


def synthesize_inputs(model: onnx.ModelProto, dims: Mapping[str, int] | None = None, seed: int = 0,
                      given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs from the graph's input types: floats N(0, 1); integers that index
    Gather tables inside the table; attention masks ones; position ids a range; other ints 0.
    A symbolic length a weight fixes (a Conv's input channels) takes the weight's. A decoder
    with past key values gets consistent lengths: the past (``dims['past']``, 4) in the cache
    inputs, past + new in the attention mask, positions that continue the past, and the
    cache's head size from the attention op that reads it."""
    dims = dict(dims or {})
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:  # symbols named for a past, a total or a sum get their lengths
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param not in dims and any(
                    k in d.dim_param.lower() for k in ("past", "total", "+")):
                dims[d.dim_param] = _symbol_length(d.dim_param, dims)
    has_past = any("past" in vi.name.lower() for vi in model.graph.input)
    feeds: dict[str, np.ndarray] = {}
    for pos, vi in enumerate(i for i in model.graph.input if i.name not in inits):
        if given is not None and vi.name in given:
            feeds[vi.name] = np.asarray(given[vi.name])
            continue
        elem = vi.type.tensor_type.elem_type
        tied = _weight_tied_dims(model, vi.name) if elem in (TensorProto.FLOAT, TensorProto.FLOAT16,
                                                             TensorProto.BFLOAT16, TensorProto.DOUBLE) else {}
        shape_dims = vi.type.tensor_type.shape.dim
        if len(shape_dims) == 4 and shape_dims[3].dim_param and shape_dims[3].dim_param not in dims:
            head = _cache_head_size(model, vi.name)
            if head:
                tied = {**tied, 3: head}
        shape = _dims_of(vi, dims, pos, tied)
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        rng = np.random.default_rng([seed, zlib.crc32(vi.name.encode())])
        lname = vi.name.lower()
        if elem == TensorProto.BOOL or (np.issubdtype(dtype, np.integer) and "mask" in lname):
            feeds[vi.name] = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            rows = _table_rows(model, vi.name)
            if rows is not None:
                feeds[vi.name] = rng.integers(0, rows, size=shape).astype(dtype)
            elif "position" in lname and shape:
                start = dims.get("past", DEFAULT_DIMS["past"]) if has_past else 0  # positions after the past
                feeds[vi.name] = np.broadcast_to(np.arange(start, start + shape[-1], dtype=dtype), shape).copy()
            else:
                feeds[vi.name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


# ---------------------------------------------------------------------------- graph facts
def structure_signature(model: onnx.ModelProto) -> list[tuple]:
    """Nodes, graph inputs and outputs with initializer names replaced by their dtype and
    shape: equal for two graphs that differ only in initializer values and names, and in
    whether a Conv/ConvTranspose/Gemm has its optional bias initializer (exporters drop
    zero biases; a transfer restores them)."""
    inits = {t.name: f"<init {TensorProto.DataType.Name(t.data_type)} {list(t.dims)}>" for t in model.graph.initializer}
    sig: list[tuple] = []
    for n in model.graph.node:
        attrs = tuple(f"<tensor {TensorProto.DataType.Name(a.t.data_type)} {list(a.t.dims)}>"
                      if n.op_type == "Constant" and a.type == onnx.AttributeProto.TENSOR else a.SerializeToString()
                      for a in n.attribute)  # a Constant's values are weights too
        ins = list(n.input)
        if n.op_type in ("Conv", "ConvTranspose", "Gemm") and len(ins) == 3 and (not ins[2] or ins[2] in inits):
            ins = ins[:2]
        sig.append(("node", n.op_type, n.domain, tuple(inits.get(x, x) for x in ins), tuple(n.output), attrs))
    sig += [("input", _value_info(i)) for i in model.graph.input if i.name not in inits]
    sig += [("output", _value_info(o)) for o in model.graph.output]
    return sig


def _value_info(v: onnx.ValueInfoProto) -> bytes:
    """A graph input's or output's name and type: not its doc string or metadata (the dynamo
    exporter records an output's kind on one export and not on another of the same model)."""
    return onnx.helper.make_value_info(v.name, v.type).SerializeToString()


def _structure_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    sa, sb = structure_signature(a), structure_signature(b)
    if sa == sb:
        return ""
    if len(a.graph.node) != len(b.graph.node):
        return f"{len(a.graph.node)} nodes against the reference's {len(b.graph.node)}"
    for k, (x, y) in enumerate(zip(sa, sb)):
        if x != y:
            if x[0] == "node":
                n = a.graph.node[k]
                return f"node #{k} '{n.name or n.op_type}' ({n.op_type}) differs from the reference's"
            return f"graph {x[0]} differs from the reference's"
    return "graphs differ"


def block_outputs(model: OnnxModel) -> list[tuple[str, str, float, str]]:
    """(block label, value name, relative depth in its stage, stage id) of each block of each
    stage: the output of the block's last weight-consuming node. Stage ids are name-free
    (signature + occurrence), so a source's and a target's stages pair up by id."""
    gs, st = analyze(model)
    nodes = model.proto.graph.node
    last: dict[str, int] = {}
    for tpl in st.templates.values():
        for b, slots in enumerate(tpl.blocks if tpl.stage else []):
            label = st.stages[tpl.stage][b]
            last[label] = max([last.get(label, -1)] + [gs.slots[i].consumer for i in slots])
    out = []
    for stage, labels in st.stages.items():
        n = len(labels)
        for j, label in enumerate(labels):
            k = last.get(label, -1)
            if k >= 0 and nodes[k].output:
                out.append((label, nodes[k].output[0], j / (n - 1) if n > 1 else 1.0, stage))
    return out


# ---------------------------------------------------------------------------- running
@dataclass
class _Run:
    outputs: dict[str, np.ndarray]
    blocks: dict[str, tuple[float, float, str]]   # label -> (relative depth, std, stage id)
    session: Session


def _run_session(model: OnnxModel, feeds_for, device: str, with_blocks: bool) -> _Run:
    names = [o.name for o in model.proto.graph.output]
    extra: list[tuple[str, str, float, str]] = []
    if with_blocks:
        for label, value, rel, stage in block_outputs(model):
            if value not in names and value not in {e[1] for e in extra}:
                extra.append((label, value, rel, stage))
    proto = with_outputs(model.proto, [e[1] for e in extra])
    sess = open_session(proto, device, model_dir=model.path.parent)
    feeds = feeds_for(model.proto)
    result = sess.session.run(None, feeds)
    outputs = dict(zip(names, result[:len(names)]))
    blocks = {label: (rel, float(np.std(np.asarray(v, dtype=np.float64))), stage)
              for (label, _, rel, stage), v in zip(extra, result[len(names):])}
    return _Run(outputs, blocks, sess)


def _ratio_check(name: str, ours: float, theirs: float, against: str) -> tuple[str, str]:
    if theirs == 0.0:
        return ("pass" if ours == 0.0 else "warn"), f"std {ours:.3g} vs 0 ({against})"
    r = ours / theirs
    ok = SCALE_RANGE[0] <= r <= SCALE_RANGE[1]
    return ("pass" if ok else "warn"), f"ratio {r:.3g} (std {ours:.3g} vs {theirs:.3g}, {against})"


def validate(model: str | Path | OnnxModel, *, reference: str | Path | OnnxModel | None = None,
             source: str | Path | OnnxModel | None = None, device: str = "auto",
             inputs: Mapping[str, np.ndarray] | None = None, dims: Mapping[str, int] | None = None,
             strict: bool = False, compare_outputs: bool | None = None, runs: int = 5,
             seed: int = 0) -> ValidationReport:
    """Validate an ONNX model; see the module docstring for the checks.

    ``compare_outputs``: None compares with the source when the architectures are identical;
    False skips it (a transfer with keep < 1 is not expected to reproduce its source).

    OnnxFileError for a model, reference or source that cannot be read; for the model's
    own files (the ``files`` check failing) it is a ModelFilesError whose ``report`` holds
    the failing check."""
    sessions = 1 + (reference is not None) + (source is not None)
    with progress.bar(sessions, "validate", unit="session") as bar:
        return _validate(model, reference, source, device, inputs, dims, strict, compare_outputs, runs, seed, bar)


_UNKNOWN_OP = re.compile(r"^No Op registered for (\w+) with domain_version")


def _checker_complaint(m: OnnxModel) -> str:
    """onnx.checker's full check of a model: '' when it passes, else its first line."""
    try:
        onnx.checker.check_model(str(m.path), full_check=True)
    except Exception as e:  # noqa: BLE001 - the checker's own message is the figure
        return str(e).strip().splitlines()[0][:200] or type(e).__name__
    return ""


def _validate(model, reference, source, device, inputs, dims, strict, compare_outputs, runs, seed,
              bar) -> ValidationReport:
    def _run(*args, **kwargs) -> Any:  # one onnxruntime session: one step of the bar
        out = _run_session(*args, **kwargs)
        bar.update()
        return out

    m = model if isinstance(model, OnnxModel) else load_model(model)
    rep = ValidationReport(str(m.path), device, "", "", strict=strict)
    files = files_check(m)
    rep.checks.append(files)
    if files.status != "pass":  # nothing else can be checked on a model that cannot be read
        raise ModelFilesError(files.detail, rep)
    ref = reference if reference is None or isinstance(reference, OnnxModel) else load_model(reference)
    src = source if source is None or isinstance(source, OnnxModel) else load_model(source)
    for x in (ref, src):  # inputs to compare with: broken ones are bad input (OnnxFileError)
        if x is not None:
            _check_files(x)
    complaint = _checker_complaint(m)
    if not complaint:
        rep.checks.append(Check("checker", "pass", "full check"))
    elif ref is not None and _checker_complaint(ref):
        # the reference (the original target) fails it too, e.g. an onnxruntime op in the default
        # domain (SimplifiedLayerNormalization in every onnxruntime-genai model): not this output's doing
        rep.checks.append(Check("checker", "warn", "full check",
                                f"{complaint} (the reference fails the check too: not held against this model)",
                                hard=False))
    else:
        rep.checks.append(Check("checker", "fail", "full check", complaint))
    if ref is not None:
        diff = _structure_diff(m.proto, ref.proto)
        rep.checks.append(Check("structure", "fail" if diff else "pass",
                                f"{len(m.proto.graph.node)} nodes", diff or "same graph as the reference"))
    else:
        rep.checks.append(Check("structure", "skip", "", "no reference given", hard=False))

    def feeds_for(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
        return synthesize_inputs(proto, dims, seed, inputs)

    try:
        ours = _run(m, feeds_for, device, with_blocks=True)
    except OnnxFileError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that does not run is the finding
        if isinstance(e, DeviceError):
            raise
        rep.checks.append(Check("run", "fail", "", f"onnxruntime: {str(e).strip().splitlines()[0][:300]}"))
        return rep
    rep.provider, rep.provider_note = ours.session.provider, ours.session.note
    unknown_op = _UNKNOWN_OP.match(complaint)
    checker = next(c for c in rep.checks if c.name == "checker")
    if checker.status == "fail" and unknown_op:
        # onnx does not know an op the runtime implements (onnxruntime-genai puts its
        # SimplifiedLayerNormalization in the default domain): the model runs, so the
        # check's verdict says nothing about it
        checker.status, checker.hard = "warn", False
        checker.detail = (f"{complaint} (onnx.checker does not know {unknown_op.group(1)}, which onnxruntime runs: "
                          "not held against the model)")
    feeds = feeds_for(m.proto)
    rep.inputs = {k: list(v.shape) for k, v in feeds.items()}
    rep.checks.append(Check("run", "pass", ours.session.provider.replace("ExecutionProvider", "")))

    bad = [k for k, v in ours.outputs.items() if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))
           if np.asarray(v).dtype.kind in "fc"]
    theirs_ref = _run(ref, feeds_for, "cpu", with_blocks=src is None) if ref is not None else None
    shape_issue = ""
    if theirs_ref is not None:
        for k, v in ours.outputs.items():
            if k in theirs_ref.outputs and np.shape(v) != np.shape(theirs_ref.outputs[k]):
                shape_issue = f"output {k} has shape {list(np.shape(v))}, the reference {list(np.shape(theirs_ref.outputs[k]))}"
    if bad:
        rep.checks.append(Check("finite", "fail", f"{len(bad)}/{len(ours.outputs)} outputs",
                                "non-finite values in " + ", ".join(bad)))
    elif shape_issue:
        rep.checks.append(Check("finite", "fail", "shapes", shape_issue))
    else:
        rep.checks.append(Check("finite", "pass", f"{len(ours.outputs)} outputs finite"
                                + (", shapes as the reference" if theirs_ref is not None else "")))

    base = _run(src, feeds_for, "cpu", with_blocks=True) if src is not None else theirs_ref
    against = "source" if src is not None else "reference"
    if base is None:
        rep.checks.append(Check("scale", "skip", "", "no source or reference to compare with", hard=False))
    elif not bad:
        for k, v in ours.outputs.items():
            if k in base.outputs and np.asarray(v).dtype.kind == "f":
                st_, fig = _ratio_check(k, float(np.std(np.asarray(v, np.float64))),
                                        float(np.std(np.asarray(base.outputs[k], np.float64))), against)
                rep.checks.append(Check(f"scale:{k}", st_, fig, "output", hard=False))
        for label, (rel, std, stage) in ours.blocks.items():
            cands = [(abs(r - rel), lab, s) for lab, (r, s, st_id) in base.blocks.items() if st_id == stage]
            if not cands:
                continue
            _, lab, s = min(cands)
            st_, fig = _ratio_check(label, std, s, f"{against} {lab}")
            rep.checks.append(Check(f"scale:{label}", st_, fig, "block output", hard=False))

    if src is not None and compare_outputs is not False:
        same = structure_signature(m.proto) == structure_signature(src.proto)
        if not same:
            rep.checks.append(Check("agreement", "skip", "", "architectures differ from the source", hard=False))
        else:
            worst, tol = 0.0, 0.0
            for o in m.proto.graph.output:
                a = np.asarray(ours.outputs[o.name], np.float64)
                b = np.asarray(base.outputs[o.name], np.float64)  # type: ignore[union-attr]
                scale = float(np.max(np.abs(b))) or 1.0
                worst = max(worst, float(np.max(np.abs(a - b))) / scale)
                tol = max(tol, TOLERANCE.get(o.type.tensor_type.elem_type, 1e-5))
            ok = worst <= tol
            rep.checks.append(Check("agreement", "pass" if ok else "fail", f"rel err {worst:.2e} (tol {tol:.0e})",
                                    f"smallest passing tolerance {worst:.2e}"))

    times = []
    plain = open_session(m.proto, "cuda" if rep.provider.startswith("CUDA") else "cpu", model_dir=m.path.parent)
    plain.session.run(None, feeds)  # warm-up
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        plain.session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    rep.latency_ms = float(np.median(times))
    rep.checks.append(Check("latency", "info", f"{rep.latency_ms:.3f} ms median of {len(times)}",
                            rep.provider.replace("ExecutionProvider", ""), hard=False))
    return rep


def _check_files(m: OnnxModel) -> int:
    """Check every initializer's declaration against its data (OnnxFileError for a size over
    the limit, data that disagrees with the shape, a missing/short/escaping data file), and
    every external data file any tensor names (initializers, Constant nodes, subgraphs,
    functions): inside the model's folder and a regular file. Returns the number of files."""
    check_tensors(m)
    files = external_data_files(m)
    for f in sorted(files):
        if not f.exists():
            raise OnnxFileError(f"{m.path}: external data file {f} not found")
        if not f.is_file():
            raise OnnxFileError(f"{m.path}: external data file {f} is not a regular file")
    return len(files)


def files_check(m: OnnxModel) -> Check:
    """The ``files`` check of a loaded model: fail, with the problem naming the file as its
    detail, when ``_check_files`` finds one."""
    try:
        n = _check_files(m)
    except OnnxFileError as e:
        return Check("files", "fail", "model files unreadable", str(e))
    if n == 0:
        return Check("files", "pass", "no external data", "all tensor data inside the model")
    return Check("files", "pass", "external data present", f"{n} file{'s' if n > 1 else ''}, sizes as declared")

