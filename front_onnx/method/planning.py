"""The plan: for each target weight slot, which learngene template feeds it and the
per-axis operations, or why it is left alone. Built from learngene metadata only."""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from front_onnx.analysis.slots import BIAS_ROLES, CUT, INDEX, PARTS, GraphSlots
from front_onnx.analysis.structure import Segment, Structure, Template
from front_onnx.errors import FrontError
from front_onnx.method.expansion import expand_ops, expands, fresh_count
from front_onnx.method.learngene import GeneTemplate, Learngene
from front_onnx.method.selection import METHODS, cannot_select, head_groups, keeps_groups, regroups, selects
from front_onnx.numeric import spectral
from front_onnx.numeric.spectral import DEPTH_MODES


@dataclass
class SlotPlan:
    """What happens to one target slot."""

    initializer: str
    node: str
    input: int
    role: str | None
    layout: str
    shape: list[int]
    elements: int
    template: str | None
    status: str                      # 'written', 'left', or 'absent' (a bias neither side has: nothing to do)
    operations: list[str] = field(default_factory=list)
    reason: str = ""
    evidence: list[str] = field(default_factory=list)
    written_as: str = ""             # the output initializer, when a shared one was split
    absent: bool = False             # a bias the target's layer does not have (zero)
    counted: bool = True             # in the parameter totals (not an absent bias zero on both sides)
    parameter: bool = False          # no role, but a parameter (behind an op the transfer does not support)
    own: int = 0                     # elements that keep the target's own values (new units of an expansion)


@dataclass
class Plan:
    slots: list[SlotPlan]
    templates: dict[str, str]        # target template key -> 'ok' or why it is left
    keep: float
    convention: str
    divergence: list[str] = field(default_factory=list)  # where source and target structures differ
    depth: str = "spectral"          # how the layer axis is resampled (spectral.DEPTH_MODES)
    verdict: str = ""                # why nothing useful can be written (transfer refuses), '' when it can
    sources: dict[str, str] = field(default_factory=dict)  # target template key -> the source template feeding it
    requantized: dict[str, float] = field(default_factory=dict)  # quantized weight -> relative error of requantizing it
    notes: list[str] = field(default_factory=list)  # what was done besides the plan (an aligned source)
    selected: list[str] = field(default_factory=list)  # target templates filled by selection (block b: source block b)
    expanded: list[str] = field(default_factory=list)  # target templates filled by expansion (``expansion``)

    def left_by_reason(self) -> list[tuple[str, int, int]]:
        """(reason, slots, elements) of the slots left, most elements first; a constant's
        evidence is folded into one reason ('constant, not a parameter')."""
        groups: dict[str, list[int]] = {}
        for s in self.left:
            why = s.reason.split(":", 1)[0] if s.reason.startswith("constant, not a parameter") else s.reason
            groups.setdefault(why or "no reason given", []).append(s.elements)
        return sorted(((r, len(v), sum(v)) for r, v in groups.items()), key=lambda x: (-x[2], x[0]))

    @property
    def written(self) -> list[SlotPlan]:
        return [s for s in self.slots if s.status == "written"]

    @property
    def left(self) -> list[SlotPlan]:
        return [s for s in self.slots if s.status == "left"]

    @property
    def listed(self) -> list[SlotPlan]:
        """The slots a report lists: all but absent biases with nothing to write (status 'absent')."""
        return [s for s in self.slots if s.status != "absent"]

    def summary(self) -> dict[str, Any]:
        weights = [s for s in self.slots if (s.role is not None or s.parameter) and s.counted]
        total = sum(s.elements for s in weights)
        done = sum(s.elements - s.own for s in weights if s.status == "written")
        own = sum(s.own for s in weights if s.status == "written")
        return {
            "slots": len(self.listed), "weight_slots": len(weights), "written": len(self.written),
            "left": len(self.left), "weight_elements": total, "written_elements": done,
            "written_fraction": (done / total) if total else 0.0,
            **({"own_elements": own} if own else {}),
        }

    def to_json(self) -> dict[str, Any]:
        return {"keep": self.keep, "convention": self.convention, "depth": self.depth, "summary": self.summary(),
                "verdict": self.verdict, "divergence": self.divergence, "sources": self.sources,
                "selected": self.selected, "requantized": self.requantized, "notes": self.notes,
                "left_by_reason": [{"reason": r, "slots": n, "elements": e} for r, n, e in self.left_by_reason()],
                "templates": self.templates,
                "slots": [asdict(s) for s in self.listed]}


