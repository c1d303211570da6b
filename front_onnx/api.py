"""The Python API: extract, plan, initialize, transfer, validate, inspect, weights, refine.

Each function reads its inputs, refuses outputs that would overwrite them (before any
work; ``front_onnx.outputs.guard``), runs the layers below and writes atomically. The
CLI is a thin layer over these functions.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.fft

from front_onnx.analysis import analyze
from front_onnx.analysis.inspection import InspectReport, build_report
from front_onnx.analysis.naming import NamedWeights, named_weights
from front_onnx.analysis.structure import stage_blocks
from front_onnx.datafiles import load_npz
from front_onnx.errors import FrontError, ValidationFailed
from front_onnx.method.extraction import extract_learngene
from front_onnx.method.learngene import Learngene
from front_onnx.method.pipeline import (
    DEFAULT_CONVENTION,
    DEFAULT_DEPTH,
    DEFAULT_KEEP,
    DEFAULT_METHOD,
    DEFAULT_SCALE,
    expansion_blocked,
    initialize_into,
    pair_analysis,
)
from front_onnx.method.planning import Plan, make_plan, overlap_verdict, summary_lines
from front_onnx.onnxio import OnnxModel, check_tensors, load_model, model_files
from front_onnx.outputs import data_companion, guard, staged, write_bytes, write_text
from front_onnx.validation.checks import ValidationReport
from front_onnx.validation.checks import validate as _validate
from front_onnx.validation.calibration import calibrator
from front_onnx.validation.equivalence import (alignment_order, checked_expansion, ordered_learngene,
                                              transfer_learngene)

__all__ = ["extract", "plan", "initialize", "transfer", "validate", "inspect", "weights", "refine",
           "refine_module", "transfer_module", "InitResult", "FrontError", "ValidationFailed", "DEFAULT_KEEP",
           "DEFAULT_CONVENTION", "DEFAULT_DEPTH", "DEFAULT_METHOD", "DEFAULT_SCALE", "LEARNGENE_SUFFIX"]

LEARNGENE_SUFFIX = ".safetensors"  # a source path with this suffix is a learngene, not a model

PathLike = str | Path


def _all_cores(fn):
    """Run the DCTs on every core (the results do not depend on the number of threads)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with scipy.fft.set_workers(os.cpu_count() or 1):
            return fn(*args, **kwargs)
    return wrapper


@dataclass
class InitResult:
    output: Path
    plan: Plan
    seconds: float
    split: int                 # shared target initializers split into one per value
    validation: ValidationReport | None = None
    validation_seconds: float | None = None
    report: Path | None = None  # where the full plan was written (--report)

    def summary_line(self) -> str:
        sm = self.plan.summary()
        return (f"{self.output}: {sm['written_fraction']:.1%} of weight elements written; "
                f"{sm['written']} slots written, {sm['left']} left; {self.split} shared initializers split; "
                f"{self.seconds:.2f} s")

    def detail_lines(self) -> list[str]:
        """Where the structures diverge and what was left, grouped by reason."""
        return summary_lines(self.plan)

    def to_json(self) -> dict[str, Any]:
        """The summary as data (``--json``): counts and written fraction, what was left by
        reason, where the structures diverge, the files written, timings and the validation
        report (null when not run). The full per-slot plan is ``write_report``'s."""
        companion = data_companion(self.output)
        return {
            "ok": self.validation.ok if self.validation is not None else True,
            "output": str(self.output),
            "data_file": str(companion) if companion.exists() else None,
            "report": str(self.report) if self.report is not None else None,
            "summary": self.plan.summary(),
            "split": self.split,
            "left_by_reason": [{"reason": r, "slots": n, "elements": e} for r, n, e in self.plan.left_by_reason()],
            "divergence": self.plan.divergence,
            "keep": self.plan.keep, "convention": self.plan.convention, "depth": self.plan.depth,
            "timings": {"write_s": round(self.seconds, 4),
                        "validation_s": round(self.validation_seconds, 4) if self.validation_seconds is not None
                        else None},
            "validation": self.validation.to_json() if self.validation is not None else None,
        }


def _model(m: PathLike | OnnxModel) -> OnnxModel:
    """A loaded model whose every initializer declaration was checked against its data
    (sizes, lengths, external files) before anything is read: OnnxFileError otherwise."""
    model = m if isinstance(m, OnnxModel) else load_model(m)
    check_tensors(model)
    return model


def _learngene(g: PathLike | Learngene) -> Learngene:
    return g if isinstance(g, Learngene) else Learngene.load(g)


