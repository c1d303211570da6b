"""FRONT between two PyTorch modules: ``transfer_module(source, target, example_inputs)``.

Both modules are exported to ONNX into a temporary folder, the target graph is initialized
from the source graph exactly as ``front_onnx.transfer`` does it, the initialized weights are
named back to the target's parameter names (``front_onnx.weights``, here
``analysis.naming.named_weights``), and loaded into the target with
``load_state_dict(strict=True)``. Nothing is written outside the temporary folder.

Export settings (both modules the same; docs/hf-timm.md has the measurements):
``torch.onnx.export(module, args, kwargs=..., dynamo=True, optimize=False)`` in eval mode
under ``torch.no_grad()``, static shapes. ``optimize=False`` keeps the graph as torch.export
traced it: every parameter stays one initializer under its own name, with its full shape
(the optimizer folds ``wpe(arange(T))`` into a ``[T, d]`` slice, transposes Linear weights
into ``val_N``, deduplicates equal tensors across roles, and removes the all-zero biases of
a fresh target); BatchNorm stays a BatchNormalization node with its statistics instead of
being folded into the Conv.

What comes from where in the loaded state:

- every *parameter* comes from the initialized graph; one that no graph weight could be
  named for raises FrontError with its name (a fresh value is never kept silently). A
  parameter tied to another (T5's ``shared`` and ``encoder.embed_tokens``) is one tensor
  in the module and in the graph: a name found for any of its aliases serves them all;
- a non-parameter *buffer* (``position_ids``, rotary ``inv_freq``, ``num_batches_tracked``,
  ``relative_position_index``, a registered attention mask) comes from the graph when the
  graph names it (BatchNorm statistics: trained state) and otherwise from the target
  itself: those depend on the configuration, not on training. Their names are listed in
  ``ModuleTransfer.target_buffers``.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from front_onnx.analysis.naming import NamedWeights, named_weights
from front_onnx.errors import FrontError
from front_onnx.method.pipeline import (
    DEFAULT_CONVENTION,
    DEFAULT_DEPTH,
    DEFAULT_KEEP,
    DEFAULT_METHOD,
    DEFAULT_SCALE,
    initialize_into,
    pair_analysis,
)
from front_onnx.method.planning import Plan
from front_onnx.onnxio import OnnxModel, check_tensors, load_model
from front_onnx.validation.calibration import calibrator
from front_onnx.validation.equivalence import checked_expansion, transfer_learngene

# The one set of export options (see the module's docstring and docs/hf-timm.md).
EXPORT_OPTIONS = {"dynamo": True, "optimize": False}


@dataclass
class ModuleTransfer:
    """What ``transfer_module`` returns; unpacks as ``module, plan = transfer_module(...)``.

    ``module``: the target, initialized in place. ``plan``: the plan of the ONNX transfer
    (``plan.summary()``, ``plan.slots``: what was written and what was left, and why).
    ``weights``: the named weights loaded (``sources``: the graph evidence per name).
    ``target_buffers``: the target's own non-parameter buffers kept as they were (the graph
    did not name them). ``tied``: names filled from a tied alias."""

    module: Any
    plan: Plan
    weights: NamedWeights
    target_buffers: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.module, self.plan))

    def summary_line(self) -> str:
        sm = self.plan.summary()
        return (f"{sm['written_fraction']:.1%} of the target's weight elements written "
                f"({sm['written']} slots written, {sm['left']} left); {len(self.weights.tensors)} tensors loaded, "
                f"{len(self.target_buffers)} buffers kept from the target")


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise FrontError("example_inputs: give a tensor, a tuple of positional inputs, or a dict of keyword inputs; "
                     f"got {type(example_inputs).__name__}")


def export_module(module, example_inputs, path: Path) -> None:
    """Export ``module`` as ``transfer_module`` does (``EXPORT_OPTIONS``, eval mode, no grad);
    its training flags are restored afterwards. The exporter's progress output is silenced."""
    args, kwargs = _split_inputs(example_inputs)
    was_training = [m.training for m in module.modules()]
    module.eval()
    try:
        with (torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO())):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), kwargs=kwargs or None, **EXPORT_OPTIONS)
    except FrontError:
        raise
    except Exception as e:  # the exporter's own failure: say which module and how
        raise FrontError(f"torch.onnx.export of {type(module).__name__} failed ({EXPORT_OPTIONS}): "
                         f"{type(e).__name__}: {str(e)[:2000]}") from e
    finally:
        for m, t in zip(module.modules(), was_training):
            m.training = t