def _axis_ops(gene: GeneTemplate, kinds: tuple[str, ...], shape: tuple[int, ...], depth: int,
              depth_mode: str = "spectral") -> list[str]:
    kept = gene.kept
    names = ["depth"] + [f"{k}{i}" for i, k in enumerate(kinds)]
    src = (gene.depth,) + gene.shape
    tgt = (depth,) + tuple(shape)
    ops = []
    for i, (name, s, t) in enumerate(zip(names, src, tgt)):
        kind = "depth" if i == 0 else kinds[i - 1]
        if kind in (INDEX, PARTS, CUT):
            ops.append(f"{name}: copy {t}")
            continue
        k = kept[i]
        if i == 0 and s != t and depth_mode != "spectral":
            ops.append(f"{name}: {depth_mode} {s}->{t}" + (f" (kept {k})" if k != s else ""))
            continue
        verb = "copy" if s == t and k == s else ("truncate" if t < k else ("pad" if t > k else "keep"))
        label = f"{s}->{t}" if s != t else f"{t}"
        extra = f" (kept {k})" if k != s else ""
        ops.append(f"{name}: {verb} {label}{extra}")
    return ops


def _select_ops(gene: GeneTemplate, shape: tuple[int, ...], depth: int, leading: str = "",
                output_norm: bool = False, heads: tuple[int, ...] = (), groups: dict[int, int] | None = None,
                branches: dict[int, tuple[int, ...]] | None = None) -> list[str]:
    """The operations of Weight Selection on one template, for the plan. ``leading``: the
    source's unit order (``Learngene.leading_order``) when the leading units are selected."""
    if depth == gene.depth:
        ops = [f"layers: {depth} (copy)"]
    elif output_norm and depth > 0:
        ops = [f"layers: first {depth - 1} of {gene.depth}, then the last (a post-norm block's output norm)"]
    else:
        ops = [f"layers: first {depth} of {gene.depth}"]
    merged = regroups(tuple(gene.shape), tuple(shape), heads)
    grouped = head_groups(gene, groups)
    for k, (ns, nt) in enumerate(zip(gene.shape, shape)):
        how = _how(gene, k, leading) if leading else "uniform"
        if k in merged:
            r = shape[k + 1] // gene.shape[k + 1]
            ops.append(f"axes {k}-{k + 1}: {nt * r} of {ns} whole heads ({how}), {r} side by side per target head "
                       f"({gene.shape[k + 1]} -> {shape[k + 1]})")
        elif k in gene.branches and k in (branches or {}):
            bs, bt = gene.branches[k], (branches or {})[k]
            ops.append(f"axis {k}: select {nt} of {ns}, each of {len(bt)} concatenated branches from its own of "
                       f"{len(bs)} ({' | '.join(map(str, bs))} -> {' | '.join(map(str, bt))}; {how})"
                       if bs != bt else f"axis {k}: {nt} (copy)")
        elif k - 1 not in merged:
            g, tg = grouped.get(k, (0, 0))
            within = f", within {tg} of {g} key/value groups" if keeps_groups(ns, nt, g, tg) else ""
            ops.append(f"axis {k}: select {nt} of {ns} ({how}{within})" if nt != ns else f"axis {k}: {nt} (copy)")
    return ops


def _how(gene: GeneTemplate, k: int, order: str) -> str:
    """Which units a leading selection keeps along axis ``k``: the first of ``order`` where the
    source was put in it there (``GeneTemplate.ordered``), else the first ones."""
    n = gene.ordered[k] if gene.ordered else gene.depth
    if n == gene.depth:
        return f"leading, {order} order"
    if n == 0:
        return "leading, the source's own order"
    return f"leading, {order} order in {n} of {gene.depth} source layers, the source's own order in the others"


def check_template(gene: GeneTemplate, role: str, kinds: tuple[str, ...], shape: tuple[int, ...]) -> str:
    """Why a source template cannot feed a target template, or '' when it can."""
    if gene.role != role:
        return f"role differs (source {gene.role}, target {role})"
    if gene.kinds != kinds:
        return f"axis kinds differ (source {list(gene.kinds)}, target {list(kinds)})"
    for i, (kind, s, t) in enumerate(zip(kinds, gene.shape, shape)):
        if kind in (INDEX, PARTS, CUT) and s != t:
            what = {INDEX: "vocabulary, classes or a model output's axis", PARTS: "parts", CUT: "the graph cuts this output into pieces its "
                    "layout does not express: copied, never resampled"}[kind]
            return f"{kind} axis {i} ({what}) differs: source {s}, target {t}"
    return ""


