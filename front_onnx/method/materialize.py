"""Materialize target tensors from a learngene and write the initialized graph."""
from __future__ import annotations

import functools

import hashlib
from pathlib import Path

import numpy as np

from front_onnx import progress
from front_onnx.analysis.folding import TYPE_ONLY, write_views
from front_onnx.analysis.slots import ABSENT_SUFFIX, GraphSlots, stored_values
from front_onnx.analysis.structure import Structure, Template
from front_onnx.method.extraction import transformed_axes
from front_onnx.method import amplitude
from front_onnx.method.learngene import GeneTemplate, Learngene
from front_onnx.method.planning import Plan, identity_blocks
from front_onnx.method.expansion import expand, expands
from front_onnx.method.selection import select, selected_blocks, selects, source_blocks
from front_onnx.numeric import spectral
from front_onnx.numeric.quantization import dequantize, quantize
from front_onnx.onnxio import OnnxModel, save_model


def _contiguous(a: np.ndarray, dtype=None) -> np.ndarray:
    """``np.ascontiguousarray`` that keeps a 0-d tensor 0-d (a learned scalar gain), where numpy's
    gives it one axis."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(np.shape(a))


def materialize(gene: GeneTemplate, depth: int, shape: tuple[int, ...], convention: str,
                depth_mode: str = "spectral") -> np.ndarray:
    """The target's depth stack [depth, *shape] (float64) from a template's learngene:
    fit the kept spectrum to the target's lengths (truncate or zero-pad), inverse DCT,
    and restore each block's statistics, interpolated over relative depth.

    ``depth_mode`` 'spectral' resamples the layer axis in the DCT domain like the feature
    axes (the paper); 'nearest' and 'linear' invert at the source's depth and then pick
    (or interpolate) layers by relative depth (``spectral.resample_layers``); statistics
    follow the same mapping ('nearest' picks, the others interpolate)."""
    axes = transformed_axes(gene.kinds)
    coeffs = gene.coefficients.astype(np.float64)
    if depth_mode == "spectral" or depth == gene.depth:
        z = spectral.spectrum_to_array(coeffs, (depth,) + tuple(shape), axes, convention)
    elif depth_mode in spectral.DEPTH_MODES:
        z = spectral.spectrum_to_array(coeffs, (gene.depth,) + tuple(shape), axes, convention)
        z = np.array(spectral.resample_layers(z, depth, depth_mode), dtype=np.float64)
    else:
        raise ValueError(f"unknown depth mode {depth_mode!r}; use one of {', '.join(spectral.DEPTH_MODES)}")
    means, stds, floor = _layer_stats(gene, depth, depth_mode)
    bshape = (depth,) + (1,) * len(shape)
    z *= stds.reshape(bshape)
    z += means.reshape(bshape)
    return z if floor is None else np.maximum(z, floor)


def _layer_stats(gene: GeneTemplate, depth: int, depth_mode: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Per target block (means, stds) from the source's, mapped as the layers are ('nearest'
    picks, the other modes interpolate over relative depth), and the floor that keeps a
    norm's variances positive (None for other roles)."""
    mode = "nearest" if depth_mode in spectral.PICKING_MODES else "linear"
    means = spectral.resample_layers(np.asarray(gene.means, np.float64), depth, mode)
    stds = spectral.resample_layers(np.asarray(gene.stds, np.float64), depth, mode)
    floor = max(float(np.min(gene.means)) * 1e-3, 1e-6) if gene.role == "norm.var" else None
    return means, stds, floor


def target_shapes(gs: GraphSlots, st: Structure) -> dict[str, tuple[int, ...]]:
    """Template key -> [depth, *canonical shape] of a target: what it will read of a learngene."""
    out = {}
    for key, tpl in st.templates.items():
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        out[key] = (tpl.depth,) + first.layout.canonical_shape(first.shape)
    return out


_ALL = 1 << 62  # "every coefficient" along an axis of a ``needed`` shape