def _tied_groups(module) -> list[list[str]]:
    """State-dict names that are one tensor (tied parameters), each group in state-dict order."""
    by_id: dict[int, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return [g for g in by_id.values() if len(g) > 1]


def state_from_weights(module, nw: NamedWeights) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """The full state dict for ``module.load_state_dict(strict=True)``: parameters from ``nw``,
    non-parameter buffers from ``nw`` when named there, else from ``module`` itself.
    Returns (state, buffers kept from the module, {name: alias it was filled from}).
    FrontError names every parameter without a value, every weight name the module lacks (a
    non-persistent buffer, which no state_dict holds, is not counted), and every weight of
    another shape than the module's."""
    own = module.state_dict()
    params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    found = dict(nw.tensors)
    tied: dict[str, str] = {}
    for group in _tied_groups(module):
        have = [n for n in group if n in found]
        for n in group:
            if n not in found and have:
                found[n] = found[have[0]]
                tied[n] = have[0]
    # a non-persistent buffer (rotary inv_freq, Swin's attn_mask) is no state_dict entry: the module keeps its own
    transient = {n for n, _ in module.named_buffers(remove_duplicate=False)} - set(own)
    unknown = sorted(set(found) - set(own) - transient)
    # a parameter of no elements (YOLOS's mid-layer position embeddings of a 1-layer model) is in no
    # graph and needs no value: the module keeps its own
    missing = sorted(n for n in own if n in params and n not in found and own[n].numel() > 0)
    if unknown or missing:
        why = []
        if missing:
            why.append(f"{len(missing)} parameter(s) of the target got no value from the initialized graph: "
                       + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
                       + " (the forward does not read them with these example inputs: give inputs that do, "
                         "e.g. bool_masked_pos for a mask token)")
        if unknown:
            why.append(f"{len(unknown)} weight name(s) read from the graph are not in the target's state_dict: "
                       + ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""))
        if nw.unnamed:
            why.append("graph weights without a name: " + ", ".join(f"{i} ({r})" for i, r in nw.unnamed[:10]))
        raise FrontError("transfer_module: " + "; ".join(why))
    state: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    wrong = []
    for name, ref in own.items():
        if name in found:
            state[name] = torch.from_numpy(np.array(found[name], copy=True)).to(dtype=ref.dtype)  # own memory
            if tuple(state[name].shape) != tuple(ref.shape):
                wrong.append(f"{name} {tuple(state[name].shape)} for {tuple(ref.shape)}")
        else:
            state[name] = ref
            kept.append(name)
    if wrong:
        raise FrontError(f"transfer_module: {len(wrong)} weight(s) read from the graph have another shape than the "
                         "target's: " + ", ".join(wrong[:10]) + (" ..." if len(wrong) > 10 else ""))
    return state, kept, tied


def _example_feeds(model, example_inputs) -> dict[str, np.ndarray]:
    """The example inputs as onnxruntime feeds of the exported graph: a dict by name, else
    positionally over the graph's inputs (the ones that do not match are synthesized)."""
    inits = set(model.initializer_names())
    names = [i.name for i in model.proto.graph.input if i.name not in inits]
    if isinstance(example_inputs, dict):
        pairs = [(k, v) for k, v in example_inputs.items() if k in names]
    else:
        items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        pairs = list(zip(names, items))
    return {k: v.detach().cpu().numpy() for k, v in pairs if isinstance(v, torch.Tensor)}


def transfer_module(source, target, example_inputs, *, keep: float = DEFAULT_KEEP,
                    convention: str = DEFAULT_CONVENTION, depth: str = DEFAULT_DEPTH,
                    allow_nonfinite: bool = False, method: str = DEFAULT_METHOD,
                    scale: str = DEFAULT_SCALE, align: bool | str | None = None) -> ModuleTransfer:
    """Initialize the torch module ``target`` from the trained torch module ``source`` (by
    default: selection where the target is no larger, FRONT where it grows), in place, and
    return it with the plan (``ModuleTransfer``; unpacks as
    ``module, plan``).

    ``example_inputs``: what both modules' ``forward`` takes, for the export: a tensor, a
    tuple of positional inputs, or a dict of keyword inputs (HF models:
    ``{"input_ids": ..., "attention_mask": ...}``). Shapes do not matter beyond the export.
    ``keep``, ``convention``, ``depth``, ``allow_nonfinite``, ``method``, ``scale``, ``align``: as
    in ``front_onnx.transfer``.

    Raises FrontError when an export fails, when the structures do not overlap, or when a
    parameter of the target gets no value (strict: see the module's docstring)."""
    if not isinstance(source, torch.nn.Module) or not isinstance(target, torch.nn.Module):
        raise FrontError("transfer_module takes two torch.nn.Module objects (source, target); "
                         f"got {type(source).__name__}, {type(target).__name__}")
    with tempfile.TemporaryDirectory(prefix="front-onnx-") as tmp:
        folder = Path(tmp)
        export_module(source, example_inputs, folder / "source.onnx")
        export_module(target, example_inputs, folder / "target.onnx")
        s, t = load_model(folder / "source.onnx"), load_model(folder / "target.onnx")
        check_tensors(s)
        check_tensors(t)
        source_analysis, analysis = pair_analysis(s, t)
        gene, note = transfer_learngene(s, source_analysis, analysis, folder / "align", align=align, keep=keep,
                                        convention=convention, depth=depth, allow_nonfinite=allow_nonfinite,
                                        method=method, target=t)
        calibrate = (calibrator(s, source_analysis, analysis, _example_feeds(s, example_inputs))  # on the examples
                     if scale == "calibrated" else None)

        def write(how: str, s: OnnxModel = s, t: OnnxModel = t):
            g = gene if how == method else transfer_learngene(
                s, source_analysis, analysis, folder / f"align-{how}", align=align, keep=keep, convention=convention,
                depth=depth, allow_nonfinite=allow_nonfinite, method=how, target=t)[0]
            path = folder / f"output-{how}.onnx"
            p, _ = initialize_into(t, g, path, analysis, depth, release=True, label=type(source).__name__,
                                   method=how, scale=scale, calibrate=calibrate)
            return path, p, path

        # 'expand' is kept only where it computes the source's outputs, as in transfer
        output, plan = checked_expansion(s, write) if method == "expand" else write(method)[:2]
        del s, t, write
        if note is not None:
            plan.notes.append(note.describe())
        nw = named_weights(load_model(output), "torch")
        state, kept, tied = state_from_weights(target, nw)  # copies, before the folder goes
    target.load_state_dict(state, strict=True)
    return ModuleTransfer(target, plan, nw, kept, tied)