def _unit_prefix(key: str) -> str:
    """The unit a template key belongs to: ``S<h>#<o>/u<j>`` or ``U<h>#<o>``."""
    return key.split(":", 1)[0]


def _flat_units(segments: list[dict]) -> list[tuple[str, str, str, bool, bool | None]]:
    """(unit prefix, signature hash, coarse hash, starts a block, on a projection shortcut or
    None when not recorded) of each unit of one block per segment, in graph order: a stage
    counts once, whatever its number of blocks."""
    out = []
    for seg in segments:
        stage = seg["kind"] == "stage"
        shortcut = seg.get("shortcut") or [None] * len(seg["units"])  # older learngenes lack it
        for j, (h, c, start, side) in enumerate(zip(seg["units"], seg["coarse"], seg["starts"], shortcut)):
            out.append((f"{seg['key']}/u{j}" if stage else seg["key"], h, c, start, side))
    return out


_EXACT, _COARSE, _GAP, _OPEN = 4.0, 2.0, 1.0, 1.0
_MAX_CELLS = 4_000_000  # beyond this many unit pairs, templates match by key alone


def _align(src: list[tuple], tgt: list[tuple]) -> dict[int, int]:
    """Target unit -> source unit: a global alignment of the two unit sequences (equal
    signatures score most, equal coarse signatures less; a run of unmatched units costs its
    length, and more when it does not begin where a residual block begins, so that a block
    one side has and the other lacks is cut at its own boundaries). Among equally good
    alignments, the one that matches the earlier units ("first N", as selection takes blocks:
    a DenseNet block of fewer layers pairs its layers with the source's first ones, which read
    as many concatenated branches): traced back from the end, a tie goes to an unmatched unit."""
    n, m = len(src), len(tgt)

    def best(values: list[float]) -> int:
        return max(range(3), key=lambda x: (values[x], x != 0))
    neg = float("-inf")

    def sim(i: int, j: int) -> float:
        if None not in (src[i][4], tgt[j][4]) and src[i][4] != tgt[j][4]:
            return neg  # a projection shortcut's layer and a main branch's are never one
        return _EXACT if src[i][1] == tgt[j][1] else (_COARSE if src[i][2] == tgt[j][2] else neg)

    def opening(seq: list[tuple], k: int) -> float:
        return _GAP + (0.0 if seq[k][3] else _OPEN)

    # three states: 0 matched, 1 source unit unmatched, 2 target unit unmatched
    score = [[[neg] * 3 for _ in range(m + 1)] for _ in range(n + 1)]
    back: list[list[list[int]]] = [[[-1] * 3 for _ in range(m + 1)] for _ in range(n + 1)]
    score[0][0][0] = 0.0
    for i in range(n + 1):
        for j in range(m + 1):
            if i and j:
                s = sim(i - 1, j - 1)
                if s > neg:
                    prev = score[i - 1][j - 1]
                    k = best(prev)
                    score[i][j][0], back[i][j][0] = prev[k] + s, k
            if i:
                prev = score[i - 1][j]
                cands = [prev[0] - opening(src, i - 1), prev[1] - _GAP, prev[2] - opening(src, i - 1)]
                k = best(cands)
                score[i][j][1], back[i][j][1] = cands[k], k
            if j:
                prev = score[i][j - 1]
                cands = [prev[0] - opening(tgt, j - 1), prev[1] - opening(tgt, j - 1), prev[2] - _GAP]
                k = best(cands)
                score[i][j][2], back[i][j][2] = cands[k], k
    out: dict[int, int] = {}
    i, j = n, m
    state = best(score[n][m])
    while i or j:
        prev = back[i][j][state]
        if state == 0:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif state == 1:
            i -= 1
        else:
            j -= 1
        state = prev
    return out