def needed_shapes(gs: GraphSlots, st: Structure, depth_mode: str,
                  sources: dict[str, str] | None = None) -> dict[str, tuple[int, ...]]:
    """What a transfer into this target needs to extract of each source template: the
    target's shapes (the same bytes as the full learngene, less work and memory), with
    every kept layer when depth is resampled in the layer domain (it inverts at the
    source's depth). ``sources`` (target key -> source key, ``planning.source_templates``)
    keys them by source template: one that feeds several is needed at the largest."""
    needed: dict[str, tuple[int, ...]] = {}
    for key, shape in target_shapes(gs, st).items():
        skey = key if sources is None else sources.get(key)
        if skey is None:
            continue
        if depth_mode != "spectral":
            shape = (_ALL,) + shape[1:]
        have = needed.get(skey)
        needed[skey] = shape if have is None or len(have) != len(shape) else tuple(map(max, have, shape))
    return needed


def _streamed(gene: GeneTemplate, tpl: Template, gs: GraphSlots, shape: tuple[int, ...], convention: str,
              dtypes: dict[str, np.dtype], depth_mode: str = "spectral") -> dict[int, np.ndarray] | None:
    """``materialize`` written straight into the slots' output arrays, or
    None where that cannot be done (then the caller takes the whole-stack path).

    The same 1-D inverse transforms in the same order as ``materialize``: each kept layer's
    feature axes (last axis first), then the layer axis in chunks of rows
    (``spectral.layer_axis_chunks``), whose statistics are restored and which are cast into
    the outputs through their canonical views. Same bytes, but the float64 work is one
    [kept depth, *shape] buffer plus a chunk, instead of several [depth, *shape] stacks and
    a cast copy of each block."""
    depth = tpl.depth
    if not shape:
        return None
    arrays: dict[int, np.ndarray] = {}
    views: list[list[np.ndarray]] = []
    for block in tpl.blocks:
        vb = []
        for i in block:
            s = gs.slots[i]
            assert s.layout is not None
            arr = np.empty(s.shape, dtype=dtypes[s.initializer])
            cv = s.layout.to_canonical(arr)
            if cv.shape != tuple(shape) or not np.may_share_memory(cv, arr):
                return None  # the canonical view is a copy: writes would not land in arr
            arrays[i] = arr
            vb.append(cv)
        views.append(vb)
    feature = [a for a in transformed_axes(gene.kinds) if a != 0]
    coef = gene.coefficients
    h = np.empty((coef.shape[0],) + tuple(shape), dtype=np.float64)
    for k in range(coef.shape[0]):
        c = coef[k:k + 1].astype(np.float64)
        h[k] = spectral.spectrum_to_array(c, (1,) + tuple(shape), feature, convention)[0] if feature else c[0]
        del c
    means, stds, floor = _layer_stats(gene, depth, depth_mode)
    layered = depth_mode != "spectral" and depth != gene.depth   # invert at the source's depth, then pick
    for rows, z in spectral.layer_axis_chunks(h, gene.depth if layered else depth, convention, inverse=True):
        if layered:  # layer-domain resampling acts on each element's column alone: chunks are exact
            z = np.array(spectral.resample_layers(z, depth, depth_mode), dtype=np.float64)
        bshape = (depth,) + (1,) * (z.ndim - 1)
        z *= stds.reshape(bshape)
        z += means.reshape(bshape)
        if floor is not None:  # variances must stay positive
            z = np.maximum(z, floor)
        for b in range(depth):
            for cv in views[b]:
                cv[rows] = z[b]
        del z
    return arrays


