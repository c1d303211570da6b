"""Reading and writing ONNX models whose initializer values get rewritten.

This module is the file layer only: it knows how tensors are stored in an
ONNX file (inline ``raw_data``, typed fields, external data files) and how to
write a copy of a model with some initializer values replaced. It knows
nothing about how the new values are computed.

Reading
    :func:`load_model` parses the protobuf only (external tensors stay
    references). :meth:`OnnxModel.array` reads one tensor lazily; external data
    is memory-mapped read-only, so reading a 344 MB model costs no RAM up
    front and nothing is cached.

Writing
    :func:`save_model` writes a copy of the model in which the named
    initializers get new values and everything else keeps its bytes. Tensors
    are streamed one by one into a single ``<output name>.data`` file (or set
    inline), the output is written to temporary files in the destination
    directory and moved into place atomically (data file first, ``.onnx``
    last). Same input, same output bytes.

External data locations are checked before any file is opened: a location
must be relative, must not climb out of the model's directory with ``..`` and
must not resolve (through symlinks) to a file outside that directory.

All tensor bytes are little-endian, as ONNX specifies; a big-endian host is
not supported.
"""
from __future__ import annotations

import errno
import math
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OnnxFileError",
    "OnnxModel",
    "load_model",
    "save_model",
    "tensor_nbytes",
    "external_data_files",
    "check_tensors",
    "AUTO_EXTERNAL_LIMIT",
    "MAX_TENSOR_BYTES",
]

#: With ``external_data=None``, output goes external above this many tensor
#: bytes (protobuf cannot serialize a message of 2 GiB or more).
AUTO_EXTERNAL_LIMIT = 1_800_000_000

# Offsets of tensors written to the data file: every tensor starts on a
# 64-byte boundary, tensors of 1 MiB or more on a 4 KiB (page) boundary so a
# reader can memory-map them directly. Fixed values keep output identical
# across platforms.
_ALIGN = 64
_ALIGN_LARGE = 4096
_LARGE = 1 << 20

_COPY_CHUNK = 16 << 20
_PROTOBUF_LIMIT = (1 << 31) - 1

# Element types stored packed, several elements per byte: bits per element.
_PACKED_BITS: dict[int, int] = {}
for _name, _bits in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
                     ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)):
    if hasattr(TensorProto, _name):
        _PACKED_BITS[getattr(TensorProto, _name)] = _bits

# TensorProto fields that hold (or point to) the data; everything else is metadata.
_DATA_FIELDS = frozenset({
    "segment", "float_data", "int32_data", "string_data", "int64_data", "raw_data",
    "external_data", "data_location", "double_data", "uint64_data",
})


class OnnxFileError(Exception):
    """One-line, user-facing problem with a model file: the message names the file and the problem."""


def _max_tensor_bytes() -> int:
    """The largest tensor a model may declare: 64 GiB, or ``FRONT_ONNX_MAX_TENSOR_BYTES``.
    A declaration beyond it is refused before anything is allocated or mapped."""
    try:
        return int(os.environ.get("FRONT_ONNX_MAX_TENSOR_BYTES", "") or MAX_TENSOR_BYTES)
    except ValueError:
        return MAX_TENSOR_BYTES


#: Default limit on one tensor's declared size (see ``_max_tensor_bytes``).
MAX_TENSOR_BYTES = 64 << 30


# --------------------------------------------------------------------------- #
# Element types and sizes
# --------------------------------------------------------------------------- #

def _np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX element type (bfloat16, float8... as ml_dtypes types)."""
    if elem_type == TensorProto.UNDEFINED:
        raise ValueError("element type UNDEFINED")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"unknown ONNX element type {elem_type}") from e


def _elem_type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def _storage_nbytes(elem_type: int, count: int) -> int:
    """Bytes of ``count`` elements of ``elem_type`` in raw (little-endian, packed) form."""
    bits = _PACKED_BITS.get(elem_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * _np_dtype(elem_type).itemsize


def _count(dims) -> int:
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in {list(dims)}")
    return math.prod(dims)


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes of the tensor's data, from its dims and element type, without reading it.

    Packed types (int4, float4...) count their packed size. STRING tensors have
    no fixed size: their size is the total length of their strings.
    """
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return _storage_nbytes(t.data_type, _count(t.dims))


