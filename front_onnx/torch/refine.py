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

import contextlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from front_onnx.analysis.inspection import build_report
from front_onnx.analysis.slots import Layout, analyze_slots
from front_onnx.errors import FrontError, UnsupportedOpsError
from front_onnx.onnxio import OnnxModel, load_model, model_files, save_model
from front_onnx.outputs import data_companion, guard, staged, write_text
from front_onnx.torch.executor import OnnxModule
from front_onnx.torch.penalty import spectral_penalty
from front_onnx.validation.runtime import open_session

MATCH_TOL = 1e-4      # onnxruntime vs torch: largest relative L2 error accepted
CHECK_ROWS = (16, 3)  # the sample batches of the onnxruntime check (two sizes: the batch axis is dynamic)

__all__ = ["refine_module", "refine_onnx", "RefineResult", "RefineReport", "TemplateShare", "MATCH_TOL"]


# ----------------------------------------------------------------------------- report
@dataclass
class TemplateShare:
    """Out-of-band energy share of one template (mean over its blocks), before and after."""

    template: str          # the inspect report's short label, e.g. 'blocks.attn.qkv'
    key: str
    role: str
    blocks: int
    elements: int          # per block
    before: float
    after: float


@dataclass
class RefineReport:
    output: str
    source: str            # the source ONNX file, or the module's class for refine_module
    objective: str         # 'cross-entropy', 'mse' or 'self-distillation (relative MSE)'
    steps: int
    lam: float
    keep: float
    lr: float
    batch_size: int
    seed: int
    rows: int              # data rows
    seconds: float
    penalized: int         # weights under the penalty
    trainable: int         # trainable weight elements
    task_start: float      # the first step's task loss and penalty, and the means of the last 10 steps
    task_final: float
    penalty_start: float
    penalty_final: float
    share_before: float    # mean over templates of the out-of-band share at keep
    share_after: float
    weighted_before: float  # the same, templates weighted by their elements (the big matrices dominate)
    weighted_after: float
    templates: list[TemplateShare] = field(default_factory=list)
    drift: float = 0.0     # relative L2 of the refined outputs against the unrefined ones, on the data
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    agreement: float | None = None   # share of rows whose argmax is unchanged (2-D outputs)
    ort_error: float = 0.0           # largest relative L2 error, onnxruntime vs torch
    provider: str = "CPUExecutionProvider"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6) if math.isfinite(v) else None
        for t in d["templates"]:
            t["before"], t["after"] = round(t["before"], 6), round(t["after"], 6)
        return d

    def table(self) -> str:
        lines = [f"{self.output}: refined {self.source} in {self.steps} steps, {self.seconds:.1f} s "
                 f"({self.objective}; lam {self.lam:g}, keep {self.keep:g}, lr {self.lr:g}, "
                 f"batch {self.batch_size}, {self.rows} rows, {self.penalized} weights penalized)",
                 f"task loss {self.task_start:.4g} -> {self.task_final:.4g}; "
                 f"penalty {self.penalty_start:.4f} -> {self.penalty_final:.4f}",
                 f"out-of-band energy share at keep {self.keep:g} (mean over blocks):"]
        w = max([len(t.template) for t in self.templates] + [8])
        lines.append(f"  {'template':<{w}}  blocks  before   after")
        for t in self.templates:
            lines.append(f"  {t.template:<{w}}  {t.blocks:>6}  {t.before:6.3f}  {t.after:6.3f}")
        lines.append(f"  {'mean':<{w}}  {'':>6}  {self.share_before:6.3f}  {self.share_after:6.3f}")
        lines.append(f"  {'by elements':<{w}}  {'':>6}  {self.weighted_before:6.3f}  {self.weighted_after:6.3f}")
        drift = f"outputs against the unrefined model: relative L2 drift {self.drift:.4f}"
        if self.accuracy_before is not None:
            drift += f"; accuracy {self.accuracy_before:.4f} -> {self.accuracy_after:.4f}"
        if self.agreement is not None:
            drift += f"; argmax agreement {self.agreement:.4f}"
        lines.append(drift)
        lines.append(f"onnxruntime vs torch: largest relative error {self.ort_error:.2e} ({self.provider})")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        """The report as JSON, written atomically."""
        return write_text(path, json.dumps(self.to_json(), indent=2) + "\n")