def slot_values(gene: Learngene, gs: GraphSlots, st: Structure, plan: Plan,
                dtypes: dict[str, np.dtype], depth_mode: str = "spectral", *,
                release: bool = False, unknown: dict[int, np.ndarray] | None = None,
                method: str = "front", scale: str = "none") -> dict[int, np.ndarray]:
    """Values for every written slot (slot index -> array in the slot's stored layout and
    the dtype of its initializer, ``dtypes[name]``). ``unknown`` receives, per slot, the
    entries the source held only as mask values (``_unknown_entries``), for the writer.

    Templates go one at a time; each is inverse-transformed straight into its output arrays
    (``_streamed``). ``release`` drops each template from ``gene`` once its values exist
    (``transfer``'s private learngene: its coefficients are about the target's size, and the
    values replace them instead of adding to them). ``method`` 'select' fills blocks by
    Weight Selection instead (``selection``), 'hybrid' each template the target holds no more
    of than the source; ``scale`` sets the amplitude (``amplitude``) of every template."""
    out: dict[int, np.ndarray] = {}
    fed = [key for key, verdict in plan.templates.items() if verdict == "ok"]
    last = {plan.sources.get(key, key): n for n, key in enumerate(fed)}  # a source template may feed several
    for n, key in enumerate(progress.track(fed, "materialize", unit="template")):
        skey = plan.sources.get(key, key)
        tpl: Template = st.templates[key]
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        shape = first.layout.canonical_shape(first.shape)
        gt = gene.templates[skey]
        branches = dict(first.layout.branches)
        selected = selects(method, gt, tpl.depth, shape, gene.keep, first.layout.head_axes, branches)
        expanded = not selected and expands(method, gt, tpl.depth, shape, first.layout, gene.keep)
        done = None if selected or expanded else _streamed(gt, tpl, gs, shape, gene.convention, dtypes, depth_mode)
        fresh = None
        if done is not None:
            out.update(done)
        else:
            if expanded:
                stack, fresh = expand(source_blocks(gt, gene.convention), tpl.depth, shape, gt.role)
            elif selected:
                stack = select(gt, tpl.depth, shape, gene.convention, leading=bool(gene.leading_order),
                               output_norm=tpl.output_norm and method != "select", heads=first.layout.head_axes,
                               groups=first.layout.head_groups, branches=branches)
            else:
                stack = materialize(gt, tpl.depth, shape, gene.convention, depth_mode)
            for b, block in enumerate(tpl.blocks):
                for i in block:
                    s = gs.slots[i]
                    out[i] = _contiguous(s.layout.from_canonical(stack[b]),  # type: ignore[union-attr]
                                                  dtype=dtypes[s.initializer])
            del stack
        if scale in amplitude.FORMULA_SCALES:
            _rescaled(gt, tpl, gs, shape, out, depth_mode, scale, selected, tpl.output_norm and method != "select")
        zeroed = identity_blocks(gt, tpl) if depth_mode == "identity" and not selected else []
        for b in zeroed:
            for i in tpl.blocks[b]:
                if i in out:
                    out[i][...] = 0
        if fresh is not None and unknown is not None:  # new units keep the target's own values
            for b, block in enumerate(tpl.blocks):
                for i in block if b not in zeroed else ():
                    unknown[i] = _contiguous(gs.slots[i].layout.from_canonical(fresh))  # type: ignore[union-attr]
        if unknown is not None:
            _unknown_entries(gt, tpl, gs, out, unknown)
        del gt
        if release and last[skey] == n:
            del gene.templates[skey]
    return out


def _rescaled(gt: GeneTemplate, tpl: Template, gs: GraphSlots, shape: tuple[int, ...], out: dict[int, np.ndarray],
              depth_mode: str, scale: str, selected: bool = False, output_norm: bool = False) -> None:
    """A template's blocks brought to the amplitude ``scale`` asks for (``amplitude``): each
    block's element std that of the source block it maps to (a selected template's block b:
    ``selection.selected_blocks``), times the fan-in gain."""
    _, stds, floor = _layer_stats(gt, tpl.depth, depth_mode)
    if selected:
        stds = np.asarray(gt.stds, np.float64)[selected_blocks(gt.depth, tpl.depth, output_norm)]
    if floor is not None:
        return  # variances: their values are what they are
    first = gs.slots[tpl.blocks[0][0]]
    assert first.layout is not None
    factor = amplitude.gain(gt.role, first.layout, tuple(gt.shape), tuple(shape), scale)
    for b, block in enumerate(tpl.blocks):
        arrays = [out[i] for i in block if i in out]
        if arrays:
            amplitude.rescale(arrays, float(stds[b]), factor)


