"""The data a FRONT+ refinement trains on, matched to the graph's inputs: names, dtypes,
row counts, and a batch size the graph may have fixed at export."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from front_onnx.errors import FrontError
from front_onnx.onnxio import OnnxModel


def as_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise FrontError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def count_rows(inputs: Sequence[torch.Tensor], labels: torch.Tensor | None, what: str, labels_what: str) -> int:
    if not inputs:
        raise FrontError(f"{what}: no inputs")
    n = {int(x.shape[0]) if x.dim() else -1 for x in inputs}
    if len(n) != 1 or -1 in n:
        raise FrontError(f"{what}: the inputs must share their first (batch) axis, got "
                         f"{', '.join(str(tuple(x.shape)) for x in inputs)}")
    rows = n.pop()
    if rows < 1:
        raise FrontError(f"{what}: no rows")
    if labels is not None and (labels.dim() == 0 or int(labels.shape[0]) != rows):
        got = int(labels.shape[0]) if labels.dim() else 0
        raise FrontError(f"{labels_what}: {got} labels for {rows} input rows")
    return rows


_FLOAT = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
          onnx.TensorProto.FLOAT16: np.float16}


_INT = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def graph_inputs(model: OnnxModel, names: Sequence[str], arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                  what: str) -> list[np.ndarray]:
    """The arrays for the graph inputs ``names``: by name, or positionally when no name
    matches and the counts agree; cast to the declared element type (float to float, int to int)."""
    if isinstance(arrays, Mapping):
        keys = list(arrays)
        if all(k in arrays for k in names):
            chosen = [np.asarray(arrays[k]) for k in names]
        elif not any(k in arrays for k in names) and len(keys) == len(names):
            chosen = [np.asarray(arrays[k]) for k in keys]
        else:
            missing = [k for k in names if k not in arrays]
            raise FrontError(f"{what}: no array for input {missing[0]!r} (the model's inputs: {', '.join(names)}; "
                             f"the file has: {', '.join(keys) or 'nothing'})")
    else:
        chosen = [np.asarray(a) for a in arrays]
        if len(chosen) != len(names):
            raise FrontError(f"{what}: {len(chosen)} arrays for {len(names)} model inputs ({', '.join(names)})")
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in model.proto.graph.input}
    out = []
    for name, a in zip(names, chosen):
        et = declared.get(name, 0)
        if et in _FLOAT and a.dtype.kind == "f":
            a = a.astype(_FLOAT[et], copy=False)
        elif et in _INT and a.dtype.kind in "iu":
            a = a.astype(_INT[et], copy=False)
        elif et in _FLOAT or et in _INT:
            raise FrontError(f"{what}: input {name!r} has dtype {a.dtype}, the model wants "
                             f"{onnx.TensorProto.DataType.Name(et).lower()}")
        out.append(np.ascontiguousarray(a))
    return out


def fixed_batch(model: OnnxModel, names: Sequence[str], xs: Sequence[torch.Tensor], what: str) -> int | None:
    """The batch size the graph fixes (axis 0 of its inputs' declared shapes, as
    ``torch.onnx.export`` without dynamic shapes leaves them), None when that axis is
    dynamic. FrontError (one line) for data the declared shapes refuse: another rank,
    another size on a fixed axis past the batch (a sequence length, an image size), fewer
    rows than the fixed batch."""
    batch: dict[int, str] = {}
    declared = {vi.name: vi.type.tensor_type for vi in model.proto.graph.input}
    for name, x in zip(names, xs):
        tt = declared.get(name)
        if tt is None or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        want = "[" + ", ".join(str(d) if d is not None else (dim.dim_param or "?")
                               for d, dim in zip(dims, tt.shape.dim)) + "]"
        got = list(x.shape)
        if len(got) != len(dims):
            raise FrontError(f"{what}: input {name!r} has shape {got}, but {model.path} declares rank {len(dims)} "
                             f"({want})")
        for a in range(1, len(dims)):
            if dims[a] is not None and got[a] != dims[a]:
                raise FrontError(f"{what}: input {name!r} has size {got[a]} on axis {a} (shape {got}), but "
                                 f"{model.path} fixes it at {dims[a]} (shape {want}): give data of that size, or "
                                 f"re-export the model with axis {a} dynamic")
        if dims and dims[0] is not None:
            batch.setdefault(dims[0], name)
    if not batch:
        return None
    if len(batch) > 1:
        raise FrontError(f"{model.path}: its inputs fix axis 0 at different sizes "
                         f"({', '.join(f'{k!r}: {b}' for b, k in batch.items())}); refine batches every input "
                         f"along axis 0: re-export the model with a dynamic batch axis")
    (b, name), = batch.items()
    n = int(xs[0].shape[0])
    if n < b:
        raise FrontError(f"{what}: {n} row{'s' if n != 1 else ''}, but {model.path} has a fixed batch of {b} "
                         f"(axis 0 of input {name!r}): give at least {b} rows, or re-export the model with a "
                         f"dynamic batch axis")
    return b


def batch_copies(module: nn.Module, batch: int) -> list[str]:
    """Weights that are one value repeated over a fixed batch (axis 0 of size ``batch`` > 1,
    every slice equal to the first): constants the exporter folded for that batch, e.g. a
    BERT's attention mask or its token-type embeddings added to every row. Trained, their
    slices would drift apart and a row's output would depend on its slot in the batch."""
    out = []
    for name in module.param_names:
        p = module.parameter(name)
        if batch > 1 and p.dim() >= 2 and p.shape[0] == batch and bool((p == p[:1]).all()):
            out.append(name)
    return out
