"""FRONT+: a short fine-tuning of the source that moves its weights' energy into the kept
low-frequency band, so that the learngene carries more of what the model knows.

Objective, per step on a seeded mini-batch of the given data::

    loss = task + lam * spectral_penalty(weights, keep)

- ``task``: with labels, cross-entropy when the labels are integers and the (first) output
  has one more axis than they have (logits ``[N, C]`` or ``[N, T, C]``), otherwise MSE
  between the first output and the labels. Without labels, self-distillation: per float
  output, the MSE between the module's output and the unrefined module's output on the
  same rows, divided by the mean square of the unrefined output (a *relative* MSE, so that
  ``lam`` means the same whatever the output scale), summed over the outputs. The unrefined
  outputs are computed once, before training, on all the data (held in memory).
- ``spectral_penalty`` (:mod:`front_onnx.torch.penalty`, weighting "mean"): the mean over
  the penalized weights of the share of each standardized weight's orthonormal DCT energy
  outside the kept corner of its feature axes; in [0, 1].

AdamW (no weight decay: the only pull away from the source is the penalty), the module in
eval mode (BatchNorm statistics and dropout frozen, as the ONNX graph computes), batches
drawn from a permutation seeded by ``seed``, reshuffled every pass over the data.

Two entry points:

- :func:`refine_module` (PyTorch users): trains the ``nn.Module`` in place, exports it with
  ``torch.onnx.export(dynamo=True)`` (dynamic batch, external data), checks onnxruntime
  against torch, and returns a :class:`RefineResult` (``.onnx_path``, ``.report``; it is
  path-like, so it can be passed to ``front_onnx.extract`` as is).
- :func:`refine_onnx` (ONNX users, ``front-onnx refine``): the ONNX graph runs in torch
  (:class:`front_onnx.torch.executor.OnnxModule`, every float weight initializer a
  parameter), is trained the same way, and the refined values are written back into the
  same graph (only initializer values change, checked), then onnxruntime on the written
  file is checked against the torch module. Returns a :class:`RefineReport`.

Report (:class:`RefineReport`): the out-of-band energy share at ``keep`` before and after,
per template of the extractor's structure, with the definition of ``front-onnx inspect``
(:mod:`front_onnx.analysis.inspection`: per block tensor in canonical layout, standardized,
orthonormal DCT, share outside ``kept_length(n, keep)`` on every feature axis; spatial taps
are kept whole as the extractor keeps them; averaged over the template's non-constant
blocks; the depth axis is not included, as the penalty does not see it). The headline
"mean share" is the plain mean over templates that have a feature axis. Output drift
against the unrefined model on the data: relative L2 of the outputs, and for classifiers
the accuracy before/after and the agreement of the argmax.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from front_onnx.analysis.slots import Layout, analyze_slots
from front_onnx.datafiles import load_npy, load_npz
from front_onnx.errors import FrontError, UnsupportedOpsError
from front_onnx.onnxio import OnnxModel, load_model, model_files, save_model
from front_onnx.outputs import data_companion, guard
from front_onnx.torch.data import (
    as_tensor,
    batch_copies,
    count_rows,
    fixed_batch,
    graph_inputs,
)
from front_onnx.torch.executor import OnnxModule
from front_onnx.torch.report import (
    RefineReport,
    RefineResult,
    TemplateShare,
    compare_shares,
    template_shares,
)
from front_onnx.torch.roundtrip import (
    MATCH_TOL,
    checked,
    export_module,
    graph_unchanged,
)
from front_onnx.torch.training import output_drift, train

__all__ = ["refine_module", "refine_onnx", "RefineResult", "RefineReport", "TemplateShare", "MATCH_TOL"]


# ----------------------------------------------------------------------------- PyTorch users
def refine_module(module: nn.Module, data: Any, labels: Any = None, *, steps: int = 200, lam: float = 1.0,
                  keep: float = 0.5, lr: float = 1e-4, batch_size: int = 64,
                  layouts: Mapping[str, Any] | None = None, output: str | Path | None = None,
                  progress: bool = True, seed: int = 0, weighting: str = "mean", input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None) -> RefineResult:
    """FRONT+ for a PyTorch module: fine-tune ``module`` in place for ``steps`` AdamW steps on
    the task loss (``labels`` given) or self-distillation (no labels) plus ``lam`` times the
    spectral penalty at ``keep``, export it to ONNX and check onnxruntime against torch.

    ``data``: one input array/tensor ``[N, ...]`` or a sequence of them (positional inputs
    of ``module.forward``), batched along axis 0. ``labels``: ``[N]`` integer classes
    (cross-entropy) or targets shaped like the first output (MSE). ``layouts``: parameter
    name -> Layout or tuple of axis kinds; only these parameters are penalized (default:
    every parameter with the layouts of ``front_onnx.torch.penalty.module_layouts``; pass
    ``{"head.weight": ("index", "feature")}`` etc. to keep a class axis whole).
    ``output``: the ONNX file (its weights go to ``OUTPUT.data``); default a fresh
    temporary folder. The per-template energy shares in the report are measured on the
    ONNX exports of the module before and after (so the module is exported twice).

    Returns a :class:`RefineResult`: ``.onnx_path`` (ready for ``front_onnx.extract``) and
    ``.report`` (:class:`RefineReport`); the result is itself path-like."""
    t0 = time.perf_counter()
    xs = [as_tensor(x, "data") for x in (data if isinstance(data, (list, tuple)) else [data])]
    lab = None if labels is None else as_tensor(labels, "labels")
    n = count_rows(xs, lab, "data", "labels")
    out = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="front-refine-")) / "refined.onnx"
    out = Path(os.path.abspath(out))
    example = [x[:min(n, 2)] for x in xs]
    names = list(input_names) if input_names else (["input"] if len(xs) == 1 else [f"input_{i}" for i in range(len(xs))])
    with tempfile.TemporaryDirectory(prefix=".front-refine-", dir=out.parent if out.parent.exists() else None) as td:
        before_path = export_module(module, example, Path(td) / "unrefined.onnx", names, output_names)
        before = template_shares(load_model(before_path), keep)
    if layouts is not None:
        lays = dict(layouts)
        missing = sorted(set(lays) - {k for k, _ in module.named_parameters()})
        if missing:
            raise ValueError(f"layouts for unknown parameter(s): {', '.join(missing[:10])}")
        penalized = lambda: {k: p for k, p in module.named_parameters() if k in lays}  # noqa: E731
    else:
        lays = None
        penalized = lambda: module  # noqa: E731
    n_pen = len(lays) if lays is not None else sum(1 for _ in module.parameters())
    tr = train(module, xs, lab, penalized, lays, steps=steps, lam=lam, keep=keep, lr=lr,
                batch_size=batch_size, seed=seed, progress=progress, desc="FRONT+ refine",
                    weighting=weighting)
    export_module(module, example, out, names, output_names)
    err, provider = checked(module, out, xs, names)
    after = template_shares(load_model(out), keep)
    shares = compare_shares(before, after)
    drift, acc_b, acc_a, agree = output_drift(tr.reference, tr.refined, lab, tr.objective)
    report = RefineReport(
        output=str(out), source=type(module).__name__, objective=tr.objective, steps=steps, lam=lam, keep=keep,
        lr=lr, batch_size=min(batch_size, n), seed=seed, rows=n, seconds=time.perf_counter() - t0,
        penalized=n_pen, trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        task_start=tr.task_start, task_final=tr.task_final, penalty_start=tr.penalty_start,
        penalty_final=tr.penalty_final, **shares, drift=drift,
        accuracy_before=acc_b, accuracy_after=acc_a, agreement=agree, ort_error=err, provider=provider)
    return RefineResult(out, report)


# ----------------------------------------------------------------------------- ONNX users


def refine_onnx(source: str | Path | OnnxModel, data: Any, labels: Any = None, *, steps: int = 200,
                lam: float = 1.0, keep: float = 0.5, lr: float = 1e-4, batch_size: int = 64,
                output: str | Path, progress: bool = True, seed: int = 0, weighting: str = "mean") -> RefineReport:
    """FRONT+ for an ONNX model: run the graph in torch with every float weight initializer
    a trainable parameter, train as :func:`refine_module` does (penalizing every weight the
    graph analysis gives a layout, with that layout; a shared initializer takes its first
    use's layout), write the refined values into a copy of the same graph at ``output``
    (only initializer values change; checked), and check onnxruntime on the written file
    against the torch module (relative error <= MATCH_TOL on sample batches).

    ``data``: an .npz path or a dict of arrays keyed by graph input name (positional when no
    name matches and the counts agree), or a sequence of arrays in input order. ``labels``:
    an .npy path or an array. A graph whose inputs declare a fixed batch size B on axis 0
    (``torch.onnx.export`` without dynamic shapes) runs on batches of exactly B rows
    everywhere (training, reference outputs, the onnxruntime check; the last reference
    batch is filled up with rows from the start), ``batch_size`` is ignored, and weights
    that are one value repeated over the B slots (constants folded for that batch) are
    frozen. Raises FrontError (one line naming the file) for unreadable, missing or
    mismatched inputs (including data that misses a fixed input size, or fewer rows than
    a fixed batch) and ops the torch executor cannot run."""
    t0 = time.perf_counter()
    model = source if isinstance(source, OnnxModel) else load_model(source)
    output = Path(os.path.abspath(output))
    data_what = str(data) if isinstance(data, (str, Path)) else "data"
    labels_what = str(labels) if isinstance(labels, (str, Path)) else "labels"
    guard([output, data_companion(output)],
          [*model_files(model), *(p for p in (data, labels) if isinstance(p, (str, Path)))])
    arrays = load_npz(Path(data)) if isinstance(data, (str, Path)) else data
    lab_arr = load_npy(Path(labels)) if isinstance(labels, (str, Path)) else labels

    try:
        module = OnnxModule(model)
    except UnsupportedOpsError as e:
        raise FrontError(f"{model.path}: {e}") from None
    names = list(module.input_names)
    xs = [torch.from_numpy(a) for a in graph_inputs(model, names, arrays, data_what)]
    lab = None if lab_arr is None else as_tensor(lab_arr, labels_what)
    n = count_rows(xs, lab, data_what, labels_what)
    fixed = fixed_batch(model, names, xs, data_what)
    gs = analyze_slots(model.proto, model.array)
    # only parameters train: constants (masks, rotary tables, scalars) keep their values
    parameters = {s.initializer for s in gs.slots if s.role is not None and not s.absent}
    frozen = sorted(set(module.param_names) - parameters) + (batch_copies(module, fixed) if fixed else [])
    for k in frozen:
        module.parameter(k).requires_grad_(False)

    lays: dict[str, Layout] = {}
    trainable = set(module.param_names) - set(frozen)
    for s in gs.slots:
        if s.layout is not None and s.view is None and s.initializer in trainable and s.initializer not in lays:
            lays[s.initializer] = s.layout
    penalized = lambda: {k: module.parameter(k) for k in lays}  # noqa: E731
    before = template_shares(model, keep)
    try:
        tr = train(module, xs, lab, penalized, lays, steps=steps, lam=lam, keep=keep, lr=lr,
                    batch_size=batch_size, seed=seed, progress=progress, desc="FRONT+ refine",
                    weighting=weighting, fixed_batch=fixed)
    except UnsupportedOpsError as e:
        raise FrontError(f"{model.path}: {e}") from None

    values = module.initializer_values()
    inits = set(model.initializer_names())
    new_values = {k: v for k, v in values.items() if k in inits}
    constants = {}
    for k, v in values.items():
        if k not in inits:
            node = model.constant_node(k)
            if node is not None:
                constants[node] = v
    save_model(model, output, new_values, constants=constants or None)
    written = load_model(output)
    diff = graph_unchanged(model.proto, written.proto)
    if diff:
        raise FrontError(f"{output}: {diff} (only initializer values may change)")
    err, provider = checked(module, output, xs, names, fixed)
    after = template_shares(written, keep)
    shares = compare_shares(before, after)
    drift, acc_b, acc_a, agree = output_drift(tr.reference, tr.refined, lab, tr.objective)
    return RefineReport(
        output=str(output), source=str(model.path), objective=tr.objective, steps=steps, lam=lam, keep=keep,
        lr=lr, batch_size=fixed or min(batch_size, n), seed=seed, rows=n, seconds=time.perf_counter() - t0,
        penalized=len(lays), trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        task_start=tr.task_start, task_final=tr.task_final, penalty_start=tr.penalty_start,
        penalty_final=tr.penalty_final, **shares, drift=drift,
        accuracy_before=acc_b, accuracy_after=acc_a, agreement=agree, ort_error=err, provider=provider)
