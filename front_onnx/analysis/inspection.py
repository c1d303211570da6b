"""What front-onnx sees in a model: its stages, blocks and templates, every weight's role,
layout, shape and dtype, and how much of each weight's spectral energy lies inside the
low-frequency corner a learngene keeps (``front-onnx inspect``).

The energy share of one block's tensor at keep ``k`` is the share of the orthonormal DCT
energy of the standardized tensor (z-scored, as extraction does per block) that falls
inside the corner of ``kept_length(n, k)`` coefficients on each *feature* axis of its
canonical layout. Spatial axes (kernel taps) are kept whole by the extractor, and index and
parts axes are never transformed, so none of them is cut. It is ``1 -
spectral.out_of_band_energy`` along those axes, computed from one transform for all keeps.
White noise gives about ``k ** (number of feature axes)``; smooth weights give more. A
constant tensor (a fresh LayerNorm scale) has no energy outside the corner: share 1.0,
flagged ``constant``. A tensor with no feature axis (a class-head bias) cannot be cut: its
share is ``None``.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.fft as sfft

from front_onnx.analysis import analyze
from front_onnx.analysis.dimflow import ChannelSpace, dimension_flow
from front_onnx.analysis.slots import (
    ABSENT_SUFFIX,
    FEATURE,
    GraphSlots,
    slot_array,
    slot_dtype,
)
from front_onnx.analysis.structure import Structure
from front_onnx.errors import FrontError
from front_onnx.numeric import spectral
from front_onnx.onnxio import OnnxModel, model_files
from front_onnx.outputs import guard, staged

KEEPS: tuple[float, ...] = (0.25, 0.5, 0.75)


# --------------------------------------------------------------------------- energy

def corner_shares(x: np.ndarray, axes: Sequence[int], keeps: Sequence[float] = KEEPS,
                  overwrite: bool = False) -> tuple[list[float], bool]:
    """Share (0..1) of the standardized tensor's orthonormal DCT energy inside the kept
    corner along ``axes``, for each keep, from a single transform; and whether the tensor
    is constant (share 1.0 then). Equals ``1 - spectral.out_of_band_energy(x, axes, k)``.
    ``overwrite`` lets it standardize a float64 buffer in place (any memory order).
    Non-finite values raise ValueError."""
    z = np.asarray(x)
    if not (overwrite and z.dtype == np.float64 and z.flags.writeable):
        z = np.array(z, dtype=np.float64, order="K")
    if z.size == 0:
        return [1.0] * len(keeps), True
    flat = z.ravel(order="K")          # a view when z is contiguous in some axis order
    if not np.shares_memory(flat, z):
        z = np.array(z, dtype=np.float64, order="C")
        flat = z.reshape(-1)
    # per-tensor z-score in place, with spectral.standardize's rule for constant tensors
    _, _, stds = spectral.standardize_stack(flat[None], inplace=True)
    if stds[0] == 0.0:
        return [1.0] * len(keeps), True
    ax = tuple(int(a) % z.ndim for a in axes)
    c = sfft.dctn(z, type=2, axes=ax, norm="ortho", overwrite_x=True) if ax else z
    np.square(c, out=c)
    total = float(c.sum())
    if total <= 0.0:
        return [1.0] * len(keeps), True
    out = []
    for keep in keeps:
        idx = [slice(None)] * c.ndim
        for a in ax:
            idx[a] = slice(0, spectral.kept_length(c.shape[a], keep))
        inside = float(c[tuple(idx)].sum())
        out.append(min(1.0, max(0.0, inside / total)))
    return out, False


# --------------------------------------------------------------------------- report

@dataclass
class SegmentInfo:
    """One stage or loose layer, in dataflow order (as ``Structure.segments``)."""

    label: str                 # 'stage0', 'layer3': what the table and the plot call it
    kind: str                  # 'stage' or 'layer'
    sig: str
    count: int                 # blocks (1 for a layer)
    roles: list[str]
    stage: str = ""            # the stage id (template keys start with it), '' for a layer
    blocks: list[str] = field(default_factory=list)   # block labels of a stage
    templates: list[str] = field(default_factory=list)


@dataclass
class TemplateInfo:
    """One template: a role repeated across the blocks of a stage (or one loose layer)."""

    key: str
    short: str                 # 'stage0/u1', 'layer2': the key for people
    segment: str               # label of its segment
    stage: str
    role: str
    module: str                # name hint of block 0, block index removed ('attn.qkv')
    layout: str
    kinds: list[str]
    shape: list[int]           # canonical
    stored_shape: list[int]
    dtype: str
    depth: int
    initializers: list[str]    # per block
    axes: list[int]            # canonical axes the energy is measured along (feature axes)
    energy: dict[str, list[float | None]]   # keep -> per-block share inside the corner
    constant: list[bool]       # per block: a constant tensor (share 1.0 by definition)
    mean: dict[str, float | None]           # keep -> mean over non-constant blocks
    note: str = ""             # why energies are missing
    spaces: list[str | None] = field(default_factory=list)  # channel space per canonical axis (block 0)

    @property
    def all_constant(self) -> bool:
        return bool(self.constant) and all(self.constant)


@dataclass
class SlotInfo:
    """One use of a float initializer."""

    initializer: str
    node: str
    input: int
    op: str
    role: str | None
    layout: str
    shape: list[int]
    dtype: str
    template: str | None
    reason: str = ""           # why it is not a weight (or has no template)


@dataclass
class InspectReport:
    model: str
    keeps: list[float]
    segments: list[SegmentInfo]
    stages: dict[str, list[str]]
    templates: list[TemplateInfo]
    slots: list[SlotInfo]
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # the files read (a plot may never overwrite them)
    channel_spaces: list[ChannelSpace] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "keeps": self.keeps, "seconds": round(self.seconds, 4),
                "summary": self.summary(),
                "segments": [asdict(s) for s in self.segments], "stages": self.stages,
                "channel_spaces": [asdict(c) for c in self.channel_spaces],
                "templates": [asdict(t) for t in self.templates], "slots": [asdict(s) for s in self.slots]}

    def summary(self) -> dict[str, Any]:
        weights = [s for s in self.slots if s.template is not None]
        return {"slots": len(self.slots), "weight_slots": len(weights),
                "other_slots": len(self.slots) - len(weights), "templates": len(self.templates),
                "stages": len(self.stages),
                "blocks": sum(len(v) for v in self.stages.values()),
                "weight_elements": sum(int(np.prod(s.shape, dtype=np.int64)) for s in weights)}

    def table(self) -> str:
        return format_report(self)

    def plot(self, path: str | Path) -> Path:
        return plot(self, path)


def _module_hint(module: str | None) -> str:
    """'blocks.3.attn.qkv' -> 'attn.qkv', 'layers.1.0.downsample.0' -> 'downsample.0': the part
    after the block index."""
    if not module:
        return ""
    parts = [p for p in re.split(r"[./]", module) if p]
    # the block index: the last numeric component that a named one follows
    last = max((i for i, p in enumerate(parts[:-1]) if p.isdigit() and not parts[i + 1].isdigit()), default=-1)
    return ".".join(parts[last + 1:]) or module


def _labels(gs: GraphSlots, st: Structure) -> tuple[list[SegmentInfo], dict[str, tuple[str, str]]]:
    """Segments with labels, and template key -> (short key, segment label).

    Stages are numbered in dataflow order as ``Structure.stages`` labels their blocks
    (``stage0``); loose layers are numbered in dataflow order (``layer0``), the order of
    ``Structure.segments``, their units found by anchor node. If the two views disagree, the full keys are used."""
    stage_ids = list(st.stages)
    loose_anchor: dict[str, int] = {}
    for key, tpl in st.templates.items():
        if not tpl.stage:
            loose_anchor[key] = gs.slots[tpl.blocks[0][0]].anchor
    anchors = list(dict.fromkeys(loose_anchor.values()))  # in dataflow order, as the segments
    n_stage_seg = sum(1 for s in st.segments if s.kind == "stage")
    n_layer_seg = len(st.segments) - n_stage_seg
    consistent = n_stage_seg == len(stage_ids) and n_layer_seg == len(anchors)
    names: dict[str, tuple[str, str]] = {}
    for key, tpl in st.templates.items():
        m = re.search(r"/u(\d+):[^#]*(#\d+)?$", key)
        if tpl.stage and tpl.stage in stage_ids:
            label = f"stage{stage_ids.index(tpl.stage)}"
            names[key] = (f"{label}/u{m.group(1)}{m.group(2) or ''}" if m else key, label)
        elif not tpl.stage and consistent:
            label = f"layer{anchors.index(loose_anchor[key])}"
            m2 = re.search(r":[^#]*(#\d+)$", key)
            names[key] = (label + (m2.group(1) if m2 else ""), label)
        else:
            names[key] = (key, "")
    segments: list[SegmentInfo] = []
    n_s = n_l = 0
    for seg in st.segments:
        if seg.kind == "stage":
            sid = stage_ids[n_s] if n_s < len(stage_ids) else ""
            label = f"stage{n_s}"
            n_s += 1
            segments.append(SegmentInfo(label, seg.kind, seg.sig, seg.count, list(seg.roles), sid,
                                        list(st.stages.get(sid, [])),
                                        [k for k, t in st.templates.items() if sid and t.stage == sid]))
        else:
            label = f"layer{n_l}"
            n_l += 1
            keys = [k for k, a in loose_anchor.items() if consistent and a == anchors[n_l - 1]]
            segments.append(SegmentInfo(label, seg.kind, seg.sig, seg.count, list(seg.roles), "", [], keys))
    return segments, names


def _canonical_f64(model: OnnxModel, slot) -> np.ndarray:
    """The slot's tensor in canonical layout, as a fresh float64 buffer in the stored memory
    order (a transposed view is copied straight, not gathered)."""
    return np.array(slot.layout.to_canonical(np.asarray(slot_array(model.array, slot))), dtype=np.float64, order="K")


def build_report(model: OnnxModel, keeps: Sequence[float] = KEEPS,
                 analysis: tuple[GraphSlots, Structure] | None = None) -> InspectReport:
    """The inspection report of a model (see the module docstring for the energy share)."""
    t0 = time.perf_counter()
    keeps = [float(k) for k in keeps]
    for k in keeps:
        spectral.kept_length(1, k)  # validates
    gs, st = analysis or analyze(model)
    flow = dimension_flow(model.proto, gs)
    segments, names = _labels(gs, st)
    kname = [f"{k:g}" for k in keeps]
    order = {seg.label: i for i, seg in enumerate(segments)}
    node_names = [n.name for n in model.proto.graph.node]
    cache: dict[tuple, tuple[list[float], bool]] = {}
    templates: list[TemplateInfo] = []
    slot_template: dict[int, str] = {}
    for key, tpl in st.templates.items():
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        kinds = first.layout.kinds
        axes = [a for a, kind in enumerate(kinds) if kind == FEATURE]
        energy: dict[str, list[float | None]] = {k: [] for k in kname}
        constant: list[bool] = []
        note = "" if axes else "no feature axis: nothing a keep ratio would cut"
        inits = []
        for block in tpl.blocks:
            for i in block:
                slot_template[i] = key
            s = gs.slots[block[0]]
            inits.append(s.initializer)
            if not axes:
                for k in kname:
                    energy[k].append(None)
                constant.append(False)
                continue
            ck = (s.initializer, s.layout.perm, s.layout.parts, tuple(axes), tuple(s.shape))
            if ck not in cache:
                try:
                    cache[ck] = corner_shares(_canonical_f64(model, s), axes, keeps, overwrite=True)
                except ValueError:
                    cache[ck] = ([math.nan] * len(keeps), False)
            shares, const = cache[ck]
            if any(math.isnan(v) for v in shares):
                note = "non-finite values"
            for k, v in zip(kname, shares):
                energy[k].append(None if math.isnan(v) else v)
            constant.append(const)
        mean: dict[str, float | None] = {}
        for k in kname:
            vals = [v for v, c in zip(energy[k], constant) if v is not None and not c]
            if vals:
                mean[k] = float(np.mean(vals))
            elif any(v is not None for v in energy[k]):
                mean[k] = 1.0  # every block constant
            else:
                mean[k] = None
        short, seg_label = names.get(key, (key, ""))
        templates.append(TemplateInfo(
            key=key, short=short, segment=seg_label, stage=tpl.stage, role=tpl.role,
            module=_module_hint(first.module), layout=first.layout.name, kinds=list(kinds),
            shape=list(first.layout.canonical_shape(first.shape)), stored_shape=list(first.shape),
            dtype=str(slot_dtype(first)), depth=tpl.depth, initializers=inits, axes=axes,
            energy=energy, constant=constant, mean=mean, note=note,
            spaces=list(flow.slot_axes.get(tpl.blocks[0][0], []))))
    # graph order: by segment, then as the structure lists them (unit order, then input order)
    rank = {key: n for n, key in enumerate(st.templates)}
    templates.sort(key=lambda t: (order.get(t.segment, len(order)), rank[t.key]))
    slots = []
    for i, s in enumerate(gs.slots):
        tkey = slot_template.get(i)
        reason = "" if tkey else (st.unplaced.get(i) or s.reason or "not placed in a template")
        slots.append(SlotInfo(s.initializer, node_names[s.node] or f"#{s.node}", s.input, s.op, s.role,
                              s.layout.name if s.layout else "", list(s.shape), str(slot_dtype(s)),
                              tkey, reason))
    spaces = [ChannelSpace(c.id, c.size, [a for a in c.axes if not a[0].endswith(ABSENT_SUFFIX)], c.factors)
              for c in flow.spaces]
    return InspectReport(str(model.path), keeps, segments, dict(st.stages), templates, slots,
                         time.perf_counter() - t0, [str(p) for p in model_files(model)], spaces)


# --------------------------------------------------------------------------- table

def _cell(t: TemplateInfo, k: str) -> str:
    v = t.mean.get(k)
    if t.all_constant:
        return "const"
    if v is None:
        return "n/a" if not t.axes else "-"
    return f"{v:.3f}"


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def format_report(rep: InspectReport) -> str:
    """Segments summary, then one row per template with its mean energy shares."""
    sm = rep.summary()
    lines = [f"{rep.model}: {sm['templates']} templates in {sm['stages']} stage(s) of {sm['blocks']} blocks "
             f"and {sum(1 for s in rep.segments if s.kind == 'layer')} loose layer(s); "
             f"{sm['weight_slots']} weight slots, {sm['weight_elements']:,} weight elements"]
    lines.append("segments (dataflow order):")
    for seg in rep.segments:
        what = ", ".join(seg.roles[:6]) + (", ..." if len(seg.roles) > 6 else "")
        if seg.kind == "stage":
            lines.append(f"  {seg.label:<8} {seg.count} blocks x [{what}] ({len(seg.roles)} weights per block)")
        else:
            lines.append(f"  {seg.label:<8} layer [{what}]")
    kname = [f"{k:g}" for k in rep.keeps]
    head = ("template", "role", "module", "layout", "shape", "spaces", "dtype", "depth") + \
        tuple(f"@{k}" for k in kname)
    rows = [head]
    for t in rep.templates:
        rows.append((t.short, t.role, t.module or "-", t.layout, _dims(t.shape),
                     " ".join(x or "-" for x in t.spaces) or "-", t.dtype, str(t.depth))
                    + tuple(_cell(t, k) for k in kname))
    caps = (24, 16, 22, 22, 14, 14, 9, 5) + (6,) * len(kname)
    widths = [min(max(len(r[c]) for r in rows), caps[c]) for c in range(len(head))]
    lines.append("")
    for n, r in enumerate(rows):
        cells = []
        for c, v in enumerate(r):
            v = v if len(v) <= widths[c] else v[:widths[c] - 1] + "~"
            cells.append(v.rjust(widths[c]) if c >= 7 else v.ljust(widths[c]))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if rep.channel_spaces:
        lines.append("")
        lines.append("channel spaces (weight axes that index the same channels, from the graph's dimension flow):")
        for c in rep.channel_spaces:
            split = "".join(f" = {' x '.join(map(str, f))}" for f in c.factors)
            lines.append(f"  {c.id:<5} {c.size:>6}{split}: {len(c.axes)} weight axes")
    other = [s for s in rep.slots if s.template is None]
    if other:
        why: dict[str, int] = {}
        for s in other:
            why[s.reason] = why.get(s.reason, 0) + 1
        lines.append("")
        lines.append(f"{len(other)} slot(s) not weights: " + "; ".join(f"{r} ({n})" for r, n in why.items()))
    lines.append("")
    lines.append("@k: share of a block's standardized DCT energy inside the low-frequency corner that keep k "
                 "keeps on each feature axis (mean over blocks); white noise gives about k^(feature axes). "
                 "const: constant tensor; n/a: no feature axis. shape: canonical (out, in, ...); spaces: the "
                 "channel space of each canonical axis (-: its own, or a parts or kernel axis). --json gives "
                 "per-block values and each space's members.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot

def _row_label(t: TemplateInfo) -> str:
    unit = t.short.split("/", 1)[1] if "/" in t.short else t.short
    name = f"{t.module} " if t.module else ""
    return f"{unit}  {name}{t.role}"


def plot(rep: InspectReport, path: str | Path, dpi: int = 120) -> Path:
    """A PNG of the energy share inside the kept corner, per template (rows, in graph order)
    across depth (columns: blocks), one heatmap per keep ratio. Written atomically."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        raise FrontError("--plot needs matplotlib: pip install 'front-onnx[plot]'") from None

    path = Path(path)
    guard([path], [rep.model, *rep.files])
    kname = [f"{k:g}" for k in rep.keeps]
    tpls = [t for t in rep.templates if t.axes]   # nothing to show for tensors with no feature axis
    if not tpls:
        tpls = rep.templates
    ncols = max((t.depth for t in tpls), default=1)
    nrows = max(len(tpls), 1)
    data = {k: np.full((nrows, ncols), np.nan) for k in kname}
    const = np.zeros((nrows, ncols), dtype=bool)
    for r, t in enumerate(tpls):
        for b in range(t.depth):
            const[r, b] = t.constant[b] if b < len(t.constant) else False
            for k in kname:
                v = t.energy[k][b]
                if v is not None and not const[r, b]:
                    data[k][r, b] = v
    annotate = ncols * len(kname) <= 24 and nrows <= 40
    panel_w = 0.9 + min(0.42 * ncols, 4.2)
    label_w = 0.09 * max((len(_row_label(t)) for t in tpls), default=10) + 0.3
    fig_w = label_w + panel_w * len(kname) + 1.2
    fig_h = 1.5 + 0.26 * nrows
    fig, axes = plt.subplots(1, len(kname), figsize=(fig_w, fig_h), sharey=True, squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("viridis").with_extremes(bad="#ffffff")
    gray = ListedColormap(["#c8c8c8"])
    boundaries = [r - 0.5 for r in range(1, nrows)
                  if tpls[r].segment != tpls[r - 1].segment]
    im = None
    for ax, k in zip(axes, kname):
        im = ax.imshow(np.ma.masked_invalid(data[k]), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest")
        if const.any():
            ax.imshow(np.ma.masked_where(~const, np.ones_like(data[k])), cmap=gray, vmin=0, vmax=1,
                      aspect="auto", interpolation="nearest")
        for y in boundaries:
            ax.axhline(y, color="white", lw=2.5)
        ax.set_title(f"keep {k}", fontsize=9)
        ax.set_xticks(range(ncols))
        ax.set_xticklabels([str(b) for b in range(ncols)], fontsize=7)
        ax.set_xlabel("block (depth)", fontsize=8)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if annotate:
            for r in range(nrows):
                for b in range(ncols):
                    if const[r, b]:
                        ax.text(b, r, "c", ha="center", va="center", fontsize=6, color="#555555")
                    elif not np.isnan(data[k][r, b]):
                        v = data[k][r, b]
                        ax.text(b, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="black" if v > 0.6 else "white")
    axes[0].set_yticks(range(len(tpls)))
    axes[0].set_yticklabels([_row_label(t) for t in tpls], fontsize=7)
    # segment names on the right of the last panel
    starts = [0] + [int(y + 0.5) for y in boundaries] if tpls else []
    ends = starts[1:] + [nrows]
    last = axes[-1]
    for s, e in zip(starts, ends):
        seg = tpls[s].segment or "?"
        last.text(ncols - 0.5 + 0.15, (s + e - 1) / 2, seg, ha="left", va="center", fontsize=7,
                  color="#444444", clip_on=False)
    name = Path(rep.model).name
    fig.suptitle(f"{name}: share of spectral energy inside the kept low-frequency corner\n"
                 f"rows: templates (unit, module, role) in graph order; gray: constant tensor; "
                 f"white noise gives about keep per feature axis (keep\u00b2 for a matrix)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    if im is not None:
        cax = fig.add_axes((0.945, 0.15, 0.012, 0.7))
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("energy share inside corner", fontsize=7)
    try:
        with staged(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