def _fill(tgt: list[tuple], matched: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Target units no source unit aligns with, drawn on the source unit of the target unit
    they repeat: a run of blocks the source lacks (a stage grown from one block to several,
    whose first block differs from the others by its strides) repeats the block before it
    (or after it). Returns target unit -> (source unit, the target unit repeated)."""
    out: dict[int, tuple[int, int]] = {}
    j = 0
    while j < len(tgt):
        if j in matched:
            j += 1
            continue
        end = j
        while end < len(tgt) and end not in matched:
            end += 1
        length = end - j
        for period in range(length, 0, -1):
            for step in (-period, period):
                order = range(j, end) if step < 0 else range(end - 1, j - 1, -1)
                got: dict[int, tuple[int, int]] = {}
                for k in order:
                    r = k + step
                    src = matched.get(r, got.get(r, (None, None))[0]) if 0 <= r < len(tgt) else None
                    if src is None or tgt[r][2] != tgt[k][2] or tgt[r][4] != tgt[k][4]:
                        break
                    got[k] = (src, r)
                else:
                    out.update(got)
                    break
            else:
                continue
            break
        j = end
    return out


def source_templates(source: list[dict], target: list[Segment], keys) -> dict[str, str]:
    """Target template key -> the source template key that feeds it, from aligning the units
    of the two structures (``_align``, ``_fill``). Without the source's unit signatures (an
    older learngene) or for very long sequences, templates match by key alone."""
    keys = list(keys)
    if not source or any(not s.get("units") for s in source) or any(not t.units for t in target):
        return {k: k for k in keys}
    src = _flat_units(source)
    tgt = _flat_units([asdict(t) for t in target])
    if len(src) * len(tgt) > _MAX_CELLS:
        return {k: k for k in keys}
    matched = _align(src, tgt)
    units = {tgt[j][0]: src[i][0] for j, i in matched.items()}
    units.update({tgt[j][0]: src[i][0] for j, (i, _) in _fill(tgt, matched).items()})
    out = {}
    for k in keys:
        prefix = _unit_prefix(k)
        if prefix in units:
            out[k] = units[prefix] + k[len(prefix):]
    return out


def make_plan(gene: Learngene, gs: GraphSlots, st: Structure, node_names: list[str],
              depth_mode: str = "spectral", method: str = "front") -> Plan:
    """Match every target slot to a learngene template: the one of the source unit its unit
    aligns with (``source_templates``), with the same role. With ``method`` 'select' (Weight
    Selection), a template the target holds more of than the source is left; with 'hybrid'
    it is transformed instead (FRONT), and the others selected."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    by_slot: dict[int, tuple[Template, str, list[str], str | None]] = {}
    verdicts: dict[str, str] = {}
    selected: list[str] = []
    expanded: list[str] = []
    sources = source_templates(gene.structure, st.segments, st.templates)
    for key in sorted(st.templates):
        tpl = st.templates[key]
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        kinds = first.layout.kinds
        shape = first.layout.canonical_shape(first.shape)
        skey = sources.get(key)
        src = gene.templates.get(skey) if skey is not None else None
        if skey is None:
            why = "no source unit aligns with this one (structures differ here)"
        elif src is None:
            why = gene.skipped.get(skey) or "no source template with this key (structures differ here)"
        else:
            why = check_template(src, tpl.role, kinds, shape)
            if method == "select" and not why:
                why = cannot_select(src, tpl.depth, shape, first.layout.head_axes, dict(first.layout.branches))
        verdicts[key] = why or "ok"
        chosen = src is not None and not why and selects(method, src, tpl.depth, shape, gene.keep,
                                                         first.layout.head_axes, dict(first.layout.branches))
        grown = src is not None and not why and expands(method, src, tpl.depth, shape, first.layout, gene.keep)
        if chosen:
            selected.append(key)
        if grown:
            expanded.append(key)
        ops = [] if src is None or why else _select_ops(src, shape, tpl.depth, gene.leading_order,
                                                         tpl.output_norm and method != "select",
                                                         first.layout.head_axes, first.layout.head_groups,
                                                         dict(first.layout.branches)) \
            if chosen else expand_ops(src, shape, tpl.depth, depth_mode) if grown \
            else _axis_ops(src, kinds, shape, tpl.depth, depth_mode)
        zeroed = set(identity_blocks(src, tpl)) if depth_mode == "identity" and src is not None and ops \
            and not chosen else set()
        own = fresh_count(src, shape) if grown else 0
        for b, block in enumerate(tpl.blocks):
            for i in block:
                by_slot[i] = (tpl, why, ops + [_IDENTITY_OP] if b in zeroed else ops, skey, b,
                              0 if b in zeroed else own)
    plans: list[SlotPlan] = []
    for i, s in enumerate(gs.slots):
        base = dict(initializer=s.initializer, node=node_names[s.node] or f"#{s.node}", input=s.input,
                    role=s.role, layout=s.layout.name if s.layout else "", shape=list(s.shape),
                    elements=s.size, evidence=list(s.evidence)
                    + ([f"parameter: {s.provenance}"] if s.role is not None and s.provenance else [])
                    + ([f"module {s.module} ({s.module_evidence})"] if s.module else []))
        if i in by_slot:
            tpl, why, ops, skey, b, own = by_slot[i]
            base["evidence"].insert(0, tpl.evidence)
            if skey is not None and skey != tpl.key and not why:
                base["evidence"].insert(1, f"fed by the source template {skey} (its unit aligns with this one)")
            if s.absent:
                plans.append(_absent_plan(base, tpl, why, ops, gene.templates.get(skey or ""), s.restorable,
                                          _zero_block(gene.templates.get(skey or ""), b, tpl.depth, depth_mode)))
                continue
            plans.append(SlotPlan(**base, template=tpl.key, status="left" if why else "written",
                                  operations=ops, reason=why, own=0 if why else own))
        else:
            reason = st.unplaced.get(i, s.reason or "not placed")
            plans.append(SlotPlan(**base, template=None, status="left", reason=reason, parameter=s.unsupported))
    if depth_mode not in DEPTH_MODES:
        raise ValueError(f"unknown depth mode {depth_mode!r}; use one of {', '.join(DEPTH_MODES)}")
    plan = Plan(plans, verdicts, gene.keep, gene.convention, divergence(gene.structure, st.segments), depth_mode,
                sources={k: v for k, v in sources.items() if verdicts.get(k) == "ok"}, selected=selected,
                expanded=expanded)
    partial = partly_read(gs, plans)
    if partial:
        what = ", ".join(f"{name} ({read} of {total} elements)" for name, read, total in partial[:8])
        plan.notes.append(
            f"partly written: {len(partial)} tensor{'s' if len(partial) > 1 else ''} the graph reads only in part, "
            f"through a Gather or Slice at constant positions (an export at a fixed sequence length): {what}"
            f"{' ...' if len(partial) > 8 else ''}; what the graph does not read keeps the target's own values "
            "(outside this graph, e.g. longer inputs in torch, those are not the source's); to transfer them "
            "whole, export both models with a dynamic sequence length, or give transfer_module example inputs "
            "as long as the table with every token type")
    unused = unused_source_units(gene, sources)
    if unused:
        what = "; ".join(f"{u} ({', '.join(sorted(set(roles)))})" for u, roles in sorted(unused.items()))
        n = len(unused)
        note = (f"not transferred: {n} source unit{'s' if n > 1 else ''} no target layer takes values from, in blocks "
                f"whose other units it takes: {what}")
        if all(r.startswith("norm.") for roles in unused.values() for r in roles):
            note += ("; a normalization the target's blocks lack: an exporter may have merged the fresh target's "
                     "norms, identical until trained: torch.onnx's dynamo exporter's optimizer merges norms that "
                     "read the same input (export the target with optimize=False to keep them), and its legacy "
                     "exporter shares equal tensors through Identity nodes, which are not followed into a layer "
                     "applied more than once (ALBERT's shared layers)")
        plan.notes.append(note)
    if method in ("hybrid", "expand") and gene.keep < 1.0:
        plan.notes.append(f"{method}: nothing selected (selection reads the whole source; this learngene holds "
                          f"keep {gene.keep:g}): every template transformed, as --method front")
    return plan