def _files(*things: Any) -> list[Path]:
    """The files a command reads: every model's files, and every path given as such."""
    out: list[Path] = []
    for x in things:
        if isinstance(x, OnnxModel):
            out.extend(model_files(x))
        elif isinstance(x, (str, Path)):
            out.append(Path(x))
    return out


@_all_cores
def extract(source: PathLike | OnnxModel, *, keep: float = DEFAULT_KEEP, convention: str = DEFAULT_CONVENTION,
            allow_nonfinite: bool = False, output: PathLike | None = None,
            align: bool | str | None = None) -> Learngene:
    """The learngene of a source ONNX model, also written to ``output`` when given. NaN/Inf
    in the source weights raise OnnxFileError unless ``allow_nonfinite`` (those templates
    are then skipped and listed in ``Learngene.skipped``). ``align`` ('smooth', 'importance', 'diverse';
    none by default) orders the source's units first, as ``transfer`` does, and the learngene
    records it (``unit_order``): ``initialize --method hybrid`` from an 'importance' or 'diverse' learngene
    selects the strongest units, as ``transfer`` does."""
    s = _model(source)
    if output is not None:
        guard([output], _files(s))
    order = alignment_order(align, "front")
    with tempfile.TemporaryDirectory(prefix="front-onnx-align-") as tmp:
        analysis = analyze(s) if order else None  # the aligned copy's structure is the source's
        gene, _ = ordered_learngene(s, analysis, Path(tmp), order,
                                    lambda m: extract_learngene(m, keep=keep, convention=convention,
                                                                allow_nonfinite=allow_nonfinite, structure=analysis))
    if output is not None:
        gene.save(output)
    return gene


@_all_cores
def plan(source: PathLike | OnnxModel | Learngene, target: PathLike | OnnxModel, *,
         keep: float = DEFAULT_KEEP, convention: str = DEFAULT_CONVENTION, depth: str = DEFAULT_DEPTH,
         allow_nonfinite: bool = False, method: str = DEFAULT_METHOD, align: bool | str | None = None) -> Plan:
    """What initializing ``target`` from ``source`` would do: the same plan ``transfer``
    computes (the source's units ordered as ``align`` says, as ``transfer`` orders them), with
    ``verdict`` set to the reason ``transfer`` would refuse it ('' when it would not).
    ``source`` is a model, a Learngene, or a path: a learngene file when it ends in
    ``.safetensors``. Whether an expanded growth (``method='expand'``) is kept depends on the
    written target's outputs: that plan runs the transfer into a temporary folder."""
    if isinstance(source, (str, Path)) and Path(source).suffix == LEARNGENE_SUFFIX:
        source = Learngene.load(source)
    t = _model(target)
    note = None
    blocked = ""
    if isinstance(source, Learngene):
        gene = source
        gs, st = analyze(t, stage_blocks(gene.templates))
    else:  # as transfer does it: the pair analyzed together
        s = _model(source)
        source_analysis, (gs, st) = pair_analysis(s, t)
        blocked = expansion_blocked(source_analysis, (gs, st)) if method == "expand" else ""
        if blocked:
            method = "hybrid"
        with tempfile.TemporaryDirectory(prefix="front-onnx-align-") as tmp:
            gene, note = transfer_learngene(s, source_analysis, (gs, st), Path(tmp), align=align, keep=keep,
                                            convention=convention, depth=depth, allow_nonfinite=allow_nonfinite,
                                            method=method, target=t)
    p = make_plan(gene, gs, st, [n.name for n in t.proto.graph.node], depth, method)
    label = gene.source if isinstance(source, Learngene) else str(getattr(source, "path", source))
    p.verdict = overlap_verdict(p, st, str(t.path), label or "the source")  # what transfer would refuse
    if p.expanded and not isinstance(source, Learngene) and not p.verdict:
        # whether the expansion is kept depends on the written target's outputs: transfer decides, in a
        # temporary folder, and its plan is the one to show
        with tempfile.TemporaryDirectory(prefix="front-onnx-plan-") as tmp:
            done = transfer(source, t, Path(tmp) / "expanded.onnx", keep=keep, convention=convention, depth=depth,
                            allow_nonfinite=allow_nonfinite, method=method, align=align)
        return done.plan
    if blocked and _transforms(p):
        p.notes.append(f"expand: {blocked}: the growth is transformed, as --method hybrid")
    if note is not None:
        p.notes.append(note.describe())
    return p


def _transforms(p: Plan) -> bool:
    """Whether a plan transforms a template (one it neither selects nor expands: a growth)."""
    return any(v == "ok" and k not in p.selected and k not in p.expanded for k, v in p.templates.items())