@dataclass
class RefineResult:
    """What :func:`refine_module` returns: the refined ONNX file and the report. Path-like
    (``os.fspath(result)`` and ``str(result)`` are the ONNX path), so it can go straight to
    ``front_onnx.extract`` or ``onnxruntime.InferenceSession``."""

    onnx_path: Path
    report: RefineReport

    def __fspath__(self) -> str:
        return str(self.onnx_path)

    def __str__(self) -> str:
        return str(self.onnx_path)


# ----------------------------------------------------------------------------- data
def _tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise FrontError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _rows(inputs: Sequence[torch.Tensor], labels: torch.Tensor | None, what: str, labels_what: str) -> int:
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


def _outputs_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):
        out = tuple(out.values())
    return tuple(o for o in out if isinstance(o, torch.Tensor))


def _float_outputs(outs: Sequence[torch.Tensor]) -> list[int]:
    return [i for i, o in enumerate(outs) if o.is_floating_point()]


@torch.no_grad()
def _all_outputs(module: nn.Module, inputs: Sequence[torch.Tensor], batch: int,
                 exact: bool = False) -> list[torch.Tensor]:
    """The module's float outputs on all rows, batch by batch, concatenated (detached).
    ``exact`` (a graph with a fixed batch axis, ``batch <= rows``): every call gets exactly
    ``batch`` rows, the last one filled up with rows from the start (their outputs dropped)."""
    parts: list[list[torch.Tensor]] = []
    n = int(inputs[0].shape[0])
    for i in range(0, n, batch):
        k = min(batch, n - i)
        rows = [x[torch.arange(i, i + batch) % n] for x in inputs] if exact else [x[i:i + k] for x in inputs]
        outs = _outputs_tuple(module(*rows))
        if not parts:
            parts = [[] for _ in outs]
        for p, o in zip(parts, outs):
            p.append(o.detach()[:k])
    return [torch.cat(p) for p in parts]


class _Objective:
    """The task term: cross-entropy / MSE against labels, or relative-MSE self-distillation."""

    def __init__(self, labels: torch.Tensor | None, reference: list[torch.Tensor]) -> None:
        self.labels = labels
        self.reference = reference
        first = reference[0] if reference else None
        if labels is None:
            self.kind = "self-distillation (relative MSE)"
            self.scale = [max(float(r.double().pow(2).mean()), 1e-12) if r.is_floating_point() else 0.0
                          for r in reference]
        elif (not labels.is_floating_point() and first is not None
              and first.dim() == labels.dim() + 1 and tuple(first.shape[:-1]) == tuple(labels.shape)):
            self.kind = "cross-entropy"
        else:
            if first is None or first.numel() != labels.numel():
                raise FrontError(f"labels of shape {tuple(labels.shape)} fit neither a cross-entropy nor an MSE "
                                 f"against the first output of shape {tuple(first.shape) if first is not None else ()}")
            self.kind = "mse"

    def __call__(self, outs: tuple[torch.Tensor, ...], idx: torch.Tensor) -> torch.Tensor:
        if self.kind == "cross-entropy":
            y = outs[0]
            return F.cross_entropy(y.reshape(-1, y.shape[-1]).float(), self.labels[idx].reshape(-1))
        if self.kind == "mse":
            y = outs[0]
            return F.mse_loss(y.float(), self.labels[idx].reshape(y.shape).to(torch.float32))
        total = outs[0].new_zeros((), dtype=torch.float32)
        for o, r, s in zip(outs, self.reference, self.scale):
            if o.is_floating_point():
                total = total + F.mse_loss(o.float(), r[idx].float()) / s
        return total


