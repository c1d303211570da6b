"""The Python API: extract, plan, initialize, transfer, validate, inspect (the CLI is a thin layer over it)."""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import scipy.fft

from front_onnx.extraction import analyze, extract_learngene
from front_onnx.inspection import InspectReport, build_report
from front_onnx.materialize import slot_values, target_shapes, write_initialized
from front_onnx.learngene import Learngene
from front_onnx.onnx_io import OnnxModel, check_tensors, external_data_files, load_model
from front_onnx.planning import Plan, make_plan
from front_onnx.validation import ValidationReport, validate as _validate

DEFAULT_KEEP = 1.0          # the defaults are the convergence benchmark's best (docs/results.md)
DEFAULT_CONVENTION = "ortho"
DEFAULT_DEPTH = "nearest"     # measured best (docs/results.md)
_ALL = 1 << 62  # "every coefficient" in a ``needed`` shape


def _all_cores(fn):
    """Run the DCTs on every core (the results do not depend on the number of threads)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with scipy.fft.set_workers(os.cpu_count() or 1):
            return fn(*args, **kwargs)
    return wrapper


class FrontError(Exception):
    """A user-facing problem (one line, names the file)."""


class ValidationFailed(FrontError):
    """An initialized model failed a hard validation check; ``report`` says which."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class InitResult:
    output: Path
    plan: Plan
    seconds: float
    split: int                 # shared target initializers split into one per value
    validation: ValidationReport | None = None

    def summary_line(self) -> str:
        sm = self.plan.summary()
        return (f"{self.output}: {sm['written_fraction']:.1%} of weight elements written; "
                f"{sm['written']} slots written, {sm['left']} left; {self.split} shared initializers split; "
                f"{self.seconds:.2f} s")


def _model(m: str | Path | OnnxModel) -> OnnxModel:
    """A loaded model whose every initializer declaration was checked against its data
    (sizes, lengths, external files) before anything is read: OnnxFileError otherwise."""
    model = m if isinstance(m, OnnxModel) else load_model(m)
    check_tensors(model)
    return model


def _learngene(g: str | Path | Learngene) -> Learngene:
    return g if isinstance(g, Learngene) else Learngene.load(g)


@_all_cores
def extract(source: str | Path | OnnxModel, *, keep: float = DEFAULT_KEEP,
            convention: str = DEFAULT_CONVENTION, allow_nonfinite: bool = False) -> Learngene:
    """The learngene of a source ONNX model. NaN/Inf in the source weights raise
    OnnxFileError unless ``allow_nonfinite`` (those templates are then skipped and listed
    in ``Learngene.skipped``)."""
    return extract_learngene(_model(source), keep=keep, convention=convention, allow_nonfinite=allow_nonfinite)


def plan(source: str | Path | OnnxModel | Learngene, target: str | Path | OnnxModel, *,
         keep: float = DEFAULT_KEEP, convention: str = DEFAULT_CONVENTION, depth: str = DEFAULT_DEPTH,
         allow_nonfinite: bool = False) -> Plan:
    """What initializing ``target`` from ``source`` (a model or a learngene) would do."""
    gene = source if isinstance(source, Learngene) else extract(source, keep=keep, convention=convention,
                                                                 allow_nonfinite=allow_nonfinite)
    t = _model(target)
    gs, st = analyze(t)
    return make_plan(gene, gs, st, [n.name for n in t.proto.graph.node], depth)


def _input_files(m: OnnxModel) -> set[Path]:
    """The real paths of a model file and the external data files it reads."""
    return {Path(os.path.realpath(m.path))} | {Path(os.path.realpath(p)) for p in external_data_files(m)}


def _check_output(output: Path, protected: set[Path]) -> None:
    out = Path(os.path.realpath(output))
    for p in (out, Path(str(out) + ".data")):
        if p in protected:
            raise FrontError(f"{output}: output would overwrite the input file {p.name}; choose another path")



