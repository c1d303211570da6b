"""Calibrated amplitude (``scale='calibrated'``): each transferred projection or convolution
weight is multiplied by the factor that gives its layer's response (the output's standard
deviation about each channel's mean) that of the source layer it was taken from (the same role, at the nearest relative depth), both measured
with onnxruntime on the same inputs (the user's, or synthesized ones).

A formula (``method.amplitude``) guesses what a resized fan-in does to a layer's output; this
measures it, on the real graph with its norms and residual paths. Rescaling one layer changes
what the layers after it read, so the factors are a fixed point found in a few passes (every
layer corrected at once per pass, as layer-sequential unit-variance initialization, Mishkin
and Matas 2016, does one layer at a time, with the source's scales as the targets instead of 1).

It lives with validation because it runs models; ``method.pipeline`` calls it between
computing a target's values and writing them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

import numpy as np
import onnx

from front_onnx.analysis.slots import GraphSlots
from front_onnx.analysis.structure import Structure
from front_onnx.onnxio import OnnxModel
from front_onnx.validation.checks import sample_batch, synthesize_inputs
from front_onnx.validation.runtime import open_session, run_or_refuse, with_outputs

PASSES = 6
TOLERANCE = 2e-3   # |log ratio| below which a layer counts as calibrated (0.2%)
LIMIT = 64.0       # a factor is kept within [1/LIMIT, LIMIT]: a dead layer is not blown up
BATCH = 8
_UNITS = {"linear.weight", "conv.weight"}


@dataclass
class Calibration:
    """The factor applied to each calibrated weight, and how close the scales came."""

    factors: dict[int, float] = field(default_factory=dict)   # target slot -> factor
    names: dict[int, str] = field(default_factory=dict)       # target slot -> initializer
    passes: int = 0
    residual: float = 0.0          # largest |log(source std / target std)| after the last pass
    skipped: dict[str, str] = field(default_factory=dict)     # initializer -> why it keeps its amplitude
    inputs: str = "synthesized"

    def describe(self) -> str:
        if self.names and not self.factors:
            return (f"calibrated: {len(self.names)} layer outputs already at the source's scales on {self.inputs} "
                    "inputs (nothing rescaled)")
        if not self.factors:
            return "calibrated: no layer could be calibrated" + (
                f" ({len(self.skipped)} left: {next(iter(self.skipped.values()))})" if self.skipped else "")
        f = np.array(list(self.factors.values()))
        return (f"calibrated: {len(f)} layer outputs matched to the source's scales on {self.inputs} inputs "
                f"(factors {f.min():.3g} to {f.max():.3g}, median {np.median(f):.3g}; {self.passes} passes, "
                f"worst remaining ratio {np.exp(self.residual):.3f})"
                + (f"; {len(self.skipped)} weights keep their amplitude ({next(iter(self.skipped.values()))}"
                   + (", ..." if len(set(self.skipped.values())) > 1 else "") + ")" if self.skipped else ""))


def layer_pairs(sources: Mapping[str, str], target: tuple[GraphSlots, Structure],
                source: tuple[GraphSlots, Structure], selected: Collection[str] = ()) -> dict[int, int]:
    """Target slot -> the source slot of the same role at the nearest relative depth (in a
    ``selected`` template, the source block it was selected from: of the same index), for the
    projection and convolution weights of templates the plan fed from the source."""
    tst, sst = target[1], source[1]
    out: dict[int, int] = {}
    for tkey, skey in sources.items():
        ttpl, stpl = tst.templates.get(tkey), sst.templates.get(skey)
        if ttpl is None or stpl is None or ttpl.role not in _UNITS or not stpl.blocks:
            continue
        n, m = ttpl.depth, stpl.depth
        for b, slots in enumerate(ttpl.blocks):
            sb = b if tkey in selected else 0 if n == 1 else int(np.rint(b * (m - 1) / (n - 1)))
            src = stpl.blocks[min(sb, m - 1)]
            for k, i in enumerate(slots):
                if src:
                    out[i] = src[min(k, len(src) - 1)]
    return out


def _value(gs: GraphSlots, proto: onnx.ModelProto, i: int) -> str | None:
    """The output of the node that gives slot ``i`` its role: the layer's output."""
    node = proto.graph.node[gs.slots[i].consumer]
    return node.output[0] if node.output else None


def _response(x: np.ndarray, channel: int) -> float:
    """The std of a layer's output about each channel's mean: how much the output varies with
    the input, which a factor on the weight scales exactly (a bias, inside Gemm or Conv, only
    moves the channel means)."""
    a = np.moveaxis(np.asarray(x, np.float64), channel, -1)
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)
    return float(np.sqrt(np.mean((a - a.mean(axis=0)) ** 2)))


def _channel_axis(proto: onnx.ModelProto, gs: GraphSlots, i: int) -> int:
    return 1 if proto.graph.node[gs.slots[i].consumer].op_type in ("Conv", "ConvTranspose") else -1