def _declared_nbytes(t: TensorProto, where: str) -> int:
    """Bytes the tensor's dims and element type declare, refused (OnnxFileError) when a dim
    is negative, the type is unknown or the size is beyond the per-tensor limit."""
    try:
        count = _count(t.dims)
        nbytes = tensor_nbytes(t) if t.data_type == TensorProto.STRING else _storage_nbytes(t.data_type, count)
    except ValueError as e:
        raise OnnxFileError(f"{where}: {e}") from None
    limit = _max_tensor_bytes()
    if nbytes > limit:
        raise OnnxFileError(
            f"{where}: declared shape {list(t.dims)} of {_elem_type_name(t.data_type)} would need {nbytes} bytes, "
            f"over the limit of {limit} bytes per tensor (refused before reading; "
            "FRONT_ONNX_MAX_TENSOR_BYTES raises it)")
    return nbytes


def _typed_length(t: TensorProto, count: int) -> tuple[str, int] | None:
    """(field, expected number of values) of a tensor stored in a typed field, or None when
    the element type has no simple rule (packed, string)."""
    if t.data_type in _PACKED_BITS or t.data_type == TensorProto.STRING:
        return None
    try:
        name = helper.tensor_dtype_to_field(t.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    return name, count * per


def _check_typed_length(t: TensorProto, count: int, where: str) -> None:
    """Refuse a tensor stored in a typed field whose number of values disagrees with its shape."""
    typed = _typed_length(t, count)
    if typed is not None and len(getattr(t, typed[0])) != typed[1]:
        raise OnnxFileError(
            f"{where}: declared shape {list(t.dims)} of {_elem_type_name(t.data_type)} needs {typed[1]} values "
            f"but {typed[0]} has {len(getattr(t, typed[0]))}")


def check_tensors(model: OnnxModel) -> None:
    """Check every main-graph initializer's declaration against its data without reading
    the data: size within the limit, raw_data / typed-field length, external data location,
    length and file size. Raises OnnxFileError naming the file, tensor and problem."""
    for t in model.proto.graph.initializer:
        where = f"{model.path}: tensor {t.name!r}"
        if t.HasField("segment"):
            raise OnnxFileError(f"{where}: segmented tensors are not supported")
        if t.data_type == TensorProto.UNDEFINED:
            raise OnnxFileError(f"{where}: element type UNDEFINED")
        nbytes = _declared_nbytes(t, where)
        if _uses_external(t):
            _external_span(t, model.path)
        elif t.HasField("raw_data"):
            if t.data_type != TensorProto.STRING and len(t.raw_data) != nbytes:
                raise OnnxFileError(
                    f"{where}: declared shape {list(t.dims)} of {_elem_type_name(t.data_type)} needs {nbytes} "
                    f"bytes but raw_data has {len(t.raw_data)}")
        else:
            _check_typed_length(t, _count(t.dims), where)


def _parse_elem_type(dt: Any) -> int:
    """An ONNX element type from an int element type or anything np.dtype accepts."""
    if isinstance(dt, (int, np.integer)) and not isinstance(dt, (bool, np.bool_)):
        elem = int(dt)
        if elem not in TensorProto.DataType.values() or elem == TensorProto.UNDEFINED:
            raise ValueError(f"unknown ONNX element type {elem}")
        return elem
    try:
        return int(helper.np_dtype_to_tensor_dtype(np.dtype(dt)))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"no ONNX element type for dtype {dt!r}") from e


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


# --------------------------------------------------------------------------- #
# External data
# --------------------------------------------------------------------------- #

def _uses_external(t: TensorProto) -> bool:
    return t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL


def _resolve_location(location: str, model_path: Path, tensor_name: str) -> Path:
    """The real path of an external data location, checked to stay inside the model's directory."""
    where = f"{model_path}: tensor {tensor_name!r}: external data location {location!r}"
    if not location:
        raise OnnxFileError(f"{model_path}: tensor {tensor_name!r}: external data without a location")
    if "\x00" in location:
        raise OnnxFileError(f"{where} contains a NUL character")
    win = PureWindowsPath(location)
    if os.path.isabs(location) or location.startswith(("/", "\\")) or win.drive or win.root:
        raise OnnxFileError(f"{where} is absolute; it must be relative to the model's directory")
    norm = posixpath.normpath(location.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise OnnxFileError(f"{where} points outside the model's directory")
    base = os.path.realpath(model_path.parent)
    real = os.path.realpath(os.path.join(model_path.parent, norm))
    if os.path.commonpath([base, real]) != base or real == base:
        raise OnnxFileError(f"{where} resolves outside the model's directory (to {real})")
    return Path(real)


def _external_span(t: TensorProto, model_path: Path) -> tuple[Path, int, int]:
    """(file, offset, nbytes) of an external tensor, after checking location, length and file size."""
    entries = {e.key: e.value for e in t.external_data}
    file = _resolve_location(entries.get("location", ""), model_path, t.name)
    where = f"{model_path}: tensor {t.name!r}"
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") not in (None, "") else None
    except ValueError:
        raise OnnxFileError(f"{where}: bad external data offset/length {entries}") from None
    if offset < 0 or (length is not None and length < 0):
        raise OnnxFileError(f"{where}: negative external data offset/length {entries}")
    nbytes = _declared_nbytes(t, where)
    if length is not None and length != nbytes:
        raise OnnxFileError(
            f"{where}: declared shape {list(t.dims)} of {_elem_type_name(t.data_type)} needs {nbytes} bytes "
            f"but the external data length is {length}")
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise OnnxFileError(f"{where}: external data file {file} not found") from None
    except OSError as e:
        raise OnnxFileError(f"{where}: cannot read external data file {file} ({e.strerror})") from None
    if not os.path.isfile(file):
        raise OnnxFileError(f"{where}: external data file {file} is not a regular file")
    if st.st_size < offset + nbytes:
        raise OnnxFileError(
            f"{where}: external data file {file} is too short ({st.st_size} bytes; the tensor needs bytes "
            f"{offset}..{offset + nbytes})")
    return file, offset, nbytes


def _read_external_bytes(t: TensorProto, model_path: Path) -> bytes:
    file, offset, nbytes = _external_span(t, model_path)
    with open(file, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise OnnxFileError(f"{model_path}: tensor {t.name!r}: external data file {file} is too short")
    return data


# --------------------------------------------------------------------------- #
# Decoding
# --------------------------------------------------------------------------- #

def _readonly_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    a = np.zeros(shape, dtype=dtype)
    a.flags.writeable = False
    return a


def _decode_packed(raw, t: TensorProto) -> np.ndarray:
    tmp = TensorProto(data_type=t.data_type, dims=t.dims, raw_data=bytes(raw))
    a = numpy_helper.to_array(tmp)
    a.flags.writeable = False
    return a


def _tensor_array(t: TensorProto, model_path: Path) -> np.ndarray:
    where = f"{model_path}: tensor {t.name!r}"
    if t.HasField("segment"):
        raise OnnxFileError(f"{where}: segmented tensors are not supported")
    try:
        dtype = _np_dtype(t.data_type)
        shape = tuple(int(d) for d in t.dims)
        count = _count(shape)
    except ValueError as e:
        raise OnnxFileError(f"{where}: {e}") from None
    _declared_nbytes(t, where)  # refuse absurd declarations before allocating anything
    packed = t.data_type in _PACKED_BITS

    if _uses_external(t):
        if t.data_type == TensorProto.STRING:
            raise OnnxFileError(f"{where}: STRING tensor with external data is not supported")
        file, offset, nbytes = _external_span(t, model_path)
        if nbytes == 0:
            return _readonly_empty(shape, dtype)
        if packed:
            mm = np.memmap(file, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
            return _decode_packed(mm, t)
        mm = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=(count,))
        return np.asarray(mm).reshape(shape)

    if t.HasField("raw_data"):
        raw = t.raw_data
        if t.data_type == TensorProto.STRING:
            raise OnnxFileError(f"{where}: STRING tensor with raw_data is not valid")
        nbytes = _storage_nbytes(t.data_type, count)
        if len(raw) != nbytes:
            raise OnnxFileError(
                f"{where}: declared shape {list(shape)} of {_elem_type_name(t.data_type)} needs {nbytes} bytes "
                f"but raw_data has {len(raw)}")
        if packed:
            return _decode_packed(raw, t)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    # Typed fields (float_data, int32_data for fp16/bf16, int64_data, ...).
    _check_typed_length(t, count, where)
    try:
        a = numpy_helper.to_array(t)
    except (ValueError, TypeError) as e:
        raise OnnxFileError(f"{where}: data does not match declared shape {list(shape)} ({e})") from None
    if a.shape != shape:
        raise OnnxFileError(f"{where}: data does not match declared shape {list(shape)}")
    a.flags.writeable = False  # same contract as the memory-mapped and raw_data cases
    return a


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #

@dataclass
class OnnxModel:
    """A parsed ONNX model whose tensor data is read on demand.

    ``path`` is the absolute, normalized path of the ``.onnx`` file as given
    (symlinks not followed), so external data resolves next to it as onnx and
    onnxruntime resolve it.
    """

    path: Path
    proto: onnx.ModelProto
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _constants: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def _position(self, name: str) -> int:
        inits = self.proto.graph.initializer
        i = self._index.get(name)
        if i is None or i >= len(inits) or inits[i].name != name:
            self._index = {t.name: k for k, t in enumerate(inits)}
            i = self._index.get(name)
            if i is None:
                raise KeyError(f"{self.path}: no initializer named {name!r}")
        return i

    def initializer(self, name: str) -> TensorProto:
        """The initializer's TensorProto (data not loaded if external). KeyError if absent.
        A float Constant node's output counts too: its ``value`` tensor is returned."""
        try:
            return self.proto.graph.initializer[self._position(name)]
        except KeyError:
            node = self.constant_node(name)
            if node is None:
                raise
            t = constant_tensor(self.proto.graph.node[node])
            assert t is not None
            return t

    def constant_node(self, name: str) -> int | None:
        """The index of the Constant node whose output is ``name``, if any."""
        if self._constants is None:
            self._constants = {n.output[0]: k for k, n in enumerate(self.proto.graph.node)
                               if n.output and constant_tensor(n) is not None}
        return self._constants.get(name)

    def initializer_names(self) -> list[str]:
        """Initializer names in graph order."""
        return [t.name for t in self.proto.graph.initializer]

    def array(self, name: str) -> np.ndarray:
        """The initializer's values, read-only, with the stored dtype (bfloat16 as ml_dtypes.bfloat16).

        External data is memory-mapped (no copy, nothing cached); raw_data is
        wrapped with np.frombuffer; typed fields go through onnx.numpy_helper.
        Raises OnnxFileError for unsafe or missing external files and for data
        that does not match the declared shape.
        """
        return _tensor_array(self.initializer(name), self.path)

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        """The initializer's values copied into ``out`` (C-contiguous, the stored dtype and
        element count), returned reshaped to the tensor's shape. External data is read with
        plain reads, not memory-mapped: faulting in a fresh map costs more than the read on
        a warm page cache, and the caller reuses one buffer for every block."""
        t = self.initializer(name)
        shape = tuple(int(d) for d in t.dims)
        if not out.flags.c_contiguous or out.size != _count(shape) or out.dtype != self.dtype(name):
            raise ValueError(f"{self.path}: tensor {name!r}: buffer does not fit")
        view = out.reshape(shape)
        if _uses_external(t) and t.data_type not in _PACKED_BITS and out.nbytes:
            file, offset, nbytes = _external_span(t, self.path)
            mv = memoryview(out.reshape(-1).view(np.uint8))
            with open(file, "rb", buffering=0) as f:
                f.seek(offset)
                done = 0
                while done < nbytes:
                    n = f.readinto(mv[done:])
                    if not n:
                        raise OnnxFileError(f"{file}: external data file is shorter than expected")
                    done += n
            return view
        np.copyto(view, self.array(name))
        return view

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype of the initializer, without reading data."""
        t = self.initializer(name)
        try:
            return _np_dtype(t.data_type)
        except ValueError as e:
            raise OnnxFileError(f"{self.path}: tensor {name!r}: {e}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the initializer, without reading data."""
        return tuple(int(d) for d in self.initializer(name).dims)


def _check_text(msg, path: Path) -> None:
    """Refuse string fields that are not valid UTF-8 (protobuf then hands out bytes, not str).
    Tensor data is never touched: of a TensorProto only the name and external data entries."""
    if isinstance(msg, TensorProto):
        texts = [msg.name] + [x for e in msg.external_data for x in (e.key, e.value)]
        children = []
    else:
        texts, children = [], []
        for fd, value in msg.ListFields():
            values = value if fd.is_repeated else [value]
            if fd.type == fd.TYPE_STRING:
                texts.extend(values)
            elif fd.type == fd.TYPE_MESSAGE:
                children.extend(values)
    for x in texts:
        if not isinstance(x, str):
            raise OnnxFileError(f"{path}: not an ONNX model (a name or text field is not valid UTF-8: {x[:40]!r})")
    for c in children:
        _check_text(c, path)


def load_model(path: str | Path) -> OnnxModel:
    """Parse an ONNX file (protobuf only; external tensors stay references)."""
    p = Path(os.path.abspath(os.fspath(path)))
    if not p.exists():
        raise OnnxFileError(f"{p}: no such file")
    if not p.is_file():
        raise OnnxFileError(f"{p}: not an ONNX model (not a regular file)")
    if p.stat().st_size == 0:
        raise OnnxFileError(f"{p}: not an ONNX model (empty file)")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise OnnxFileError(f"{p}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # DecodeError and whatever a textual format parser raises
        msg = str(e).splitlines()[0] if str(e) else ""
        raise OnnxFileError(f"{p}: not an ONNX model ({type(e).__name__}{': ' + msg if msg else ''})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise OnnxFileError(f"{p}: not an ONNX model (no graph or IR version)")
    _check_text(proto, p)
    for i, n in enumerate(proto.graph.node):
        if not any(n.output):
            raise OnnxFileError(f"{p}: node #{i} {n.name or ''} ({n.op_type}) has no output")
    seen: set[str] = set()
    for t in proto.graph.initializer:
        if t.name in seen:
            raise OnnxFileError(f"{p}: duplicate initializer name {t.name!r}")
        seen.add(t.name)
    return OnnxModel(p, proto)


def external_data_files(model: OnnxModel) -> set[Path]:
    """Real paths of every external data file the model reads (checked to stay in its directory)."""
    files = set()
    for t in _model_tensors(model.proto):
        if _uses_external(t):
            entries = {e.key: e.value for e in t.external_data}
            files.add(_resolve_location(entries.get("location", ""), model.path, t.name))
    return files


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #

def constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node holds in its ``value`` attribute (weights some exporters
    keep in Constant nodes instead of initializers), or None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
    return None


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


def _encode(value: Any, elem_type: int, what: str) -> tuple[Any, int]:
    """(buffer, nbytes) of ``value`` cast to ``elem_type``, little-endian raw form."""
    if elem_type == TensorProto.STRING:
        raise ValueError(f"{what}: writing STRING tensors is not supported")
    dtype = _np_dtype(elem_type)
    a = np.asarray(value)
    if a.dtype == object:
        raise ValueError(f"{what}: object arrays cannot be written")
    to_int = dtype.kind in "biu" and a.dtype.kind not in "biu"
    to_real = dtype.kind != "c" and a.dtype.kind == "c"
    if to_int or to_real:
        # float -> integer/bool and complex -> real only when nothing is lost
        if to_real:
            if np.any(a.imag != 0):
                raise ValueError(f"{what}: complex values cannot be written as {_elem_type_name(elem_type)}")
            a = a.real
        cast = a.astype(dtype)
        if not np.array_equal(cast.astype(a.dtype), a):
            raise ValueError(f"{what}: values of dtype {a.dtype} do not fit {_elem_type_name(elem_type)} exactly")
        a = cast
    else:
        a = a.astype(dtype, copy=False)
    if elem_type in _PACKED_BITS:
        raw = numpy_helper.from_array(a).raw_data
        return raw, len(raw)
    a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return memoryview(a), a.nbytes


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


def _current_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        scope). The new name must be an initializer (original or added), a
        graph input or a node output. After rewiring, every original
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

    The files are written to temporaries in the destination directory,
    fsynced, and moved into place (data file first, ``.onnx`` last); on error
    the temporaries are removed and existing files are untouched. Writing onto
    the input model or any data file it reads is refused (ValueError). Output
    is deterministic. Returns the absolute output path.
    """
    new_values = dict(new_values or {})
    add_initializers = dict(add_initializers or {})
    rewire = dict(rewire or {})
    src = model.proto
    graph = src.graph
    out_path = Path(os.path.abspath(os.fspath(path)))
    data_path = out_path.with_name(out_path.name + ".data")
    if size_threshold < 0:
        raise ValueError("size_threshold must be >= 0")

    # -- refuse to overwrite anything the input reads
    protected = [model.path, *sorted(external_data_files(model))]
    for target in (out_path, data_path):
        for p in protected:
            if _same_file(target, p):
                raise ValueError(f"{target}: refusing to overwrite a file the input model {model.path} reads ({p})")
    if out_path.is_dir():
        raise ValueError(f"{out_path}: is a directory")

    # -- validate inputs before writing anything
    init_by_name = {t.name: t for t in graph.initializer}
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

    graph_inputs = {i.name for i in graph.input}
    node_outputs = {o for n in graph.node for o in n.output if o}
    known = set(init_by_name) | graph_inputs | node_outputs
    added: list[tuple[str, Any, int]] = []
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
    available = known | set(add_initializers)

    node_inputs = [list(n.input) for n in graph.node]
    for key, new_name in rewire.items():
        try:
            ni, ii = (int(k) for k in key)
        except (TypeError, ValueError):
            raise ValueError(f"rewire key {key!r} must be (node index, input index)") from None
        if not 0 <= ni < len(graph.node) or not 0 <= ii < len(graph.node[ni].input):
            raise ValueError(f"rewire: no input {ii} on node {ni}")
        if new_name not in available:
            raise ValueError(f"rewire: {new_name!r} is not an initializer, graph input or node output")
        node_inputs[ni][ii] = new_name

    dropped: set[str] = set()
    if rewire:
        before = _graph_refs(graph, [list(n.input) for n in graph.node])
        after = _graph_refs(graph, node_inputs)
        dropped = {n for n in init_by_name if n in before and n not in after}

    if external_data is None:
        uses_ext = any(_uses_external(t) for t in _model_tensors(src))
        total = sum(tensor_nbytes(t) for t in graph.initializer if t.name not in dropped)
        total += sum(_storage_nbytes(et, int(np.size(v))) for _, v, et in added)
        external_data = uses_ext or total > AUTO_EXTERNAL_LIMIT

    # -- the output proto, minus initializers
    out = onnx.ModelProto()
    _copy_fields(src, out, skip={"graph"})
    g_out = out.graph
    _copy_fields(graph, g_out, skip={"initializer"})
    for (ni, ii), new_name in rewire.items():
        g_out.node[int(ni)].input[int(ii)] = new_name
    for ni, value in (constants or {}).items():
        _set_constant(g_out.node[int(ni)], value, f"{model.path}: Constant node #{ni}")
    if dropped and any(i.name in dropped for i in g_out.input):
        keep = [i for i in g_out.input if i.name not in dropped]
        del g_out.input[:]
        g_out.input.extend(keep)

    dest_dir = out_path.parent
    dest_dir.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []
    fds: list[int] = []
    data_tmp = onnx_tmp = None
    try:
        writer = None
        if external_data:
            dfd, data_tmp = tempfile.mkstemp(dir=dest_dir, prefix="." + data_path.name + ".", suffix=".tmp")
            temps.append(data_tmp)
            fds.append(dfd)
            writer = _DataWriter(dfd, data_path.name)

        def goes_external(nbytes: int, elem_type: int) -> bool:
            return writer is not None and nbytes >= size_threshold and elem_type != TensorProto.STRING

        def put(t: TensorProto, buf, nbytes: int) -> None:
            if goes_external(nbytes, t.data_type):
                writer.write(t, buf, nbytes)
            else:
                t.raw_data = bytes(buf)

        def relocate(t: TensorProto, source: TensorProto) -> None:
            """Set data of ``t`` (metadata already set) to the unchanged data of ``source``."""
            if _uses_external(source):
                file, offset, nbytes = _external_span(source, model.path)
                if goes_external(nbytes, source.data_type):
                    writer.copy(t, file, offset, nbytes)
                else:
                    t.raw_data = _read_external_bytes(source, model.path)
                return
            nbytes = tensor_nbytes(source)
            if not goes_external(nbytes, source.data_type):
                t.CopyFrom(source)
                return
            if source.HasField("raw_data"):
                raw = source.raw_data
            else:
                raw = numpy_helper.from_array(_tensor_array(source, model.path)).raw_data
            if len(raw) != nbytes:
                raise OnnxFileError(f"{model.path}: tensor {source.name!r}: data does not match its declared shape")
            writer.write(t, raw, nbytes)

        for t in graph.initializer:
            if t.name in dropped:
                continue
            nt = g_out.initializer.add()
            if t.name in new_values:
                _copy_fields(t, nt, skip=_DATA_FIELDS)
                buf, nbytes = _encode(new_values[t.name], t.data_type, f"initializer {t.name!r}")
                put(nt, buf, nbytes)
                del buf
            else:
                _copy_fields(t, nt, skip=_DATA_FIELDS)
                relocate(nt, t)

        for name, value, et in added:
            nt = g_out.initializer.add()
            nt.name = name
            nt.data_type = et
            nt.dims.extend(int(d) for d in np.shape(value))
            buf, nbytes = _encode(value, et, f"added initializer {name!r}")
            put(nt, buf, nbytes)
            del buf

        # External tensors outside the main initializer list (subgraphs, attributes, functions).
        for t in _model_tensors(out, main_initializers=False):
            if _uses_external(t):
                source = TensorProto()
                source.CopyFrom(t)
                for f in _DATA_FIELDS:
                    t.ClearField(f)
                relocate(t, source)

        size = out.ByteSize()
        if size > _PROTOBUF_LIMIT:
            raise ValueError(
                f"{out_path}: the model would be {size} bytes, over protobuf's 2 GiB limit; "
                "save with external_data=True")

        mode = 0o666 & ~_current_umask()
        if writer is not None:
            if hasattr(os, "fchmod"):
                os.fchmod(dfd, mode)
            os.fsync(dfd)
            os.close(dfd)
            fds.remove(dfd)
            if not any(_uses_external(t) for t in _model_tensors(out)):
                os.unlink(data_tmp)
                temps.remove(data_tmp)
                data_tmp = None

        ofd, onnx_tmp = tempfile.mkstemp(dir=dest_dir, prefix="." + out_path.name + ".", suffix=".tmp")
        temps.append(onnx_tmp)
        fds.append(ofd)
        _write_all(ofd, out.SerializeToString(deterministic=True))
        if hasattr(os, "fchmod"):
            os.fchmod(ofd, mode)
        os.fsync(ofd)
        os.close(ofd)
        fds.remove(ofd)

        if data_tmp is not None:
            os.replace(data_tmp, data_path)
            temps.remove(data_tmp)
        os.replace(onnx_tmp, out_path)
        temps.remove(onnx_tmp)
        _fsync_dir(dest_dir)
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    return out_path