def _unknown_entries(gt: GeneTemplate, tpl: Template, gs: GraphSlots, out: dict[int, np.ndarray],
                     unknown: dict[int, np.ndarray]) -> None:
    """Entries the source held only as mask values (``GeneTemplate.masked``) carry nothing of
    the parameter: where the target's blocks line up with the source's (same depth and
    shape), they are marked unknown (slot -> bool array in the slot's stored layout), and
    the writer keeps the target's own values there."""
    if gt.masked is None or gt.depth != tpl.depth:
        return
    for b, block in enumerate(tpl.blocks):
        if not gt.masked[b].any():
            continue
        for i in block:
            s = gs.slots[i]
            lay = s.layout
            assert lay is not None
            if i in out and lay.canonical_shape(tuple(s.shape)) == tuple(gt.shape):
                unknown[i] = _contiguous(lay.from_canonical(gt.masked[b]))


def _keep_unknown(target: OnnxModel, gs: GraphSlots, values: dict[int, np.ndarray],
                  unknown: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """A plain slot's unknown entries (``_unknown_entries``) keep the target's stored values;
    views skip them (``folding.write_views``)."""
    out = dict(values)
    for i, m in unknown.items():
        s = gs.slots[i]
        if i in values and s.view is None and not s.absent:
            stored = np.asarray(stored_values(target.array, s)).reshape(values[i].shape)
            out[i] = np.where(m, stored, values[i]).astype(values[i].dtype)
    return out


def _requantized(target: OnnxModel, gs: GraphSlots, new_values: dict[str, np.ndarray]) -> dict[str, float]:
    """Quantized weights (``QuantRef``) written as the target stores them: the float value
    in ``new_values`` is replaced by its codes, scales and zero points in the target's own
    bits and block size. Returns each one's relative L2 quantization error (the float
    transfer against what the quantized target computes with)."""
    errors: dict[str, float] = {}
    for s in gs.slots:
        if s.quant is None or s.initializer not in new_values or s.initializer in errors:
            continue  # (the parts of a packed projection share their weight)
        w = np.asarray(new_values.pop(s.initializer), np.float32)
        scales_dtype = target.dtype(s.quant.scales)
        packed, scales, zps = quantize(s.quant.spec, w, scales_dtype)
        new_values[s.initializer] = packed.reshape(target.shape(s.initializer))
        new_values[s.quant.scales] = scales.reshape(target.shape(s.quant.scales))
        if s.quant.zero_points is not None and zps is not None:
            new_values[s.quant.zero_points] = zps.reshape(target.shape(s.quant.zero_points))
        back = dequantize(s.quant.spec, packed, scales, zps).astype(np.float64)
        errors[s.initializer] = float(np.linalg.norm(back - w) / max(float(np.linalg.norm(w)), 1e-30))
    return errors


def _digest(a: np.ndarray) -> bytes:
    return hashlib.sha256(_contiguous(a).reshape(-1).view(np.uint8)).digest()


def _views_stored(target: OnnxModel, gs: GraphSlots, values: dict[int, np.ndarray],
                  unknown: dict[int, np.ndarray], unified: list[str]) -> dict[int, np.ndarray]:
    """Values written to views (``folding``) put back into their stored tensors: every view
    slot of one initializer gets the same stored tensor, so the writer sees one value. One
    parameter (``_one_parameter``) whose views were given different values for the same
    elements keeps its first node input's, and is named in ``unified`` (as the writer does
    for a parameter several layers read): never a mean of the values."""
    views: dict[str, list[int]] = {}
    for i in values:
        if gs.slots[i].view is not None:
            views.setdefault(gs.slots[i].initializer, []).append(i)
    if not views:
        return values
    out = dict(values)
    for name, idx in views.items():
        base = stored_values(target.array, gs.slots[idx[0]])
        stored = write_views(base, [(gs.slots[i].view, values[i], unknown.get(i)) for i in idx])  # type: ignore[misc]
        sites: dict[tuple[int, int], list[int]] = {}  # the views one node input reads (a fused projection's pieces)
        for i in idx:
            sites.setdefault((gs.slots[i].node, gs.slots[i].input), []).append(i)
        differ = len(sites) > 1 and not all(_view_holds(gs.slots[i].view, stored, values[i], unknown.get(i))
                                            for i in idx)
        if differ and _one_parameter(target, name):
            first = list(sites.values())[0]  # one parameter: its first node input's values, as one tensor
            stored = write_views(base, [(gs.slots[i].view, values[i], unknown.get(i)) for i in first])  # type: ignore[misc]
            unified.append(name)
        elif differ:
            # views that read the same elements were given different values: the target's
            # exporter merged equal tensors (a fresh DeiT's zero class and distillation
            # tokens, a fresh model's zero biases of fused projections), which the writer
            # splits, so each node input's views get a stored tensor of their own
            for members in sites.values():
                own = write_views(base, [(gs.slots[i].view, values[i], unknown.get(i)) for i in members])  # type: ignore[misc]
                for i in members:
                    out[i] = own
            continue
        for i in idx:
            out[i] = stored
    return out


def _view_holds(view, stored: np.ndarray, value: np.ndarray, unknown: np.ndarray | None) -> bool:
    """Whether ``stored`` read through ``view`` gives back the value written to it (where known)."""
    got = np.asarray(view.read(stored), np.float64)
    want = np.asarray(value, np.float64).reshape(got.shape)
    ok = np.ones(got.shape, bool) if unknown is None else ~np.asarray(unknown).reshape(got.shape)
    if view.masked is not None:
        ok &= ~view.masked
    scale = float(np.abs(want[ok]).max(initial=0.0))
    return bool(np.allclose(got[ok], want[ok], rtol=1e-5, atol=1e-6 * scale))


def _reads_shape_only(target: OnnxModel, s) -> bool:
    """The node reading this use of an initializer reads its shape or type, not its values
    (``folding.TYPE_ONLY``: Shape, Size; CastLike's input 1, whose type it casts to)."""
    nodes = target.proto.graph.node
    return 0 <= s.node < len(nodes) and (nodes[s.node].op_type, s.input) in TYPE_ONLY


def _one_parameter(target: OnnxModel, name: str) -> bool:
    """A shared initializer of varied values: one parameter read twice (a weight norm's
    direction, by its norm and its division), not identical tensors an exporter merged
    (exporters merge constant-valued ones: a fresh model's zero biases, unit scales)."""
    a = np.asarray(target.array(name))
    return a.size > 1 and a.dtype.kind == "f" and bool(np.ptp(a) > 0)


def write_initialized(target: OnnxModel, gs: GraphSlots, values: dict[int, np.ndarray], output: Path,
                      external_data: bool | None = None,
                      unknown: dict[int, np.ndarray] | None = None) -> dict[str, int]:
    """Write the target with new values. An initializer whose uses get different values
    (exporters deduplicate identical tensors) is split into one initializer per value;
    nothing else in the graph changes, except that one parameter (a tensor of varied values:
    ``_one_parameter``; DeBERTa's query projection shared with its position projection)
    stays one tensor, with its first use's value. Returns {'split': n initializers split,
    'added': n, 'renamed': {slot index: new initializer name}, 'unified': [those parameters]}."""
    unknown = unknown or {}
    unified: list[str] = []  # one parameter whose uses were written differently: it keeps the first's value
    values = _views_stored(target, gs, _keep_unknown(target, gs, values, unknown), unknown, unified)
    by_init: dict[str, list[int]] = {}
    for i, s in enumerate(gs.slots):
        if not s.absent:
            by_init.setdefault(s.initializer, []).append(i)
    new_values: dict[str, np.ndarray] = {}
    add: dict[str, tuple[np.ndarray, object]] = {}
    rewire: dict[tuple[int, int], str] = {}
    taken = set(target.initializer_names()) | {o for n in target.proto.graph.node for o in n.output} \
        | {i.name for i in target.proto.graph.input}

    def fresh(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    # biases the target's exporter dropped: restored into the node's optional bias input
    for i, s in enumerate(gs.slots):
        if s.absent and i in values:
            if not s.restorable:
                raise ValueError(f"slot {i}: an absent bias without an optional input cannot be written")
            name = fresh(s.initializer.replace(ABSENT_SUFFIX, "") + "__front_bias")
            add[name] = (values[i], values[i].dtype)
            rewire[(s.node, s.input)] = name
    split = 0
    for name, idx in by_init.items():
        if not any(i in values for i in idx):
            continue
        dtype = target.dtype(name)
        if len(idx) == 1:              # the common case: one use, nothing to compare
            new_values[name] = values[idx[0]]
            continue
        # group the uses by value, in first-use order; uses left alone keep the original
        # bytes (group None) and then keep the name, else the first group keeps it. A use
        # that reads only the shape (Shape, Size: the dynamo exporter without its optimizer
        # takes Shape of a Conv kernel), or reads the parameter through an op the transfer does
        # not support (``Slot.follows``, or any use of a tensor of varied values: ``_one_parameter``),
        # takes whatever value the others get: it splits nothing
        groups: dict[bytes | None, list[int]] = {}
        one = functools.cache(lambda: _one_parameter(target, name))  # read only when a use needs it
        for i in idx:  # a use of the parameter an unsupported op reads (a weight norm's) follows the written one
            if i not in values and (_reads_shape_only(target, gs.slots[i]) or gs.slots[i].follows
                                    or (gs.slots[i].view is None and one())):
                continue
            groups.setdefault(_digest(values[i]) if i in values else None, []).append(i)
        if not groups:
            continue
        # uses through one pass-through node (the legacy exporter's Identity before a layer applied
        # twice) read one value: they cannot be split apart, so they take the first written one's
        first: dict[tuple[int, int], bytes | None] = {}
        for digest, members in sorted(groups.items(), key=lambda g: g[0] is None):  # written groups first
            for i in list(members):
                key = (gs.slots[i].node, gs.slots[i].input)
                if first.setdefault(key, digest) != digest:
                    members.remove(i)
                    groups[first[key]].append(i)
                    if digest is not None and name not in unified:  # two written values, one kept
                        unified.append(name)
            if not members:
                del groups[digest]
        order = sorted(groups, key=lambda d: d is not None)  # stable: None first, if present
        if len(order) > 1 and order[0] is not None and all(gs.slots[i].view is None for i in idx) \
                and one():  # one parameter stays one tensor: the first use's value
            unified.append(name)
            order = order[:1]
        if order[0] is not None:
            new_values[name] = values[groups[order[0]][0]]
        split += len(order) > 1
        for k, digest in enumerate(order[1:], start=1):
            new_name = fresh(f"{name}__front{k}")
            add[new_name] = (values[groups[digest][0]], dtype)
            for i in groups[digest]:
                rewire[(gs.slots[i].node, gs.slots[i].input)] = new_name
    quant_errors = _requantized(target, gs, new_values)
    # weights held in Constant nodes are written back into those nodes
    constants = {target.constant_node(n): v for n, v in new_values.items() if target.constant_node(n) is not None}
    new_values = {n: v for n, v in new_values.items() if target.constant_node(n) is None}
    save_model(target, output, new_values, external_data=external_data, add_initializers=add, rewire=rewire,
               constants=constants)
    renamed = {i: rewire[(s.node, s.input)] for i, s in enumerate(gs.slots) if (s.node, s.input) in rewire}
    return {"split": split, "added": len(add), "renamed": renamed, "requantized": quant_errors, "unified": unified}
