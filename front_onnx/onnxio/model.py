"""A parsed ONNX model whose tensors are read on demand (``load_model``, ``OnnxModel``),
and the checks of its declarations against its data (``check_tensors``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from front_onnx.errors import OnnxFileError
from front_onnx.onnxio.tensors import (
    _PACKED_BITS,
    _check_typed_length,
    _count,
    _declared_nbytes,
    _elem_type_name,
    _external_span,
    _np_dtype,
    _resolve_location,
    _tensor_array,
    _uses_external,
)
from front_onnx.onnxio.walk import _model_tensors, constant_tensor

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



def model_files(model: OnnxModel) -> list[Path]:
    """Every file a model is read from: the ``.onnx`` file and its external data files
    (what an output must never overwrite)."""
    return [model.path, *sorted(external_data_files(model))]


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