@_all_cores
def initialize(target: str | Path | OnnxModel, learngene: str | Path | Learngene, output: str | Path, *,
               report: str | Path | None = None, external_data: bool | None = None,
               validate: bool = False, device: str = "auto", strict: bool = False,
               keep_invalid: bool = False, depth: str = DEFAULT_DEPTH) -> InitResult:
    """Initialize ``target`` from a learngene and write the result to ``output``.

    ``depth`` says how a stage's blocks are resampled when the target has another number
    of them: 'spectral' (DCT along the layer axis, as the paper), 'nearest' or 'linear'
    (by relative depth; see ``spectral.resample_layers``).

    With ``validate`` the output is checked against the original target (see
    ``front_onnx.validate``); a failed hard check (or any warning with ``strict``) raises
    ValidationFailed and removes the output unless ``keep_invalid``."""
    t0 = time.perf_counter()
    gene = _learngene(learngene)
    t = _model(target)
    _check_output(Path(output), _input_files(t))
    label = str(learngene) if not isinstance(learngene, Learngene) else (gene.source or "the learngene")
    result = _initialize(t, gene, Path(output), t0, report, external_data, analyze(t), depth, label=label)
    if validate:
        _validate_output(result, t, None, device, strict, keep_invalid, compare=False)
    return result


def _initialize(t: OnnxModel, gene: Learngene, output: Path, t0: float, report: str | Path | None,
                external_data: bool | None, analysis, depth: str, release: bool = False,
                label: str = "") -> InitResult:
    gs, st = analysis
    p = make_plan(gene, gs, st, [n.name for n in t.proto.graph.node], depth)
    _check_overlap(p, st, t, label or gene.source or "the source")
    dtypes = {name: t.dtype(name) for name in {s.initializer for s in gs.slots}}
    values = slot_values(gene, gs, st, p, dtypes, depth, release=release)  # release: gene is transfer's own
    info = write_initialized(t, gs, values, output, external_data=external_data)
    for i, name in info["renamed"].items():
        p.slots[i].written_as = name
    result = InitResult(output, p, time.perf_counter() - t0, info["split"])
    if report is not None:
        write_report(result, Path(report))
    return result


def _check_overlap(p: Plan, st, t: OnnxModel, source: str) -> None:
    """Refuse (FrontError) a target nothing can be written into: no float weights, no slot
    written, or a target with repeated stages none of which is fed (only loose layers such
    as a head match: the structures share nothing). A partial overlap stays allowed."""
    if not any(s.role is not None for s in p.slots):
        raise FrontError(f"{t.path}: no float weights found in the target graph (nothing to initialize)")
    where = (f"; first divergence: {p.divergence[0]}" if p.divergence else
             f"; {p.left[0].initializer}: {p.left[0].reason}" if p.left else "")
    if not p.written:
        raise FrontError(f"{t.path}: no target weight can be written from {source} (structures of "
                         f"different families?){where}")
    stages = {k for k, tpl in st.templates.items() if tpl.stage}
    if stages and not any(s.template in stages for s in p.written):
        raise FrontError(f"{t.path}: the structures share nothing with {source}: none of the target's repeated "
                         f"stages has a source counterpart{where}")


@_all_cores
def transfer(source: str | Path | OnnxModel, target: str | Path | OnnxModel, output: str | Path, *,
             keep: float = DEFAULT_KEEP, convention: str = DEFAULT_CONVENTION, report: str | Path | None = None,
             external_data: bool | None = None, validate: bool = False, device: str = "auto",
             strict: bool = False, keep_invalid: bool = False, depth: str = DEFAULT_DEPTH,
             allow_nonfinite: bool = False) -> InitResult:
    """``extract`` + ``initialize`` in memory; byte-identical to running them one after the other.
    ``allow_nonfinite`` as in ``extract``.
    ``validate`` as in ``initialize``, with activation scales compared with the source and,
    at keep 1 into an identical architecture, outputs that must reproduce the source's."""
    t0 = time.perf_counter()
    t = _model(target)
    s = _model(source)
    _check_output(Path(output), _input_files(t) | _input_files(s))
    analysis = analyze(t)
    # only what this target reads: same bytes as the full learngene, less work and memory
    needed = target_shapes(*analysis)
    if depth != "spectral":  # layer-domain resampling inverts at the source's depth: keep every kept layer
        needed = {k: (_ALL,) + v[1:] for k, v in needed.items()}
    gene = extract_learngene(s, keep=keep, convention=convention, needed=needed, allow_nonfinite=allow_nonfinite)
    source_path = s.path
    del s  # an inline source's weights need not stay in memory while the target is written
    result = _initialize(t, gene, Path(output), t0, report, external_data, analysis, depth, release=True,
                         label=str(source_path))
    if validate:
        _validate_output(result, t, source_path, device, strict, keep_invalid, compare=None if keep == 1.0 else False)
    return result


