"""What a FRONT+ refinement did: the out-of-band energy share per template before and after,
the task and penalty losses, and the drift of the outputs (``RefineReport``)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from front_onnx.analysis.inspection import build_report
from front_onnx.onnxio import OnnxModel
from front_onnx.outputs import write_text


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


def template_shares(model: OnnxModel, keep: float) -> dict[str, tuple[str, str, int, int, float]]:
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


def compare_shares(before: dict, after: dict) -> dict[str, Any]:
    """The report's template rows and mean shares (plain and weighted by elements)."""
    rows = [TemplateShare(b[0], key, b[1], b[2], b[3], b[4], after[key][4]) for key, b in before.items() if key in after]
    if not rows:
        return dict(templates=rows, share_before=0.0, share_after=0.0, weighted_before=0.0, weighted_after=0.0)
    w = np.array([r.blocks * r.elements for r in rows], dtype=np.float64)
    b = np.array([r.before for r in rows])
    a = np.array([r.after for r in rows])
    return dict(templates=rows, share_before=float(b.mean()), share_after=float(a.mean()),
                weighted_before=float((b * w).sum() / w.sum()), weighted_after=float((a * w).sum() / w.sum()))


def rel_err(ours: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(ours, ref):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            return math.inf
        den = float(np.linalg.norm(b64))
        worst = max(worst, float(np.linalg.norm(a64 - b64)) / (den if den > 0 else 1.0))
    return worst