def partly_read(gs: GraphSlots, plans: list[SlotPlan]) -> list[tuple[str, int, int]]:
    """(initializer, elements read, elements stored) of every written tensor that the graph
    reads only in part through views selecting constant positions (``folding.View``): the
    elements no view reads are never written."""
    read: dict[str, list[np.ndarray]] = {}
    stored: dict[str, int] = {}
    written = {p.initializer for p in plans if p.status == "written"}
    whole = {sl.initializer for sl in gs.slots if sl.view is None}  # also read as stored
    for sl in gs.slots:
        v = sl.view
        if sl.initializer not in written or sl.initializer in whole or v is None or v.index is None:
            continue
        if not any(op in ("Gather", "GatherND", "Slice") for op in v.ops):
            continue
        read.setdefault(sl.initializer, []).append(np.asarray(v.index).reshape(-1))
        stored[sl.initializer] = int(np.prod(v.stored_shape, dtype=np.int64))
    out = []
    for name, idx in read.items():
        n = int(np.unique(np.concatenate(idx)).size)
        if n < stored[name]:
            out.append((name, n, stored[name]))
    return sorted(out)


def unused_source_units(gene: Learngene, sources: dict[str, str]) -> dict[str, list[str]]:
    """Source units (with their templates' roles) of a stage the target takes other units of,
    that no target template takes: a layer the target's blocks lack, whose values are not
    transferred and without which the target cannot compute the source's function."""
    used = {_unit_prefix(v) for v in sources.values()}
    stages = {u.split("/", 1)[0] for u in used if "/" in u}
    out: dict[str, list[str]] = {}
    roles = {**gene.omitted, **{k: t.role for k, t in gene.templates.items()}}
    for key, role in roles.items():
        unit = _unit_prefix(key)
        if "/" in unit and unit.split("/", 1)[0] in stages and unit not in used:
            out.setdefault(unit, []).append(role)
    return out


