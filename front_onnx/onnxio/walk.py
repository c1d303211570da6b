"""Walking an ONNX proto: every tensor (initializers, subgraphs, attributes, functions),
the names a graph references, and field-by-field copies."""
from __future__ import annotations

from typing import Iterator

import onnx
from onnx import TensorProto

# --------------------------------------------------------------------------- #
# Walking the proto
# --------------------------------------------------------------------------- #

def _node_tensors(node: onnx.NodeProto) -> Iterator[TensorProto]:
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sp in a.sparse_tensors:
            yield sp.values
            yield sp.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g, True)
        for g in a.graphs:
            yield from _graph_tensors(g, True)


def _graph_tensors(g: onnx.GraphProto, initializers: bool) -> Iterator[TensorProto]:
    if initializers:
        yield from g.initializer
    for sp in g.sparse_initializer:
        yield sp.values
        yield sp.indices
    for n in g.node:
        yield from _node_tensors(n)


def _model_tensors(proto: onnx.ModelProto, main_initializers: bool = True) -> Iterator[TensorProto]:
    """Every TensorProto in the model (graph, subgraphs, attributes, functions), in a fixed order."""
    yield from _graph_tensors(proto.graph, main_initializers)
    for f in proto.functions:
        for n in f.node:
            yield from _node_tensors(n)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _subgraph_refs(g: onnx.GraphProto, out: set[str]) -> None:
    """Names a subgraph may take from an outer scope (over-approximated: every name it reads)."""
    out.update(o.name for o in g.output)
    for n in g.node:
        out.update(n.input)
        for sg in _subgraphs(n):
            _subgraph_refs(sg, out)


def _graph_refs(g: onnx.GraphProto, node_inputs: list[list[str]]) -> set[str]:
    """Names the main graph reads: node inputs (as given), graph outputs, subgraph references."""
    refs: set[str] = set()
    for inputs in node_inputs:
        refs.update(inputs)
    refs.update(o.name for o in g.output)
    for n in g.node:
        for sg in _subgraphs(n):
            _subgraph_refs(sg, refs)
    refs.discard("")
    return refs


def _copy_fields(src, dst, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Copy every set field of ``src`` into ``dst`` except those in ``skip`` (no deep copy of skipped data)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)



def constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node holds in its ``value`` attribute (weights some exporters
    keep in Constant nodes instead of initializers), or None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value (``onnx.helper.get_attribute_value``), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