def _init_outputs(output: PathLike, report: PathLike | None) -> list[Path | None]:
    return [Path(output), data_companion(output), Path(report) if report is not None else None]


@_all_cores
def initialize(target: PathLike | OnnxModel, learngene: PathLike | Learngene, output: PathLike, *,
               report: PathLike | None = None, external_data: bool | None = None,
               validate: bool = False, device: str = "auto", strict: bool = False,
               keep_invalid: bool = False, depth: str = DEFAULT_DEPTH, method: str = DEFAULT_METHOD,
               scale: str = DEFAULT_SCALE) -> InitResult:
    """Initialize ``target`` from a learngene and write the result to ``output``.

    ``depth`` says how a stage's blocks are resampled when the target has another number
    of them: 'spectral' (DCT along the layer axis, as the paper), 'nearest' or 'linear'
    (by relative depth; see ``spectral.resample_layers``). ``method`` 'select' fills the target
    by Weight Selection (``method.selection``; needs a learngene of keep 1.0), ``scale`` sets
    the written weights' amplitude (``method.amplitude``).

    With ``validate`` the output is checked against the original target (see
    ``front_onnx.validate``); a failed hard check (or any warning with ``strict``) raises
    ValidationFailed and removes the output unless ``keep_invalid``."""
    t0 = time.perf_counter()
    t = _model(target)
    guard(_init_outputs(output, report), _files(t, learngene))
    gene = _learngene(learngene)
    label = str(learngene) if not isinstance(learngene, Learngene) else (gene.source or "the learngene")
    result = _initialize(t, gene, Path(output), t0, report, external_data, analyze(t, stage_blocks(gene.templates)),
                         depth, label=label, method="hybrid" if method == "expand" else method, scale=scale)
    if method == "expand" and _transforms(result.plan):
        result.plan.notes.append("expand: from a learngene the growth is transformed, as --method hybrid (an "
                                 "expansion is kept only where it computes the source's outputs, which needs the "
                                 "source model: transfer)")
    _finish(result, validate, t, None, device, strict, keep_invalid, compare=False)
    return result


def _initialize(t: OnnxModel, gene: Learngene, output: Path, t0: float, report: PathLike | None,
                external_data: bool | None, analysis, depth: str, release: bool = False,
                label: str = "", method: str = DEFAULT_METHOD, scale: str = DEFAULT_SCALE,
                calibrator=None) -> InitResult:
    if scale == "calibrated" and calibrator is None:
        raise FrontError(f"{label or 'the learngene'}: --scale calibrated measures the source model's layers; "
                         "it needs the source model (transfer), not a learngene")
    p, split = initialize_into(t, gene, output, analysis, depth, external_data=external_data, release=release,
                               label=label, method=method, scale=scale, calibrate=calibrator)
    return InitResult(output, p, time.perf_counter() - t0, split,
                      report=Path(report) if report is not None else None)