# What makes a branch's last layer output zero: its weights and biases, a norm's scale and
# bias (its running statistics stay: a zero scale already zeroes what they normalize).
_ZEROED_ROLES = ("linear.weight", "linear.bias", "conv.weight", "conv.bias", "norm.scale", "norm.bias")


_IDENTITY_OP = "identity block: zero (the last layer of a residual branch in a block the source lacks)"


def identity_blocks(gt: GeneTemplate, tpl: Template) -> list[int]:
    """The target blocks of a template that depth mode 'identity' zeroes: where its layer
    ends a residual branch (``Template.ends_branch``), the blocks that repeat a source block
    (``spectral.repeated_layers``), so that each such block adds nothing and the deeper
    target starts from the source's function."""
    if not tpl.ends_branch or tpl.role not in _ZEROED_ROLES or tpl.depth <= gt.depth:
        return []
    return [int(b) for b in np.flatnonzero(spectral.repeated_layers(gt.depth, tpl.depth))]


def _zero_block(src: GeneTemplate | None, block: int, depth: int, depth_mode: str) -> bool:
    """Whether the values a target block of this template gets are all zero: its mean and
    std, mapped over relative depth as ``materialize`` maps them, are both 0 (a block whose
    source counterparts are biases the layers do not have)."""
    if src is None:
        return False
    mode = "nearest" if depth_mode in spectral.PICKING_MODES else "linear"
    means = spectral.resample_layers(np.asarray(src.means, np.float64), depth, mode)
    stds = spectral.resample_layers(np.asarray(src.stds, np.float64), depth, mode)
    return bool(means[block] == 0.0 and stds[block] == 0.0)


def _absent_plan(base: dict, tpl: Template, why: str, ops: list[str], src: GeneTemplate | None,
                 restorable: bool, zero_block: bool = False) -> SlotPlan:
    """The plan of a bias the target's layer does not have: restored into the node's
    optional bias input when the source's is not zero, else left (and, when it is zero on
    both sides, for the whole template or for this block, not counted: there is nothing to
    transfer)."""
    zero = src is not None and src.is_zero()
    if why or src is None or zero or zero_block:
        return SlotPlan(**base, template=tpl.key, status="absent", absent=True, counted=False,
                        reason="absent in the target and zero (or absent) in the source: nothing to write")
    if not restorable:
        return SlotPlan(**base, template=tpl.key, status="left", absent=True,
                        reason="the target's layer has no bias input to take the source's bias (a MatMul with no "
                               "Add after it: the layer has no bias, or its exporter removed the Add of a zero "
                               "bias; torch.onnx.export(..., optimize=False) keeps it)")
    return SlotPlan(**base, template=tpl.key, status="written", absent=True,
                    operations=ops + ["restored: added as the node's optional bias input"])