def _drift(before: list[torch.Tensor], after: list[torch.Tensor], labels: torch.Tensor | None,
           objective: str) -> tuple[float, float | None, float | None, float | None]:
    """(relative L2 of all float outputs, accuracy before, after, argmax agreement)."""
    num = den = 0.0
    for b, a in zip(before, after):
        if b.is_floating_point():
            num += float((a.double() - b.double()).pow(2).sum())
            den += float(b.double().pow(2).sum())
    drift = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    acc_b = acc_a = agree = None
    y0, y1 = before[0], after[0]
    if y0.is_floating_point() and y0.dim() >= 2 and y0.shape[-1] > 1 and objective != "mse":
        p0, p1 = y0.argmax(-1), y1.argmax(-1)
        agree = float((p0 == p1).double().mean())
        if objective == "cross-entropy":
            lab = labels.reshape(p0.shape)
            acc_b, acc_a = float((p0 == lab).double().mean()), float((p1 == lab).double().mean())
    return drift, acc_b, acc_a, agree


def _rel_err(ours: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(ours, ref):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            return math.inf
        den = float(np.linalg.norm(b64))
        worst = max(worst, float(np.linalg.norm(a64 - b64)) / (den if den > 0 else 1.0))
    return worst


# ----------------------------------------------------------------------------- training
@dataclass
class _Trained:
    objective: str
    task_start: float
    task_final: float
    penalty_start: float
    penalty_final: float
    reference: list[torch.Tensor]
    refined: list[torch.Tensor]


def _train(module: nn.Module, inputs: Sequence[torch.Tensor], labels: torch.Tensor | None,
           penalized: Callable[[], Any], layouts: Mapping[str, Layout] | None, *, steps: int, lam: float,
           keep: float, lr: float, batch_size: int, seed: int, progress: bool, desc: str,
           weighting: str = "mean", fixed_batch: int | None = None) -> _Trained:
    """``fixed_batch``: the graph's fixed batch size (at most the rows): every forward call
    then gets exactly that many rows, whatever ``batch_size`` says."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lam < 0 or lr < 0:
        raise ValueError("lam and lr must be >= 0")
    n = int(inputs[0].shape[0])
    batch = fixed_batch if fixed_batch else min(batch_size, n)
    with _threads_for(module):
        return _train_loop(module, inputs, labels, penalized, layouts, steps=steps, lam=lam, keep=keep, lr=lr,
                           batch=batch, exact=bool(fixed_batch), seed=seed, progress=progress, desc=desc,
                           weighting=weighting)


SMALL_MODEL = 1 << 20  # trainable elements under which training runs on one thread


@contextlib.contextmanager
def _threads_for(module: nn.Module):
    """One torch thread for a small model (measured on 2 shared cores: the 35k-weight sample
    ViT refined in 10 s on one thread and 115 s on two), the caller's setting otherwise."""
    n = torch.get_num_threads()
    small = sum(p.numel() for p in module.parameters()) < SMALL_MODEL
    if small and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and n > 1:
            torch.set_num_threads(n)


def _train_loop(module: nn.Module, inputs: Sequence[torch.Tensor], labels: torch.Tensor | None,
                penalized: Callable[[], Any], layouts: Mapping[str, Layout] | None, *, steps: int, lam: float,
                keep: float, lr: float, batch: int, exact: bool, seed: int, progress: bool, desc: str,
                weighting: str) -> _Trained:
    n = int(inputs[0].shape[0])
    was_training = module.training
    module.eval()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    chunk = batch if exact else max(batch, 256)
    reference = _all_outputs(module, inputs, chunk, exact)
    objective = _Objective(labels, reference)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if params else None
    tasks: list[float] = []
    pens: list[float] = []
    order, pos = torch.randperm(n, generator=g), 0
    bar = _progress(steps, desc, progress)
    try:
        for _ in range(steps):
            if pos + batch > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + batch]
            pos += batch
            outs = _outputs_tuple(module(*[x[idx] for x in inputs]))
            task = objective(outs, idx)
            pen = spectral_penalty(penalized(), keep, layouts, weighting)
            loss = task + lam * pen.to(task.dtype)
            if not torch.isfinite(loss):
                raise FrontError(f"refinement diverged at step {len(tasks) + 1} (loss {loss.item()}); "
                                 f"try a smaller --lr or --lam")
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            tasks.append(task.item())
            pens.append(pen.item())
            if bar is not None:
                bar.set_postfix(loss=f"{tasks[-1] + lam * pens[-1]:.4f}", task=f"{tasks[-1]:.4f}", oob=f"{pens[-1]:.4f}",
                                refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    refined = _all_outputs(module, inputs, chunk, exact)
    module.train(was_training)
    if not tasks:  # steps == 0: the figures of the unrefined model
        with torch.no_grad():
            idx = torch.arange(min(batch, n))
            tasks = [float(objective(_outputs_tuple(module(*[x[idx] for x in inputs])), idx))]
            pens = [float(spectral_penalty(penalized(), keep, layouts, weighting))]
    tail = slice(-min(10, len(tasks)), None)
    return _Trained(objective.kind, tasks[0], float(np.mean(tasks[tail])), pens[0], float(np.mean(pens[tail])),
                    reference, refined)


def _progress(steps: int, desc: str, enabled: bool):
    """A tqdm bar on stderr showing the loss, the task term and the mean out-of-band share
    (the penalty, weighting "mean"); None when disabled or tqdm is missing."""
    if not enabled or steps == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the torch extra; without it, no bar
        return None
    return tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- energy per template
def _template_shares(model: OnnxModel, keep: float) -> dict[str, tuple[str, str, int, int, float]]:
    """key -> (label, role, blocks, elements per block, mean out-of-band share) for templates
    with a feature axis."""
    rep = build_report(model, keeps=[keep])
    k = rep.keeps and f"{rep.keeps[0]:g}"
    out = {}
    for t in rep.templates:
        m = t.mean.get(k)
        if m is not None:
            label = f"{t.module or t.short} {t.role}"
            out[t.key] = (label, t.role, t.depth, int(np.prod(t.shape, dtype=np.int64)), 1.0 - m)
    return out


def _compare_shares(before: dict, after: dict) -> dict[str, Any]:
    """The report's template rows and mean shares (plain and weighted by elements)."""
    rows = [TemplateShare(b[0], key, b[1], b[2], b[3], b[4], after[key][4]) for key, b in before.items() if key in after]
    if not rows:
        return dict(templates=rows, share_before=0.0, share_after=0.0, weighted_before=0.0, weighted_after=0.0)
    w = np.array([r.blocks * r.elements for r in rows], dtype=np.float64)
    b = np.array([r.before for r in rows])
    a = np.array([r.after for r in rows])
    return dict(templates=rows, share_before=float(b.mean()), share_after=float(a.mean()),
                weighted_before=float((b * w).sum() / w.sum()), weighted_after=float((a * w).sum() / w.sum()))


# ----------------------------------------------------------------------------- files
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


def _check_ort(module: nn.Module, path: Path, inputs: Sequence[torch.Tensor], names: Sequence[str],
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
                ours = [o.numpy() for o in _outputs_tuple(module(*xs))]
            theirs, provider = _ort_outputs(path, {k: x.numpy() for k, x in zip(names, xs)})
            if len(theirs) != len(ours):
                raise FrontError(f"{path}: onnxruntime gives {len(theirs)} outputs, torch {len(ours)}")
            worst = max(worst, _rel_err(theirs, ours))
    finally:
        module.train(was_training)
    if not worst <= MATCH_TOL:
        raise FrontError(f"{path}: onnxruntime disagrees with torch (relative error {worst:.2e} > {MATCH_TOL:g})")
    return worst, provider


def _checked(module: nn.Module, path: Path, inputs: Sequence[torch.Tensor], names: Sequence[str],
             fixed_batch: int | None = None) -> tuple[float, str]:
    """``_check_ort``; a file that fails it is removed (with its data file)."""
    try:
        return _check_ort(module, path, inputs, names, fixed_batch)
    except BaseException:
        for f in (path, Path(str(path) + ".data")):
            f.unlink(missing_ok=True)
        raise


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
    xs = [_tensor(x, "data") for x in (data if isinstance(data, (list, tuple)) else [data])]
    lab = None if labels is None else _tensor(labels, "labels")
    n = _rows(xs, lab, "data", "labels")
    out = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="front-refine-")) / "refined.onnx"
    out = Path(os.path.abspath(out))
    example = [x[:min(n, 2)] for x in xs]
    names = list(input_names) if input_names else (["input"] if len(xs) == 1 else [f"input_{i}" for i in range(len(xs))])
    with tempfile.TemporaryDirectory(prefix=".front-refine-", dir=out.parent if out.parent.exists() else None) as td:
        before_path = export_module(module, example, Path(td) / "unrefined.onnx", names, output_names)
        before = _template_shares(load_model(before_path), keep)
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
    tr = _train(module, xs, lab, penalized, lays, steps=steps, lam=lam, keep=keep, lr=lr,
                batch_size=batch_size, seed=seed, progress=progress, desc="FRONT+ refine",
                    weighting=weighting)
    export_module(module, example, out, names, output_names)
    err, provider = _checked(module, out, xs, names)
    after = _template_shares(load_model(out), keep)
    shares = _compare_shares(before, after)
    drift, acc_b, acc_a, agree = _drift(tr.reference, tr.refined, lab, tr.objective)
    report = RefineReport(
        output=str(out), source=type(module).__name__, objective=tr.objective, steps=steps, lam=lam, keep=keep,
        lr=lr, batch_size=min(batch_size, n), seed=seed, rows=n, seconds=time.perf_counter() - t0,
        penalized=n_pen, trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        task_start=tr.task_start, task_final=tr.task_final, penalty_start=tr.penalty_start,
        penalty_final=tr.penalty_final, **shares, drift=drift,
        accuracy_before=acc_b, accuracy_after=acc_a, agreement=agree, ort_error=err, provider=provider)
    return RefineResult(out, report)