def _validate_output(result: InitResult, target: OnnxModel, source: Path | None, device: str, strict: bool,
                     keep_invalid: bool, compare: bool | None) -> None:
    rep = _validate(result.output, reference=target, source=source, device=device, strict=strict,
                    compare_outputs=compare)
    result.validation = rep
    if rep.ok:
        return
    if not keep_invalid:
        for f in (result.output, Path(str(result.output) + ".data")):
            f.unlink(missing_ok=True)
    what = "; ".join(f"{c.name}: {c.detail or c.figure}" for c in rep.failed)
    kept = "kept as asked" if keep_invalid else "removed"
    raise ValidationFailed(f"{result.output}: validation failed ({what}); output {kept}", rep)


@_all_cores
def validate(model: str | Path | OnnxModel, **kwargs) -> ValidationReport:
    """Validate a model with onnxruntime; see ``front_onnx.validation.validate`` for options."""
    return _validate(model, **kwargs)


@_all_cores
def inspect(model: str | Path | OnnxModel) -> InspectReport:
    """What front-onnx finds in a model: stages, blocks and templates, each weight's role,
    layout, shape and dtype, and per block the share of its spectral energy inside the
    low-frequency corner at keep 0.25 / 0.5 / 0.75 (see ``front_onnx.inspection``)."""
    return build_report(_model(model))


def weights(model: str | Path | OnnxModel, output: str | Path | None = None, *, names: str = "torch"):
    """A model's float weights keyed by framework parameter names in framework layout
    (``names="torch"``), or by ONNX initializer names as stored (``"onnx"``), for loading
    an initialized model back into training; written atomically to ``output``
    (safetensors) when given. Returns ``front_onnx.weights.NamedWeights``; its
    ``unnamed`` lists the weights no name could be found for."""
    from front_onnx.weights import export_weights, named_weights

    m = _model(model)
    if output is None:
        return named_weights(m, names)
    _check_output(Path(output), _input_files(m))
    return export_weights(m, output, names)


def refine(source: str | Path | OnnxModel, data, labels=None, *, output: str | Path, steps: int = 200,
           lam: float = 1.0, keep: float = 0.5, lr: float = 1e-4, batch_size: int = 64, progress: bool = True,
           seed: int = 0, weighting: str = "mean"):
    """FRONT+ for an ONNX source: fine-tune it briefly with the spectral penalty and write the
    refined weights into a copy of the same graph at ``output``; returns the
    ``RefineReport``. Needs torch (the ``torch`` extra); see ``front_onnx.torch.refine``."""
    refine_onnx = _torch_part("refine_onnx")
    return refine_onnx(_model(source), data, labels, steps=steps, lam=lam, keep=keep, lr=lr, batch_size=batch_size,
                       output=output, progress=progress, seed=seed, weighting=weighting)


def refine_module(module, data, labels=None, **kwargs):
    """FRONT+ for a PyTorch module: fine-tune it in place, export it to ONNX and check
    onnxruntime against torch; returns a ``RefineResult`` (``.onnx_path``, ``.report``,
    path-like). Options as ``front_onnx.torch.refine.refine_module``."""
    return _torch_part("refine_module")(module, data, labels, **kwargs)


def _torch_part(name: str):
    try:
        from front_onnx.torch import refine as _refine
    except ImportError as e:
        raise FrontError(f"FRONT+ refinement needs torch (pip install 'front-onnx[torch]'): {e}") from None
    return getattr(_refine, name)


def write_report(result: InitResult, path: Path) -> None:
    """The full plan as JSON, written atomically."""
    data = {"output": str(result.output), "seconds": round(result.seconds, 4), "split": result.split,
            **result.plan.to_json()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