def overlap_verdict(plan: Plan, st: Structure, target: str, source: str) -> str:
    """Why a target cannot be initialized from this source ('' when it can): no float
    weights, no parameter written, or a target with repeated stages none of which is fed
    (only loose layers such as a head match: the structures share nothing). A partial
    overlap stays allowed: every slot left is listed in the plan with its reason."""
    if not any(s.role is not None for s in plan.slots):
        return f"{target}: no float weights found in the target graph (nothing to initialize)"
    where = (f"; first divergence: {plan.divergence[0]}" if plan.divergence else
             f"; {plan.left[0].initializer}: {plan.left[0].reason}" if plan.left else "")
    if not plan.written:
        return (f"{target}: no target parameter can be written from {source} (structures of "
                f"different families?){where}")
    if all(s.role in BIAS_ROLES or (s.role or "").startswith("norm.") for s in plan.written):
        return (f"{target}: only biases and norms can be written from {source}, no weight a layer computes "
                f"with (the source is nowhere as large as the target?){where}")
    stages = {k for k, tpl in st.templates.items() if tpl.stage}
    if stages and not any(s.template in stages for s in plan.written):
        return (f"{target}: the structures share nothing with {source}: none of the target's repeated "
                f"stages has a source counterpart{where}")
    return ""


def check_overlap(plan: Plan, st: Structure, target: str, source: str) -> None:
    """Set ``plan.verdict`` and refuse (FrontError) a target nothing useful can be written into."""
    plan.verdict = overlap_verdict(plan, st, target, source)
    if plan.verdict:
        raise FrontError(plan.verdict)


def divergence(source: list[dict], target: list[Segment]) -> list[str]:
    """Where the target's sequence of stages and layers departs from the source's. A stage
    that only differs in its number of blocks is not a divergence (depth is resampled)."""
    a = [s["sig"] for s in source]
    b = [s.sig for s in target]
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        src = "; ".join(Segment(**s).describe() for s in source[i1:i2])
        tgt = "; ".join(t.describe() for t in target[j1:j2])
        si = f"{i1}" if i2 - i1 == 1 else f"{i1}-{i2 - 1}"
        tj = f"{j1}" if j2 - j1 == 1 else f"{j1}-{j2 - 1}"
        if op == "delete":
            out.append(f"source segment {si} ({src}) has no counterpart in the target (before target segment {j1})")
        elif op == "insert":
            out.append(f"target segment {tj} ({tgt}) has no counterpart in the source (before source segment {i1})")
        else:
            out.append(f"target segment {tj} ({tgt}) differs from source segment {si} ({src})")
    return out


def format_plan(plan: Plan, verbose: bool = True) -> str:
    """A readable table of the plan."""
    lines = []
    rows = [("initializer", "role", "shape", "template", "operations / reason")]
    for s in plan.listed:
        if not verbose and s.role is None:
            continue
        what = "; ".join(s.operations) if s.status == "written" else f"LEFT: {s.reason}"
        rows.append((s.initializer, s.role or "-", "x".join(map(str, s.shape)) or "scalar",
                     s.template or "-", what))
    widths = [min(max(len(r[c]) for r in rows), 40) for c in range(4)]
    for r in rows:
        lines.append("  ".join(r[c][:40].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    sm = plan.summary()
    lines.extend(summary_lines(plan))
    lines.append(f"{sm['written']} slots written, {sm['left']} left; "
                 f"{sm['written_fraction']:.1%} of {sm['weight_elements']} weight elements written "
                 f"(keep {plan.keep}, convention {plan.convention}, depth {plan.depth})")
    return "\n".join(lines)


def summary_lines(plan: Plan) -> list[str]:
    """Where the structures diverge and what was left, grouped by reason."""
    lines = []
    if plan.divergence:
        lines.append("structures diverge:" + "".join(f"\n  - {d}" for d in plan.divergence))
    for why, n, elements in plan.left_by_reason():
        lines.append(f"left: {n} slot{'s' if n > 1 else ''} ({elements} elements): {why}")
    sm = plan.summary()
    if sm.get("own_elements"):
        lines.append(f"own: {sm['own_elements']} weight elements ({sm['own_elements'] / sm['weight_elements']:.1%}) "
                     "keep the target's own values: units the source lacks, in expanded templates")
    lines.extend(plan.notes)
    if plan.requantized:
        errs = list(plan.requantized.values())
        lines.append(f"requantized: {len(errs)} quantized weights written in the target's bits and block size; "
                     f"relative error against the float transfer: mean {np.mean(errs):.2e}, max {max(errs):.2e}")
    return lines

