"""The FRONT+ training loop: task loss (labels or self-distillation) plus the spectral
penalty, AdamW on seeded mini-batches, the module in eval mode."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from front_onnx.analysis.slots import Layout
from front_onnx.errors import FrontError
from front_onnx.torch.penalty import spectral_penalty


def outputs_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):
        out = tuple(out.values())
    return tuple(o for o in out if isinstance(o, torch.Tensor))


@torch.no_grad()
def all_outputs(module: nn.Module, inputs: Sequence[torch.Tensor], batch: int,
                 exact: bool = False) -> list[torch.Tensor]:
    """The module's float outputs on all rows, batch by batch, concatenated (detached).
    ``exact`` (a graph with a fixed batch axis, ``batch <= rows``): every call gets exactly
    ``batch`` rows, the last one filled up with rows from the start (their outputs dropped)."""
    parts: list[list[torch.Tensor]] = []
    n = int(inputs[0].shape[0])
    for i in range(0, n, batch):
        k = min(batch, n - i)
        rows = [x[torch.arange(i, i + batch) % n] for x in inputs] if exact else [x[i:i + k] for x in inputs]
        outs = outputs_tuple(module(*rows))
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


def output_drift(before: list[torch.Tensor], after: list[torch.Tensor], labels: torch.Tensor | None,
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


@dataclass
class _Trained:
    objective: str
    task_start: float
    task_final: float
    penalty_start: float
    penalty_final: float
    reference: list[torch.Tensor]
    refined: list[torch.Tensor]


def train(module: nn.Module, inputs: Sequence[torch.Tensor], labels: torch.Tensor | None,
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
    reference = all_outputs(module, inputs, chunk, exact)
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
            outs = outputs_tuple(module(*[x[idx] for x in inputs]))
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
    refined = all_outputs(module, inputs, chunk, exact)
    module.train(was_training)
    if not tasks:  # steps == 0: the figures of the unrefined model
        with torch.no_grad():
            idx = torch.arange(min(batch, n))
            tasks = [float(objective(outputs_tuple(module(*[x[idx] for x in inputs])), idx))]
            pens = [float(spectral_penalty(penalized(), keep, layouts, weighting))]
    tail = slice(-min(10, len(tasks)), None)
    return _Trained(objective.kind, tasks[0], float(np.mean(tasks[tail])), pens[0], float(np.mean(pens[tail])),
                    reference, refined)


def _progress(steps: int, desc: str, enabled: bool):
    """A tqdm bar on stderr showing the loss, the task term and the mean out-of-band share
    (the penalty, weighting "mean"); None when disabled."""
    if not enabled or steps == 0:
        return None
    from tqdm.auto import tqdm  # a core dependency (front_onnx.progress), imported when a bar is drawn

    return tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
