"""Writing a copy of a model with some initializer values replaced (see ``save_model``).

The files are written through ``front_onnx.outputs.staged`` (a hidden folder next to the
destination, renamed into place data file first, ``.onnx`` last)."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from front_onnx import progress
from front_onnx.errors import FrontError, OnnxFileError
from front_onnx.onnxio.model import OnnxModel, external_data_files
from front_onnx.onnxio.tensors import (
    _DATA_FIELDS,
    AUTO_EXTERNAL_LIMIT,
    _encode,
    _external_span,
    _parse_elem_type,
    _read_external_bytes,
    _storage_nbytes,
    _tensor_array,
    _uses_external,
    tensor_nbytes,
)
from front_onnx.onnxio.walk import (
    _copy_fields,
    _graph_refs,
    _model_tensors,
    constant_tensor,
)
from front_onnx.outputs import data_companion, guard, staged

# Offsets of tensors written to the data file: every tensor starts on a 64-byte boundary,
# tensors of 1 MiB or more on a 4 KiB (page) boundary so a reader can memory-map them
# directly. Fixed values keep output identical across platforms.
_ALIGN = 64
_ALIGN_LARGE = 4096
_LARGE = 1 << 20
_COPY_CHUNK = 16 << 20
_PROTOBUF_LIMIT = (1 << 31) - 1


def _set_constant(node: onnx.NodeProto, value: np.ndarray, what: str) -> None:
    """Replace a Constant node's tensor values, keeping its dtype and shape (stored inline)."""
    t = constant_tensor(node)
    if t is None:
        raise ValueError(f"{what}: not a Constant node with a tensor value")
    shape = tuple(int(d) for d in t.dims)
    if tuple(np.shape(value)) != shape:
        raise ValueError(f"{what}: new value has shape {list(np.shape(value))}, expected {list(shape)}")
    buf, _ = _encode(value, t.data_type, what)
    for f in ("float_data", "int32_data", "double_data", "int64_data", "external_data"):
        t.ClearField(f)
    t.data_location = TensorProto.DEFAULT
    t.raw_data = bytes(buf)


def _write_all(fd: int, buf) -> None:
    mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


def _copy_range(src: str, offset: int, nbytes: int, dst_fd: int) -> None:
    """Append bytes ``offset..offset+nbytes`` of file ``src`` to ``dst_fd`` (kernel copy where possible)."""
    with open(src, "rb", buffering=0) as f:
        sfd = f.fileno()
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < nbytes:
                    n = os.copy_file_range(sfd, dst_fd, nbytes - done, offset + done)
                    if n == 0:
                        break
                    done += n
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
                                   errno.EBADF):
                    raise
        buf = bytearray(min(_COPY_CHUNK, max(nbytes - done, 1)))
        view = memoryview(buf)
        while done < nbytes:
            want = min(len(buf), nbytes - done)
            f.seek(offset + done)
            n = f.readinto(view[:want])
            if not n:
                raise OnnxFileError(f"{src}: external data file is shorter than expected")
            _write_all(dst_fd, view[:n])
            done += n


class _DataWriter:
    """Appends tensor bytes to the temporary data file and fills in external_data entries."""

    def __init__(self, fd: int, location: str):
        self.fd = fd
        self.location = location
        self.pos = 0

    def _start(self, nbytes: int) -> int:
        align = _ALIGN_LARGE if nbytes >= _LARGE else _ALIGN
        pad = -self.pos % align
        if pad:
            _write_all(self.fd, b"\0" * pad)
            self.pos += pad
        return self.pos

    def _mark(self, t: TensorProto, offset: int, nbytes: int) -> None:
        self.pos = offset + nbytes
        del t.external_data[:]
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.data_location = TensorProto.EXTERNAL

    def write(self, t: TensorProto, buf, nbytes: int) -> None:
        offset = self._start(nbytes)
        _write_all(self.fd, buf)
        self._mark(t, offset, nbytes)

    def copy(self, t: TensorProto, src: Path, src_offset: int, nbytes: int) -> None:
        offset = self._start(nbytes)
        _copy_range(str(src), src_offset, nbytes, self.fd)
        self._mark(t, offset, nbytes)



class _TensorSink:
    """Puts tensor data into the output: inline, or appended to the data file when it goes
    external (``writer`` set and the tensor at least ``threshold`` bytes)."""

    def __init__(self, model: OnnxModel, writer: _DataWriter | None, threshold: int) -> None:
        self.model, self.writer, self.threshold = model, writer, threshold

    def external(self, nbytes: int, elem_type: int) -> bool:
        return self.writer is not None and nbytes >= self.threshold and elem_type != TensorProto.STRING

    def put(self, t: TensorProto, buf, nbytes: int) -> None:
        if self.external(nbytes, t.data_type):
            self.writer.write(t, buf, nbytes)
        else:
            t.raw_data = bytes(buf)

    def relocate(self, t: TensorProto, source: TensorProto) -> None:
        """Set the data of ``t`` (metadata already set) to the unchanged data of ``source``;
        external bytes are copied file to file, never decoded."""
        path = self.model.path
        if _uses_external(source):
            file, offset, nbytes = _external_span(source, path)
            if self.external(nbytes, source.data_type):
                self.writer.copy(t, file, offset, nbytes)
            else:
                t.raw_data = _read_external_bytes(source, path)
            return
        nbytes = tensor_nbytes(source)
        if not self.external(nbytes, source.data_type):
            t.CopyFrom(source)
            return
        raw = source.raw_data if source.HasField("raw_data") else numpy_helper.from_array(
            _tensor_array(source, path)).raw_data
        if len(raw) != nbytes:
            raise OnnxFileError(f"{path}: tensor {source.name!r}: data does not match its declared shape")
        self.writer.write(t, raw, nbytes)


