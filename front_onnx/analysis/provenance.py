"""Parameter or constant: what the evidence says each float initializer is.

A *parameter* is a trained parameter of the source framework's module, or a pure layout
view of one (transpose, reshape). Every other initializer is a *constant* (masks, rotary
tables, folded position tables, shape and index tensors) and is never rewritten.
Exporters fold computed tensors into initializers that look like weights, so this is
decided before any role is given, from every kind of evidence there is, none of it
required:

- the exporter's marks (torch dynamo): ``pkg.torch.export.graph_signature.InputSpec.kind``
  says an initializer *is* a parameter or buffer; ``pkg.onnxscript.optimizer.folded_from``
  says what a folded initializer was computed from. A graph that marks its parameters
  marks all of them: an unmarked float initializer there is a constant;
- the values: a tensor holding +-inf, NaN or magnitudes near the dtype's limit is a mask;
- the consuming op and input position (a MatMul/Gemm/Conv weight, a normalization's scale,
  an embedding table are parameters whatever their names);
- names: a generated name (``val_3``, ``const_5``) does not show an ambiguous tensor
  (one added, multiplied or concatenated) to be a parameter; a module path does. One kind
  of generated name does: the legacy torch exporter's ``onnx::<Op>_<N>`` initializers
  (below, ``_LEGACY_FOLD``) are what its constant folding made of the module's state. A name that is neither a
  module path nor generated (a token of letters and digits mixed, as a name scrambler or
  an obfuscator writes) shows nothing either.

When the evidence does not make a tensor a parameter, it is a constant: leaving a
parameter untouched costs a little transfer, rewriting a constant breaks the model.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

KIND_KEY = "pkg.torch.export.graph_signature.InputSpec.kind"
FOLDED_KEY = "pkg.onnxscript.optimizer.folded_from"

# fx node names of ops that only move a tensor's elements around (a view of its source),
# and names of values folded earlier from constants (shape tensors, scalars)
_LAYOUT_OP = re.compile(r"^(t|transpose|permute|view|reshape|_reshape_alias|unsqueeze|squeeze|expand|contiguous|"
                        r"clone|alias|detach|_to_copy|lift_fresh_copy|val)(_\d+)?$")
# ... and of ops that take rows of a table at constant positions (``wpe(arange(T))``): the
# result is a slice of its source, so a slice of a parameter is that parameter's rows
_SLICE_OP = re.compile(r"^(arange|embedding|slice|select|index_select|index|gather|narrow)(_\d+)?$")
_CONCAT_OP = re.compile(r"^(cat|concat|concatenate)(_\d+)?$")
_INDEXING = re.compile(r"^(embedding|slice|select|index_select|index|gather|narrow)(_\d+)?$")
FX_KEY = "pkg.torch.onnx.fx_node"
_BUFFER_NAME = re.compile(r"(_ids|_index|index|mask|inv_freq|running_mean|running_var|num_batches_tracked)$")
# The legacy torch exporter (``torch.onnx.export(..., dynamo=False)``) names a tensor it
# constant-folded ``onnx::<consumer op>_<N>``. Tracing bakes everything that depends neither
# on the inputs nor on the module's state (literals, ``arange``, non-persistent buffers) into
# ``Constant`` nodes (``/scope/Constant_N_output_0``); only what is computed from the state
# dict, i.e. parameters (and persistent buffers), is left for folding into such initializers:
# a layer scale ``gamma.reshape(1, -1, 1, 1)`` (ConvNeXt), a relative-position bias table
# gathered at its constant index and permuted (Swin), a transposed Linear weight.
_LEGACY_FOLD = re.compile(r"^onnx::[A-Za-z]\w*_\d+$")
# a name that reads as a module path or a parameter's name: parts joined by '.', '/', ':', '_' or '-'
# (``blocks.0.attn.relative_position_bias_table``, ``cls_token``, ``s1b0_c1_bn_scale``). A long part
# whose letters and digits alternate again and again, or end in a long digit run (``nfd7dee6ffa``,
# ``na271939112``: a scrambler's or obfuscator's hash) is a token, not a word.
def _token_part(part: str) -> bool:
    runs = re.findall(r"[A-Za-z]+|\d+", part)
    if len(part) < 8 or "".join(runs) != part:
        return False
    return len(runs) >= 4 or any(r.isdigit() and len(r) >= 4 for r in runs[1:])


def reads_as_words(name: str) -> bool:
    """Whether a name is made of words (a module path, a parameter's name), not a token."""
    parts = [p for p in re.split(r"[./:_\-]+", name) if p]
    return bool(parts) and not any(_token_part(p) for p in parts)


# roles the consuming op gives only to parameters (a framework's layer weights)
LAYER_ROLES = {"linear.weight", "linear.bias", "conv.weight", "conv.bias", "norm.scale", "norm.bias", "norm.mean",
               "norm.var", "embedding"}


@dataclass(frozen=True)
class Provenance:
    parameter: bool
    evidence: str
    masked: bool = False      # a parameter's entries combined with a mask: the mask entries are constants
    unproven: bool = False    # a constant only for want of evidence (no mark, no name): ``pairing`` may decide
    derived: tuple[str, ...] = ()  # not a parameter, but computed from these (trained values the transfer leaves)
    marked: bool = False      # the exporter itself marks it a parameter (stronger evidence than a name)


def props(entries) -> dict[str, str]:
    """Metadata entries (``metadata_props``) as a dict."""
    return {p.key: p.value for p in entries}


def literal_list(value: str) -> list[str]:
    """A Python list literal of names (``folded_from``), or [] when it is not one."""
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else []


SIGNATURE_KEY = "pkg.torch.export.ExportedProgram.graph_signature"
SIGNATURE_LINE = re.compile(r"^\s*(\w+): (PARAMETER|BUFFER) target='([^']+)'(?: persistent=(True|False))?", re.MULTILINE)


class Marks:
    """The exporter's marks in a graph: parameter/buffer kinds and folded_from sources."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.kind: dict[str, str] = {}
        self.folded: dict[str, list[str]] = {}
        for entries, name in [(vi.metadata_props, vi.name) for vi in (*graph.value_info, *graph.input)] + \
                [(t.metadata_props, t.name) for t in graph.initializer]:
            p = props(entries)
            if KIND_KEY in p:
                self.kind.setdefault(name, p[KIND_KEY])
            if FOLDED_KEY in p:
                self.folded.setdefault(name, literal_list(p[FOLDED_KEY]))
        # the module's parameters and buffers as the exporter's nodes name them (%p_x_y, %b_x_y)
        self.placeholders: set[str] = set()
        for n in graph.node:
            text = props(n.metadata_props).get(FX_KEY)
            if text:
                self.placeholders.update(re.findall(r"%([pb]_\w+)", text))
        # the exported program's graph signature: each module tensor's kind, buffers the graph no
        # longer reads (folded away) included
        self.signature = {target: kind.lower() for _, kind, target, _ in
                          SIGNATURE_LINE.findall(props(graph.metadata_props).get(SIGNATURE_KEY, ""))}
        # a graph whose exporter marks parameters marks every one of them
        self.marks_parameters = any(k == "PARAMETER" for k in self.kind.values()) or bool(self.placeholders)

    def source_kind(self, name: str) -> str:
        """'parameter', 'buffer' or '' (an op or a value) for a name in a folded_from list."""
        if name in self.signature:
            return self.signature[name]
        if self.kind.get(name) == "PARAMETER" or "p_" + name.replace(".", "_") in self.placeholders:
            return "parameter"
        if self.kind.get(name) == "BUFFER" or "b_" + name.replace(".", "_") in self.placeholders:
            return "buffer"
        if "." in name or name in self.placeholders:
            # a module path no node marks (its consumers were folded too): the usual names of
            # buffers (index and id tables, masks, running statistics, rotary frequencies) say
            # buffer, anything else is taken for a parameter
            return "buffer" if _BUFFER_NAME.search(name) else "parameter"
        return ""


def _folded(marks: Marks, name: str, role: str | None) -> Provenance | None:
    sources = marks.folded.get(name)
    if sources is None:
        return None
    kinds = {x: marks.source_kind(x) for x in sources}
    unknown = [x for x in sources if not kinds[x] and not _LAYOUT_OP.match(x) and not _SLICE_OP.match(x)]
    if not any(kinds.values()) and len(unknown) == 1 and not marks.signature:
        # one leaf through layout ops and shape constants (``expand(cls_token)``): a folded op
        # would bring its own inputs into the list, so the leaf is a module tensor (unless the
        # exported program's signature, which names every module tensor, does not list it:
        # RecurrentGemma's ``zeros_like(mul_8)``)
        kinds[unknown[0]] = "buffer" if _BUFFER_NAME.search(unknown[0]) else "parameter"
    params = [x for x in sources if kinds[x] == "parameter"]
    buffers = [x for x in sources if kinds[x] == "buffer"]
    # the op that made the tensor is its own name (``embedding_1``): it counts with its sources
    ops = [x for x in sources + [name] if not kinds.get(x) and not _LAYOUT_OP.match(x)]
    if name not in sources and not _SLICE_OP.match(name) and name in ops:
        ops.remove(name)  # a name that is no op we know says nothing
    sliced = [x for x in ops if _SLICE_OP.match(x)]
    computed = [x for x in ops if x not in sliced]
    if len(params) == 1 and not buffers and not computed:
        how = "rows of" if sliced else "a layout view of"
        return Provenance(True, f"{how} the parameter {params[0]} (exporter: folded_from)")
    if len(params) == 1 and any(_INDEXING.match(x) for x in ops):
        # one parameter indexed at positions the exporter could compute (position ids, relative
        # position indices): its values are the parameter's entries, a table of the model
        return Provenance(True, f"entries of the parameter {params[0]} taken at constant positions "
                                f"(exporter: folded_from)")
    if params and not buffers and not computed and not sliced:
        return Provenance(True, f"a layout view of the parameters {', '.join(params)} (exporter: folded_from)")
    if params and not buffers and not sliced and role in LAYER_ROLES:
        return Provenance(True, f"a {role} computed from the parameters {', '.join(params)} only "
                                f"(exporter: folded_from)")
    if params and _CONCAT_OP.match(name) and name not in sources and not computed and not sliced \
            and role == "linear.bias":
        # a bias the module assembles from its parts (timm BEiT's cat(q_bias, k_bias, v_bias), the
        # k part a zero buffer), folded: it is the projection's bias, buffer entries included
        return Provenance(True, f"a bias concatenated from the parameters {', '.join(params)}"
                                + (f" and the buffers {', '.join(buffers)}" if buffers else "")
                                + " (exporter: folded_from; written whole, the buffers' entries from the source's)")
    what = ", ".join(sources[:6]) + (", ..." if len(sources) > 6 else "")
    return Provenance(False, f"computed by the exporter from {what} (folded_from)", derived=tuple(params))


def _mask_like(a: np.ndarray) -> bool:
    if a.dtype.kind != "f" or a.size == 0:
        return False
    x = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return True
    return bool(np.max(np.abs(x)) >= 0.1 * float(np.finfo(a.dtype).max))


def _rotary_frequencies(a: np.ndarray) -> bool:
    """Whether a tensor is a rotary embedding's ``inv_freq``: 1, r, r^2, ... with 0 < r < 1
    (to float32 rounding). A trained tensor is never an exact geometric sequence."""
    x = np.asarray(a, np.float64).reshape(-1)
    if x.size < 2 or not np.all(np.isfinite(x)) or abs(x[0] - 1.0) > 1e-6 or np.any(x <= 0):
        return False
    r = x[1:] / x[:-1]
    return bool(r[0] < 1.0 and np.all(np.abs(r - r[0]) <= 1e-5 * r[0]))


def classify(name: str, role: str | None, generated_name: bool, marks: Marks,
             read: Callable[[str], np.ndarray] | None) -> Provenance:
    """Whether the float initializer ``name``, used in a slot of ``role`` (the consuming
    op's reading), is a parameter, with the evidence that decided it."""
    kind = marks.kind.get(name)
    if kind == "PARAMETER":
        return Provenance(True, "the exporter marks it a parameter", marked=True)
    if kind == "BUFFER":
        if role in ("norm.mean", "norm.var"):
            return Provenance(True, "a normalization's running statistics (a trained buffer)")
        return Provenance(False, "the exporter marks it a buffer, not a parameter")
    if kind is not None:
        return Provenance(False, f"the exporter marks it a {kind.lower()}, not a parameter")
    if role not in LAYER_ROLES and read is not None:
        try:
            mask = _mask_like(read(name))
        except Exception:  # noqa: BLE001 - unreadable data is reported by the file checks, not here
            mask = False
        if mask:  # a mask, or a table the exporter combined with one: resampling would smear it
            params = [x for x in marks.folded.get(name, []) if marks.source_kind(x) == "parameter"]
            if len(params) == 1:
                return Provenance(True, f"entries of the parameter {params[0]} combined with a mask (exporter: "
                                        f"folded_from); the mask entries are kept as they are", masked=True)
            # a mask, or (only a pair of models can tell, ``pairing``) a parameter combined with one
            return Provenance(False, "mask-like values (inf, NaN or near the dtype's limit)", masked=True,
                              unproven=True)
        try:
            rotary = _rotary_frequencies(read(name))
        except Exception:  # noqa: BLE001 - as above
            rotary = False
        if rotary:
            return Provenance(False, "rotary frequencies (a geometric sequence from 1, base^(-2i/d)): "
                                     "computed from the configuration, not trained")
    folded = _folded(marks, name, role)
    if folded is not None:
        return folded
    if role in LAYER_ROLES:
        return Provenance(True, f"a {role} of its consuming op")
    if marks.marks_parameters:
        return Provenance(False, "the exporter marks every parameter and not this tensor")
    if _LEGACY_FOLD.match(name):
        # the legacy exporter's fold of the module's state. A persistent float buffer folded
        # the same way is taken for a parameter too, as one kept under its own name is below;
        # masks among them were told by their values above
        return Provenance(True, "folded by the legacy torch exporter from the module's state "
                                "(an onnx::<Op>_<N> initializer; constants stay Constant nodes)")
    if generated_name:
        return Provenance(False, "a generated name and no exporter mark: not shown to be a parameter", unproven=True)
    if not reads_as_words(name):
        return Provenance(False, "no exporter mark and a name that is no module path (a token): "
                                 "not shown to be a parameter", unproven=True)
    return Provenance(True, "named like a parameter")