@_all_cores
def transfer(source: PathLike | OnnxModel, target: PathLike | OnnxModel, output: PathLike, *,
             keep: float = DEFAULT_KEEP, convention: str = DEFAULT_CONVENTION, report: PathLike | None = None,
             external_data: bool | None = None, validate: bool = False, device: str = "auto",
             strict: bool = False, keep_invalid: bool = False, depth: str = DEFAULT_DEPTH,
             allow_nonfinite: bool = False, method: str = DEFAULT_METHOD, scale: str = DEFAULT_SCALE,
             align: bool | str | None = None,
             calibration_inputs: PathLike | Mapping[str, np.ndarray] | None = None) -> InitResult:
    """``extract`` + ``initialize`` in memory; byte-identical to running them one after the other.
    ``allow_nonfinite`` as in ``extract``; ``method`` and ``scale`` as in ``initialize`` (with
    'select' the source is read whole, whatever ``keep``). ``align`` permutes the source's
    channel spaces into a smooth order first (``method.alignment``; checked to keep the
    source's function, ``validation.equivalence``). With ``scale='calibrated'`` each layer's
    output scale is matched to the source's on ``calibration_inputs`` (arrays keyed by input
    name or an ``.npz`` of them; else synthesized), ``validation.calibration``.
    ``validate`` as in ``initialize``, with activation scales compared with the source and,
    at keep 1 into an identical architecture, outputs that must reproduce the source's."""
    t0 = time.perf_counter()
    t = _model(target)
    s = _model(source)
    guard(_init_outputs(output, report), _files(t, s, calibration_inputs))
    if isinstance(calibration_inputs, (str, Path)):
        calibration_inputs = load_npz(calibration_inputs)
    source_analysis, analysis = pair_analysis(s, t)
    blocked = expansion_blocked(source_analysis, analysis) if method == "expand" else ""
    if blocked:  # decided before anything is extracted: the growth is transformed, as 'hybrid'
        method = "hybrid"
    with tempfile.TemporaryDirectory(prefix="front-onnx-align-") as tmp:
        gene, note = transfer_learngene(s, source_analysis, analysis, Path(tmp), align=align, keep=keep,
                                        convention=convention, depth=depth, allow_nonfinite=allow_nonfinite,
                                        method=method, target=t)
    source_path = s.path
    calibrate = calibrator(s, source_analysis, analysis, calibration_inputs) if scale == "calibrated" else None
    if method == "expand":
        def transformed() -> Learngene:  # the learngene 'hybrid' reads, for a growth expansion cannot keep
            with tempfile.TemporaryDirectory(prefix="front-onnx-align-") as tmp:
                return transfer_learngene(s, source_analysis, analysis, Path(tmp), align=align, keep=keep,
                                          convention=convention, depth=depth, allow_nonfinite=allow_nonfinite,
                                          method="hybrid", target=t)[0]
        result = _expanded(s, t, gene, transformed, Path(output), t0, report, external_data, analysis, depth,
                           scale, calibrate)
    else:
        del s  # an inline source's weights need not stay in memory while the target is written
        result = _initialize(t, gene, Path(output), t0, report, external_data, analysis, depth, release=True,
                             label=str(source_path), method=method, scale=scale, calibrator=calibrate)
    if blocked and _transforms(result.plan):
        result.plan.notes.append(f"expand: {blocked}: the growth is transformed, as --method hybrid")
    if note is not None:
        result.plan.notes.append(note.describe())
    _finish(result, validate, t, source_path, device, strict, keep_invalid,
            compare=None if keep == 1.0 else False)
    return result


def _expanded(s: OnnxModel, t: OnnxModel, gene: Learngene, transformed, output: Path, t0: float,
              report: PathLike | None, external_data: bool | None, analysis, depth: str, scale: str,
              calibrate) -> InitResult:
    """``method='expand'``, checked: the target is written with its growth expanded
    (``method.expansion``), and kept when it computes the source's outputs on synthesized
    inputs; else written again with the growth transformed, as 'hybrid' (``transformed``
    gives that learngene). Staged next to ``output``: only the kept one is moved there."""
    label = str(s.path)
    with staged(output) as tmp:
        def write(method: str):
            for p in tmp.parent.iterdir():  # the expanded target, when it is written again
                p.unlink()
            r = _initialize(t, gene if method == "expand" else transformed(), tmp, t0, report, external_data,
                            analysis, depth, release=method != "expand", label=label, method=method, scale=scale,
                            calibrator=calibrate)
            return r, r.plan, tmp

        result, _ = checked_expansion(s, write)
    result.output = output
    return result


def _finish(result: InitResult, validate: bool, target: OnnxModel, source: Path | None, device: str,
            strict: bool, keep_invalid: bool, compare: bool | None) -> None:
    """Validate the output when asked, then write the report (with the validation result,
    also when validation fails: the report says which check)."""
    try:
        if validate:
            _validate_output(result, target, source, device, strict, keep_invalid, compare)
    except FrontError:  # a failed check, a device that cannot be used: the report says so
        if result.report is not None:
            write_report(result, result.report)
        raise
    if result.report is not None:
        write_report(result, result.report)


def _validate_output(result: InitResult, target: OnnxModel, source: Path | None, device: str, strict: bool,
                     keep_invalid: bool, compare: bool | None) -> None:
    t0 = time.perf_counter()
    rep = _validate(result.output, reference=target, source=source, device=device, strict=strict,
                    compare_outputs=compare)
    result.validation = rep
    result.validation_seconds = time.perf_counter() - t0
    if rep.ok:
        return
    if not keep_invalid:
        for f in (result.output, data_companion(result.output)):
            f.unlink(missing_ok=True)
    what = "; ".join(f"{c.name}: {c.detail or c.figure}" for c in rep.failed)
    kept = "kept as asked" if keep_invalid else "removed"
    err = ValidationFailed(f"{result.output}: validation failed ({what}); output {kept}", rep)
    err.result = result  # type: ignore[attr-defined]  # the summary, for `--json`
    raise err


