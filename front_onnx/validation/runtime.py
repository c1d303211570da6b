"""onnxruntime sessions on the provider that really runs them.

onnxruntime-gpu imports fine without CUDA and even *lists* CUDAExecutionProvider; creating
a session then logs a multi-line error to the process's stderr and silently runs on CPU.
This module asks for the device, checks ``session.get_providers()``, keeps onnxruntime's
own log lines off the terminal, and explains in one line why CUDA was not used.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnx

from front_onnx.errors import DeviceError, FrontError

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")




# Why CUDA failed in this process, once known: a missing library stays missing, and every
# new attempt would load (and fail to load) the provider library again.
_cuda_failure: str | None = None


@dataclass
class Session:
    session: object             # onnxruntime.InferenceSession
    provider: str               # the provider actually running the graph
    note: str                   # why CUDA was not used, when it was wanted


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (where onnxruntime's C++ logger writes) into a list."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _cuda_reason(log: list[str]) -> str:
    text = "\n".join(log)
    m = re.search(r"error: (lib[\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    if m:
        return f"the CUDA library {m.group(1)} is missing"
    m = re.search(r"Failed to load library (\S+)", text)
    if m:
        return f"{Path(m.group(1)).name} could not be loaded"
    if "CUDA" in text and "driver" in text.lower():
        return "no usable CUDA driver"
    for line in log:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            return line[-200:]
    return "onnxruntime did not enable it"


def _options(model_dir: Path | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if model_dir is not None:  # a model given as bytes still finds its external data here
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
    return so


def with_outputs(proto: onnx.ModelProto, values: list[str],
                 fed: "dict[str, onnx.TensorProto] | None" = None) -> onnx.ModelProto:
    """A copy of ``proto`` that also gives the intermediate ``values`` as outputs (after its
    own, in order, each once) and takes the initializers ``fed`` as inputs, so that
    onnxruntime reads them from the feeds (one session for several weight values)."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    for v in dict.fromkeys(values):
        if v not in have:
            p.graph.output.append(onnx.ValueInfoProto(name=v))
    inputs = {i.name for i in p.graph.input}
    for name, t in (fed or {}).items():
        if name not in inputs:
            p.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return p


def run_or_refuse(session, feeds: dict, label: str, why: str) -> list:
    """``session.run`` on ``feeds``; a model onnxruntime cannot run is the user's input to
    fix, so its failure is a FrontError naming the model and what needed the run."""
    try:
        return session.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error types, reported in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FrontError(f"{label}: onnxruntime cannot run it on the {why} ({first})") from None


def open_session(model: str | Path | onnx.ModelProto, device: str = "auto", model_dir: Path | None = None) -> Session:
    """A session on ``device``: 'cuda' (fail if CUDA cannot be used), 'cpu', or 'auto'
    (CUDA when it really works, else CPU with the reason in ``note``)."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    global _cuda_failure
    note = ""
    if device in ("auto", "cuda"):
        if CUDA not in ort.get_available_providers():
            note = "this onnxruntime build has no CUDAExecutionProvider"
        elif _cuda_failure is not None:
            note = _cuda_failure
        else:
            with _captured_stderr() as log:
                try:
                    s = ort.InferenceSession(src, _options(model_dir), providers=[CUDA, CPU])
                except Exception as e:  # noqa: BLE001 - reported as the reason below
                    s, log_err = None, str(e).splitlines()[0] if str(e) else type(e).__name__
                else:
                    log_err = ""
            if s is not None and s.get_providers() and s.get_providers()[0] == CUDA:
                return Session(s, CUDA, "")
            note = log_err or _cuda_reason(log)
            if s is not None:  # the session was made, on CPU: CUDA itself is unusable here
                _cuda_failure = note
        if device == "cuda":
            raise DeviceError(f"CUDA cannot be used: {note}")
    s = ort.InferenceSession(src, _options(model_dir), providers=[CPU])
    return Session(s, s.get_providers()[0], note)


def cuda_usable() -> tuple[bool, str]:
    """Whether a CUDA session really runs here, and why not (for tests and `validate`)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    try:
        s = open_session(m, "cuda")
    except DeviceError as e:
        return False, str(e)
    return s.provider == CUDA, ""
