"""Torch and ONNX side by side: exporting a refined module, checking onnxruntime against
torch on the written file, and checking that only initializer values changed."""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from front_onnx.errors import FrontError
from front_onnx.outputs import staged
from front_onnx.torch.report import rel_err
from front_onnx.torch.training import outputs_tuple
from front_onnx.validation.runtime import open_session

MATCH_TOL = 1e-4      # onnxruntime vs torch: largest relative L2 error accepted


CHECK_ROWS = (16, 3)  # the sample batches of the onnxruntime check (two sizes: the batch axis is dynamic)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_module(module: nn.Module, example: Sequence[torch.Tensor], output: str | Path,
                  input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None) -> Path:
    """Export ``module`` with ``torch.onnx.export(dynamo=True)``, the batch axis (axis 0 of
    every input) dynamic, weights as external data (``OUTPUT.data``), as samples/export.py
    does. Atomic (``front_onnx.outputs.staged``: exported under the final file name into
    a hidden folder next to ``output``, so the data file's recorded location is right)."""
    output = Path(os.path.abspath(output))
    names = list(input_names) if input_names else (
        ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))])
    batch = torch.export.Dim("batch")
    was_training = module.training
    module.eval()
    try:
        with staged(output) as tmp:
            try:
                with _quiet(), torch.no_grad():
                    torch.onnx.export(module, tuple(example), str(tmp), dynamo=True, input_names=names,
                                      output_names=list(output_names) if output_names else None,
                                      dynamic_shapes=tuple({0: batch} for _ in example), external_data=True)
            except Exception as e:  # noqa: BLE001 - one line for the user
                raise FrontError(f"{output}: torch.onnx.export failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        module.train(was_training)
    return output


def _ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    s = open_session(path, "cpu")
    names = [i.name for i in s.session.get_inputs()]
    return s.session.run(None, {k: feeds[k] for k in names}), s.provider


def check_ort(module: nn.Module, path: Path, inputs: Sequence[torch.Tensor], names: Sequence[str],
               fixed_batch: int | None = None) -> tuple[float, str]:
    """Largest relative L2 error of onnxruntime on ``path`` against the torch module, on
    sample batches of the data (one batch of ``fixed_batch`` rows when the graph fixes its
    batch axis); FrontError above MATCH_TOL."""
    n = int(inputs[0].shape[0])
    worst, provider = 0.0, "CPUExecutionProvider"
    was_training = module.training
    module.eval()
    try:
        for rows in ((fixed_batch,) if fixed_batch else CHECK_ROWS):
            rows = min(rows, n)
            xs = [x[:rows] for x in inputs]
            with torch.no_grad():
                ours = [o.numpy() for o in outputs_tuple(module(*xs))]
            theirs, provider = _ort_outputs(path, {k: x.numpy() for k, x in zip(names, xs)})
            if len(theirs) != len(ours):
                raise FrontError(f"{path}: onnxruntime gives {len(theirs)} outputs, torch {len(ours)}")
            worst = max(worst, rel_err(theirs, ours))
    finally:
        module.train(was_training)
    if not worst <= MATCH_TOL:
        raise FrontError(f"{path}: onnxruntime disagrees with torch (relative error {worst:.2e} > {MATCH_TOL:g})")
    return worst, provider


def checked(module: nn.Module, path: Path, inputs: Sequence[torch.Tensor], names: Sequence[str],
             fixed_batch: int | None = None) -> tuple[float, str]:
    """``check_ort``; a file that fails it is removed (with its data file)."""
    try:
        return check_ort(module, path, inputs, names, fixed_batch)
    except BaseException:
        for f in (path, Path(str(path) + ".data")):
            f.unlink(missing_ok=True)
        raise


def _strip_values(proto: onnx.ModelProto) -> bytes:
    """The model with every initializer's and Constant's values (and storage) cleared."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)

    def clear(t: onnx.TensorProto) -> None:
        for f in ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data",
                  "string_data", "external_data", "data_location"):
            t.ClearField(f)

    for t in m.graph.initializer:
        clear(t)
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    clear(a.t)
    return m.SerializeToString(deterministic=True)


def graph_unchanged(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    """'' when two models differ only in initializer (and Constant) values and their
    storage; else what differs."""
    if _strip_values(a) == _strip_values(b):
        return ""
    if len(a.graph.node) != len(b.graph.node):
        return f"{len(b.graph.node)} nodes instead of {len(a.graph.node)}"
    for k, (x, y) in enumerate(zip(a.graph.node, b.graph.node)):
        if x.op_type != "Constant" and x.SerializeToString(deterministic=True) != y.SerializeToString(deterministic=True):
            return f"node #{k} '{x.name or x.op_type}' changed"
    return "the graph changed outside initializer values"