def calibrate(written: OnnxModel, target: tuple[GraphSlots, Structure], plan, source: OnnxModel,
              source_analysis: tuple[GraphSlots, Structure], *,
              inputs: Mapping[str, np.ndarray] | None = None, passes: int = PASSES) -> Calibration:
    """The factors that match each written projection/convolution weight's output scale in
    ``written`` (the target as first written) to its source layer's, on ``inputs`` (per model
    input name; missing ones synthesized, batch ``BATCH``)."""
    tgs, _ = target
    sgs, _ = source_analysis
    cal = Calibration(inputs="the given" if inputs else "synthesized")
    written_slots = [i for i, sp in enumerate(plan.slots) if sp.status == "written"]
    uses: dict[str, int] = {}
    for i in written_slots:
        name = plan.slots[i].written_as or plan.slots[i].initializer
        uses[name] = uses.get(name, 0) + 1
    pairs = layer_pairs(plan.sources, target, source_analysis, set(plan.selected))
    chosen: dict[int, int] = {}
    tensors = {t.name: t for t in written.proto.graph.initializer}
    for i, j in pairs.items():
        s = tgs.slots[i]
        name = plan.slots[i].written_as or plan.slots[i].initializer
        why = ""
        if plan.slots[i].status != "written":
            continue
        if s.view is not None or s.quant is not None or s.absent:
            why = "not a plain stored weight (a view or a quantized weight)"
        elif uses.get(name, 0) > 1 or name not in tensors:
            why = "shared with another use (a tied weight)"
        elif _value(tgs, written.proto, i) is None or _value(sgs, source.proto, j) is None:
            why = "its layer has no output to measure"
        if why:
            cal.skipped[name] = why
            continue
        chosen[i] = j
        cal.names[i] = name
    if not chosen:
        return cal

    dims = {"batch": sample_batch(source.proto, BATCH)}
    src_feeds = synthesize_inputs(source.proto, dims, given=inputs)
    tgt_feeds = synthesize_inputs(written.proto, dims, given=inputs)
    src_values = [_value(sgs, source.proto, j) for j in chosen.values()]
    sp = with_outputs(source.proto, src_values)
    sess = open_session(sp, "cpu", model_dir=source.path.parent).session
    names = [o.name for o in sp.graph.output]
    src_inputs = {x.name for x in sp.graph.input}
    res = dict(zip(names, run_or_refuse(sess, {k: v for k, v in src_feeds.items() if k in src_inputs},
                                        str(source.path), f"{cal.inputs} inputs --scale calibrated measures")))
    want = {i: _response(res[v], _channel_axis(source.proto, sgs, j)) for (i, j), v in zip(chosen.items(), src_values)}
    del sess, res

    fed = {cal.names[i]: tensors[cal.names[i]] for i in chosen}
    base = {i: np.asarray(written.array(cal.names[i])) for i in chosen}
    tvalues = {i: _value(tgs, written.proto, i) for i in chosen}
    tp = with_outputs(written.proto, list(tvalues.values()), fed)
    sess = open_session(tp, "cpu", model_dir=written.path.parent).session
    names = [o.name for o in tp.graph.output]
    graph_inputs = {x.name for x in tp.graph.input}
    factor = {i: 1.0 for i in chosen}
    data = {n: v for n, v in tgt_feeds.items() if n in graph_inputs}
    for k in range(passes + 1):
        feeds = dict(data)
        for i in chosen:
            feeds[cal.names[i]] = base[i] if factor[i] == 1.0 else (base[i] * factor[i]).astype(base[i].dtype)
        res = dict(zip(names, run_or_refuse(sess, feeds, "the target as first written",
                                            f"{cal.inputs} inputs --scale calibrated measures")))
        worst = 0.0
        for i in chosen:
            have = _response(res[tvalues[i]], _channel_axis(written.proto, tgs, i))
            if not (np.isfinite(have) and have > 0 and want[i] > 0):
                continue
            r = float(np.log(want[i] / have))
            worst = max(worst, abs(r))
            if abs(r) > TOLERANCE and k < passes:
                factor[i] = float(np.clip(factor[i] * np.exp(r), 1 / LIMIT, LIMIT))
        cal.passes, cal.residual = k, worst
        if worst <= TOLERANCE:
            break
    cal.factors = {i: f for i, f in factor.items() if f != 1.0}
    return cal


def calibrator(source: OnnxModel, source_analysis: tuple[GraphSlots, Structure],
               target: tuple[GraphSlots, Structure], inputs: Mapping[str, np.ndarray] | None = None):
    """``method.pipeline``'s callback for ``scale='calibrated'``: (the target as first written,
    its plan) -> ``calibrate`` against ``source`` on ``inputs``."""
    def run(written: OnnxModel, plan) -> Calibration:
        return calibrate(written, target, plan, source, source_analysis, inputs=inputs)
    return run