@_all_cores
def validate(model: PathLike | OnnxModel, *, inputs: PathLike | Mapping[str, np.ndarray] | None = None,
             **kwargs) -> ValidationReport:
    """Validate a model with onnxruntime; ``inputs`` are arrays keyed by input name or an
    ``.npz`` file of them (else synthesized). Other options: ``front_onnx.validation.validate``."""
    if isinstance(inputs, (str, Path)):
        inputs = load_npz(inputs)
    return _validate(model, inputs=inputs, **kwargs)


@_all_cores
def inspect(model: PathLike | OnnxModel, *, plot: PathLike | None = None) -> InspectReport:
    """What front-onnx finds in a model: stages, blocks and templates, each weight's role,
    layout, shape and dtype, and per block the share of its spectral energy inside the
    low-frequency corner at keep 0.25 / 0.5 / 0.75 (see ``front_onnx.analysis.inspection``).
    With ``plot``, also draws that picture to a PNG (needs matplotlib)."""
    m = _model(model)
    if plot is not None:
        guard([plot], _files(m))
    rep = build_report(m)
    if plot is not None:
        rep.plot(plot)
    return rep


def weights(model: PathLike | OnnxModel, output: PathLike | None = None, *, names: str = "torch") -> NamedWeights:
    """A model's float weights keyed by framework parameter names in framework layout
    (``names="torch"``), or by ONNX initializer names as stored (``"onnx"``), for loading
    an initialized model back into training; written atomically to ``output``
    (safetensors) when given. Its ``unnamed`` lists the weights no name could be found for."""
    m = _model(model)
    if output is not None:
        guard([output], _files(m))
    nw = named_weights(m, names)
    if output is not None:
        write_bytes(output, nw.safetensors())
    return nw


def refine(source: PathLike | OnnxModel, data, labels=None, *, output: PathLike, report: PathLike | None = None,
           steps: int = 200, lam: float = 1.0, keep: float = 0.5, lr: float = 1e-4, batch_size: int = 64,
           progress: bool = True, seed: int = 0, weighting: str = "mean"):
    """FRONT+ for an ONNX source: fine-tune it briefly with the spectral penalty and write the
    refined weights into a copy of the same graph at ``output`` (and the report as JSON to
    ``report`` when given); returns the ``RefineReport``. ``data``: an ``.npz`` path or
    arrays keyed by graph input name; ``labels``: an ``.npy`` path or an array. Needs torch
    (the ``torch`` extra); see ``front_onnx.torch.refine``."""
    m = _model(source)
    guard([output, data_companion(output), report], _files(m, data, labels))
    refine_onnx = _torch_part("refine_onnx")
    rep = refine_onnx(m, data, labels, steps=steps, lam=lam, keep=keep, lr=lr, batch_size=batch_size,
                      output=output, progress=progress, seed=seed, weighting=weighting)
    if report is not None:
        write_text(report, json.dumps(rep.to_json(), indent=2) + "\n")
    return rep


def refine_module(module, data, labels=None, **kwargs):
    """FRONT+ for a PyTorch module: fine-tune it in place, export it to ONNX and check
    onnxruntime against torch; returns a ``RefineResult`` (``.onnx_path``, ``.report``,
    path-like). Options as ``front_onnx.torch.refine.refine_module``."""
    return _torch_part("refine_module")(module, data, labels, **kwargs)


def transfer_module(source, target, example_inputs, **kwargs):
    """FRONT between two PyTorch modules: export both to ONNX in a temporary folder, transfer,
    and load the result into ``target`` with ``load_state_dict(strict=True)``; returns a
    ``ModuleTransfer`` (unpacks as ``module, plan``). Options as
    ``front_onnx.torch.modules.transfer_module``."""
    try:
        from front_onnx.torch import modules as _modules
    except ImportError as e:
        raise FrontError(f"transfer_module needs torch (pip install 'front-onnx[torch]'): {e}") from None
    return _modules.transfer_module(source, target, example_inputs, **kwargs)


def _torch_part(name: str):
    try:
        from front_onnx.torch import refine as _refine
    except ImportError as e:
        raise FrontError(f"FRONT+ refinement needs torch (pip install 'front-onnx[torch]'): {e}") from None
    return getattr(_refine, name)


def write_report(result: InitResult, path: PathLike) -> None:
    """The full plan as JSON, with the validation result (null when not run), written atomically."""
    v = result.validation
    data = {"output": str(result.output), "seconds": round(result.seconds, 4), "split": result.split,
            "validation_seconds": round(result.validation_seconds, 4) if result.validation_seconds is not None
            else None,
            "validation": v.to_json() if v is not None else None,
            **result.plan.to_json()}
    write_text(path, json.dumps(data, indent=2) + "\n")