# ----------------------------------------------------------------------------- ONNX users
def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise FrontError(f"{path}: cannot read inputs ({e})") from None


def _load_labels(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise FrontError(f"{path}: cannot read labels ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise FrontError(f"{path}: expected one array (.npy), got an archive")
    return arr


_FLOAT = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
          onnx.TensorProto.FLOAT16: np.float16}
_INT = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def _graph_inputs(model: OnnxModel, names: Sequence[str], arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
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


def _fixed_batch(model: OnnxModel, names: Sequence[str], xs: Sequence[torch.Tensor], what: str) -> int | None:
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


def _batch_copies(module: nn.Module, batch: int) -> list[str]:
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
    arrays = _load_npz(Path(data)) if isinstance(data, (str, Path)) else data
    lab_arr = _load_labels(Path(labels)) if isinstance(labels, (str, Path)) else labels

    try:
        module = OnnxModule(model)
    except UnsupportedOpsError as e:
        raise FrontError(f"{model.path}: {e}") from None
    names = list(module.input_names)
    xs = [torch.from_numpy(a) for a in _graph_inputs(model, names, arrays, data_what)]
    lab = None if lab_arr is None else _tensor(lab_arr, labels_what)
    n = _rows(xs, lab, data_what, labels_what)
    fixed = _fixed_batch(model, names, xs, data_what)
    frozen = _batch_copies(module, fixed) if fixed else []
    for k in frozen:
        module.parameter(k).requires_grad_(False)

    gs = analyze_slots(model.proto)
    lays: dict[str, Layout] = {}
    trainable = set(module.param_names) - set(frozen)
    for s in gs.slots:
        if s.layout is not None and s.initializer in trainable and s.initializer not in lays:
            lays[s.initializer] = s.layout
    penalized = lambda: {k: module.parameter(k) for k in lays}  # noqa: E731
    before = _template_shares(model, keep)
    try:
        tr = _train(module, xs, lab, penalized, lays, steps=steps, lam=lam, keep=keep, lr=lr,
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
    err, provider = _checked(module, output, xs, names, fixed)
    after = _template_shares(written, keep)
    shares = _compare_shares(before, after)
    drift, acc_b, acc_a, agree = _drift(tr.reference, tr.refined, lab, tr.objective)
    return RefineReport(
        output=str(output), source=str(model.path), objective=tr.objective, steps=steps, lam=lam, keep=keep,
        lr=lr, batch_size=fixed or min(batch_size, n), seed=seed, rows=n, seconds=time.perf_counter() - t0,
        penalized=len(lays), trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        task_start=tr.task_start, task_final=tr.task_final, penalty_start=tr.penalty_start,
        penalty_final=tr.penalty_final, **shares, drift=drift,
        accuracy_before=acc_b, accuracy_after=acc_a, agreement=agree, ort_error=err, provider=provider)