def _check_new_values(model: OnnxModel, new_values: Mapping[str, np.ndarray]) -> None:
    init_by_name = {t.name: t for t in model.proto.graph.initializer}
    for name, value in new_values.items():
        if name not in init_by_name:
            raise KeyError(f"{model.path}: no initializer named {name!r}")
        t = init_by_name[name]
        shape = tuple(int(d) for d in t.dims)
        vshape = tuple(np.shape(value))
        if vshape != shape:
            raise ValueError(f"initializer {name!r}: new value has shape {vshape}, the model's is {shape}")
        if t.data_type == TensorProto.STRING:
            raise ValueError(f"initializer {name!r}: writing STRING tensors is not supported")


def _added(graph: onnx.GraphProto, add_initializers: Mapping[str, tuple[np.ndarray, Any]]
           ) -> list[tuple[str, Any, int]]:
    known = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
             | {o for n in graph.node for o in n.output if o})
    added = []
    for name, spec in add_initializers.items():
        if not name:
            raise ValueError("add_initializers: empty name")
        if name in known:
            raise ValueError(f"add_initializers: name {name!r} is already used in the graph")
        try:
            value, dt = spec
        except (TypeError, ValueError):
            raise ValueError(f"add_initializers[{name!r}] must be (array, dtype)") from None
        added.append((name, value, _parse_elem_type(dt)))
    return added


def _rewired(graph: onnx.GraphProto, rewire: Mapping[tuple[int, int], str], added: set[str]
             ) -> tuple[list[list[str]], set[str]]:
    """The node inputs after rewiring, and the original initializers no longer referenced."""
    available = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
                 | {o for n in graph.node for o in n.output if o} | added)
    node_inputs = [list(n.input) for n in graph.node]
    for key, new_name in rewire.items():
        try:
            ni, ii = (int(k) for k in key)
        except (TypeError, ValueError):
            raise ValueError(f"rewire key {key!r} must be (node index, input index)") from None
        if not 0 <= ni < len(graph.node) or not 0 <= ii <= len(graph.node[ni].input):
            raise ValueError(f"rewire: no input {ii} on node {ni}")
        if new_name not in available:
            raise ValueError(f"rewire: {new_name!r} is not an initializer, graph input or node output")
        if ii == len(node_inputs[ni]):  # the node's next optional input (a restored bias)
            node_inputs[ni].append(new_name)
        else:
            node_inputs[ni][ii] = new_name
    if not rewire:
        return node_inputs, set()
    before = _graph_refs(graph, [list(n.input) for n in graph.node])
    after = _graph_refs(graph, node_inputs)
    return node_inputs, {t.name for t in graph.initializer if t.name in before and t.name not in after}


def _skeleton(src: onnx.ModelProto, node_inputs: list[list[str]], constants: Mapping[int, np.ndarray],
              dropped: set[str], what: str) -> onnx.ModelProto:
    """The output proto without initializers, with the rewired ``node_inputs``: everything
    else copied field by field."""
    out = onnx.ModelProto()
    _copy_fields(src, out, skip={"graph"})
    g_out = out.graph
    _copy_fields(src.graph, g_out, skip={"initializer"})
    for node, inputs in zip(g_out.node, node_inputs):
        if list(node.input) != inputs:
            del node.input[:]
            node.input.extend(inputs)
    for ni, value in constants.items():
        _set_constant(g_out.node[int(ni)], value, f"{what}: Constant node #{ni}")
    if dropped and any(i.name in dropped for i in g_out.input):
        keep = [i for i in g_out.input if i.name not in dropped]
        del g_out.input[:]
        g_out.input.extend(keep)
    return out


