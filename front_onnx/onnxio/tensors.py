"""How tensors are stored in an ONNX file: element types and sizes, external data
locations (checked before any file is opened), and decoding/encoding of tensor bytes.
All tensor bytes are little-endian, as ONNX specifies; a big-endian host is not supported."""
from __future__ import annotations

import math
import os
import posixpath
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from front_onnx.errors import OnnxFileError

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


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX element type (ValueError for types numpy cannot hold)."""
    return _np_dtype(elem_type)


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