def _fill(out: onnx.ModelProto, model: OnnxModel, sink: _TensorSink, new_values: Mapping[str, np.ndarray],
          added: list[tuple[str, Any, int]], dropped: set[str]) -> None:
    """Append the initializers (new values, kept bytes, added ones) and re-home external
    tensors outside the main initializer list (subgraphs, attributes, functions)."""
    g_out = out.graph
    for t in progress.track(model.proto.graph.initializer, "write", unit="tensor"):
        if t.name in dropped:
            continue
        nt = g_out.initializer.add()
        _copy_fields(t, nt, skip=_DATA_FIELDS)
        if t.name in new_values:
            buf, nbytes = _encode(new_values[t.name], t.data_type, f"initializer {t.name!r}")
            sink.put(nt, buf, nbytes)
            del buf
        else:
            sink.relocate(nt, t)
    for name, value, et in added:
        nt = g_out.initializer.add()
        nt.name = name
        nt.data_type = et
        nt.dims.extend(int(d) for d in np.shape(value))
        buf, nbytes = _encode(value, et, f"added initializer {name!r}")
        sink.put(nt, buf, nbytes)
        del buf
    for t in _model_tensors(out, main_initializers=False):
        if _uses_external(t):
            source = TensorProto()
            source.CopyFrom(t)
            for f in _DATA_FIELDS:
                t.ClearField(f)
            sink.relocate(t, source)


def save_model(
    model: OnnxModel,
    path: str | Path,
    new_values: Mapping[str, np.ndarray] | None = None,
    *,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    add_initializers: Mapping[str, tuple[np.ndarray, Any]] | None = None,
    rewire: Mapping[tuple[int, int], str] | None = None,
    constants: Mapping[int, np.ndarray] | None = None,
) -> Path:
    """Write a copy of ``model`` to ``path`` with some initializer values replaced.

    new_values
        ``{name: array}`` for existing initializers (KeyError for unknown
        names). Each array is cast to the original tensor's dtype (float64 ->
        float32/float16/bfloat16...; float -> integer only when exact) and
        must have the original shape (ValueError otherwise). The name and the
        rest of the tensor's metadata are kept.
    add_initializers
        ``{name: (array, dtype)}`` new initializers appended after the
        original ones, in the given order; dtype is a numpy dtype (incl.
        ml_dtypes.bfloat16) or an ONNX element type int. Names must be new.
    rewire
        ``{(node index in graph.node, input index): new input name}`` for
        nodes of the main graph (subgraph and function nodes are out of
        scope); an input index one past the node's last input appends an
        optional input (a restored bias). The new name must be an initializer
        (original or added), a graph input or a node output. After rewiring, every original
        initializer that was referenced before (by a node input, a graph
        output or a subgraph) and no longer is gets dropped, together with its
        entry in graph.input if it has one; so splitting a shared initializer
        into one copy per use leaves no dead original. Initializers that were
        already unreferenced in the input stay.
    constants
        ``{node index: array}`` new values for Constant nodes holding weights
        (written inline, in the node's dtype and shape).
    external_data
        None: external when the input model uses external data or the tensors
        total more than AUTO_EXTERNAL_LIMIT bytes. True/False force it. All
        external tensors go to one file ``<output file name>.data`` next to
        the output (location = that base name); tensors smaller than
        ``size_threshold`` bytes stay inline. If no tensor ends up external,
        no data file is written.

    Every other initializer keeps its bytes (external ones are copied
    straight from the source data file, never decoded). Everything else in
    the proto is kept field by field (ir_version, opsets, producer, metadata,
    value_info, functions, initializer order...); external tensors elsewhere
    (subgraph initializers, attributes) are re-homed into the new data file
    or inlined. Unknown protobuf fields are not kept.

    Writing onto the input model or any data file it reads is refused
    (OutputRefused) before anything is written; the files are written
    atomically (``front_onnx.outputs.staged``). Output is deterministic.
    Returns the absolute output path.
    """
    new_values = dict(new_values or {})
    rewire = dict(rewire or {})
    out_path = Path(os.path.abspath(os.fspath(path)))
    if size_threshold < 0:
        raise ValueError("size_threshold must be >= 0")
    guard([out_path, data_companion(out_path)], [model.path, *sorted(external_data_files(model))])
    _check_new_values(model, new_values)
    graph = model.proto.graph
    added = _added(graph, dict(add_initializers or {}))
    node_inputs, dropped = _rewired(graph, rewire, {name for name, _, _ in added})
    if external_data is None:
        total = sum(tensor_nbytes(t) for t in graph.initializer if t.name not in dropped)
        total += sum(_storage_nbytes(et, int(np.size(v))) for _, v, et in added)
        external_data = any(_uses_external(t) for t in _model_tensors(model.proto)) or total > AUTO_EXTERNAL_LIMIT
    out = _skeleton(model.proto, node_inputs, constants or {}, dropped, str(model.path))

    with staged(out_path) as tmp:
        data_tmp = data_companion(tmp)
        fd = os.open(data_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666) if external_data else None
        try:
            writer = _DataWriter(fd, data_tmp.name) if fd is not None else None
            _fill(out, model, _TensorSink(model, writer, size_threshold), new_values, added, dropped)
        finally:
            if fd is not None:
                os.close(fd)
        if fd is not None and not any(_uses_external(t) for t in _model_tensors(out)):
            data_tmp.unlink()
        size = out.ByteSize()
        if size > _PROTOBUF_LIMIT:
            raise FrontError(f"{out_path}: the model would be {size} bytes, over protobuf's 2 GiB limit; "
                             "write its weights as external data (--external-data yes)")
        tmp.write_bytes(out.SerializeToString(deterministic=True))
    return out_path
