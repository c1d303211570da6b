"""Extract a learngene from an analyzed source graph."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from front_onnx import progress
from front_onnx._version import __version__
from front_onnx.analysis import analyze
from front_onnx.analysis.slots import (
    FEATURE,
    SPATIAL,
    GraphSlots,
    slot_array,
    slot_dtype,
)
from front_onnx.analysis.structure import Structure, Template
from front_onnx.errors import OnnxFileError
from front_onnx.method.learngene import GeneTemplate, Learngene
from front_onnx.numeric import spectral
from front_onnx.onnxio import OnnxModel

TRANSFORMED = (FEATURE, SPATIAL)


def transformed_axes(kinds: tuple[str, ...]) -> list[int]:
    """Axes of a depth stack [L, *canonical] that the DCT runs along: depth plus feature and
    spatial axes (index and parts axes are never mixed)."""
    return [0] + [1 + k for k, kind in enumerate(kinds) if kind in TRANSFORMED]


def kept_shape(depth: int, shape: tuple[int, ...], kinds: tuple[str, ...], keep: float) -> tuple[int, ...]:
    """The learngene corner kept from a [depth, *shape] spectrum: ``keep`` of the depth and
    feature axes; spatial taps (3x3 kernels) are kept whole; index/parts axes are kept whole."""
    out = [spectral.kept_length(depth, keep)]
    for n, kind in zip(shape, kinds):
        out.append(spectral.kept_length(n, keep) if kind == FEATURE else n)
    return tuple(out)


def _copy_tiled(dst: np.ndarray, src: np.ndarray, tile: int = 512) -> None:
    """``dst[...] = src`` (casting), in tiles of the last axis when ``src`` is a transposed
    view: a whole-array transposing copy thrashes the cache (about 2x slower here)."""
    if src.flags.c_contiguous or dst.ndim < 2 or dst.shape[-1] <= tile:
        np.copyto(dst, src, casting="unsafe")
        return
    for c in range(0, dst.shape[-1], tile):
        np.copyto(dst[..., c:c + tile], src[..., c:c + tile], casting="unsafe")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_learngene(model: OnnxModel, keep: float = 1.0, convention: str = "ortho",
                      structure: tuple[GraphSlots, Structure] | None = None,
                      needed: dict[str, tuple[int, ...]] | None = None,
                      allow_nonfinite: bool = False, values_for: frozenset[str] = frozenset()) -> Learngene:
    """The learngene of a source model: per template, standardize each block's tensor,
    DCT along depth and feature axes, keep the low-frequency corner.

    ``values_for``: templates whose tensors are held as they are (``GeneTemplate.values``), for
    a transfer that selects from them; their spectrum is computed only when ``needed`` names
    them too. Such a learngene is partial (it cannot be saved).

    ``needed`` (template key -> the target's [depth, *shape]) is what an in-memory transfer
    passes: only those templates are extracted, and only the part of each corner the target
    reads is computed. Initializing from it gives the same bytes as from the full learngene
    (the DCT is separable and runs in a fixed axis order), but it cannot be saved.

    A source without float weights is refused (OnnxFileError). So are NaN or Inf in the
    weights a template reads, naming the initializers, unless ``allow_nonfinite``: then
    those templates are skipped and listed in ``Learngene.skipped`` with the reason."""

    if convention not in spectral.CONVENTIONS:
        raise ValueError(f"unknown scale convention {convention!r} (choose from {', '.join(spectral.CONVENTIONS)})")
    spectral.kept_length(1, keep)  # validates keep
    gs, st = structure or analyze(model)
    if not any(sl.role is not None for sl in gs.slots):
        raise OnnxFileError(f"{model.path}: no float weights found in the graph (nothing to extract)")
    templates: dict[str, GeneTemplate] = {}
    skipped: dict[str, str] = {}
    nonfinite: dict[str, list[str]] = {}  # template key -> initializers holding NaN/Inf
    keys = [k for k in sorted(st.templates) if needed is None or k in needed or k in values_for]
    for key in progress.track(keys, "extract", unit="template"):
        tpl = st.templates[key]
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        kinds = first.layout.kinds
        shape = first.layout.canonical_shape(first.shape)
        kept = kept_shape(len(tpl.blocks), shape, kinds, keep)
        want = needed.get(key) if needed is not None else None
        lengths = kept if want is None or len(want) != len(kept) else tuple(min(k, n) for k, n in zip(kept, want))
        store = np.float64 if slot_dtype(first) == np.float64 else np.float32
        try:
            values = None
            if key in values_for:
                values, means, stds = template_values(model, gs, tpl, store)
            if needed is None or key in needed:
                coef, means, stds = template_corner(model, gs, tpl, lengths, transformed_axes(kinds), convention, store)
            else:
                coef = np.zeros((0,) * len(kept), dtype=store)
        except ValueError:
            bad = _nonfinite_initializers(model, gs, tpl)
            if not bad:
                raise
            nonfinite[key] = bad
            skipped[key] = f"non-finite values (NaN/Inf) in the source weights {', '.join(bad)}"
            continue
        templates[key] = GeneTemplate(
            key=key, stage=tpl.stage, role=tpl.role, layout=first.layout.name, kinds=kinds,
            shape=shape, depth=len(tpl.blocks), dtype=str(slot_dtype(first)), coefficients=coef,
            means=means, stds=stds, kept=kept, masked=_masked_entries(gs, tpl, shape), values=values,
            groups={a: g for a, g in first.layout.head_groups.items() if g < shape[a]},  # not one per head
            branches=dict(first.layout.branches))
    if nonfinite and not allow_nonfinite:
        names = sorted({n for v in nonfinite.values() for n in v})
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OnnxFileError(f"{model.path}: non-finite values (NaN/Inf) in source weights {shown}; refused "
                            "(allow_nonfinite / --allow-nonfinite skips them and reports the weights left)")
    # a partial learngene cannot be saved, so nothing reads its source hash: skip hashing
    # the whole source file (seconds for a multi-GB model)
    partial = needed is not None or bool(values_for)
    return Learngene(templates, float(keep), convention, source=model.path.name,
                     source_sha256="" if partial else file_sha256(model.path),
                     tool_version=__version__, skipped=skipped,
                     partial=partial, structure=[asdict(seg) for seg in st.segments],
                     omitted={k: t.role for k, t in st.templates.items() if k not in templates and k not in skipped})


def _masked_entries(gs: GraphSlots, tpl: Template, shape: tuple[int, ...]) -> np.ndarray | None:
    """[depth, *shape]: the entries each block holds only as mask values (a parameter folded
    with a mask, ``folding.View.masked``), which say nothing of the parameter there; None
    when no block has any."""
    blocks = [gs.slots[b[0]] for b in tpl.blocks]
    if not any(s.view is not None and s.view.masked is not None and s.view.masked.any() for s in blocks):
        return None
    out = np.zeros((len(blocks),) + tuple(shape), bool)
    for k, s in enumerate(blocks):
        if s.view is not None and s.view.masked is not None:
            out[k] = s.layout.to_canonical(s.view.masked)  # type: ignore[union-attr]
    return out


def _nonfinite_initializers(model: OnnxModel, gs: GraphSlots, tpl: Template) -> list[str]:
    """The initializers of a template's blocks that hold NaN or Inf (read one at a time)."""
    out = []
    for block in tpl.blocks:
        if gs.slots[block[0]].absent:
            continue  # an absent bias is zero
        name = gs.slots[block[0]].initializer
        a = np.asarray(model.array(name))
        if a.dtype.kind not in "biu" and not np.all(np.isfinite(a.astype(np.float64, copy=False))):
            out.append(name)
    return sorted(set(out))


def _canonical_blocks(model: OnnxModel, gs: GraphSlots, tpl: Template):
    """Each block's tensor of a template, canonical, as a fresh float64 [1, *shape] array
    (read from its memory map through one reused buffer)."""
    raw: np.ndarray | None = None
    for block in tpl.blocks:
        s = gs.slots[block[0]]
        assert s.layout is not None
        layer = np.empty((1,) + s.layout.canonical_shape(s.shape), dtype=np.float64)
        dtype = slot_dtype(s)
        if raw is None or raw.dtype != dtype or raw.size != layer.size:
            raw = np.empty(layer.size, dtype=dtype)  # one read buffer for every block
        if s.absent:  # a bias the exporter dropped: zero
            raw.fill(0)
            stored = raw.reshape(s.shape)
        elif s.view is not None or s.quant is not None:  # a view computed with constants, a quantized weight
            stored = slot_array(model.array, s)
        else:
            stored = model.read_into(s.initializer, raw)
        _copy_tiled(layer[0, ...], s.layout.to_canonical(stored))  # [0, ...]: a view also of a 0-d tensor
        yield layer


def template_values(model: OnnxModel, gs: GraphSlots, tpl: Template,
                    store: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the blocks' tensors [L, *shape] in ``store`` dtype, means[L], stds[L]) of a template: what
    selection copies from, with the statistics ``template_corner`` gives. Raises ValueError on
    non-finite weights."""
    out = None
    n_layers = len(tpl.blocks)
    means = np.empty(n_layers)
    stds = np.empty(n_layers)
    for b, layer in enumerate(_canonical_blocks(model, gs, tpl)):
        if out is None:
            out = np.empty((n_layers,) + layer.shape[1:], dtype=store)
        out[b] = layer[0]
        _, m, sd = spectral.standardize_stack(layer, inplace=True, as_in_stack=n_layers > 1)
        means[b], stds[b] = m[0], sd[0]
    assert out is not None
    return out, means, stds


def template_corner(model: OnnxModel, gs: GraphSlots, tpl: Template, lengths: tuple[int, ...],
                    axes: list[int], convention: str, store: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients [lengths on ``axes``] in ``store`` dtype, means[L], stds[L]) of a template.

    Block by block: each block's tensor is read from its memory map into a float64 buffer,
    standardized and transformed along its feature axes (cut to ``lengths`` right away);
    then the layer axis is transformed in chunks and cut. The same 1-D transforms in the
    same order (last axis first, layers last) as a DCT of the whole [L, ...] stack, so the
    same bits, but only one source block in float64 and the cut [L, ...] corner are ever
    held, never the full-size float64 stack. Raises ValueError on non-finite weights."""
    n_layers = len(tpl.blocks)
    feature = {a: lengths[a] for a in axes if a != 0}
    means = np.empty(n_layers)
    stds = np.empty(n_layers)
    corner = None
    for b, layer in enumerate(_canonical_blocks(model, gs, tpl)):
        z, m, sd = spectral.standardize_stack(layer, inplace=True, as_in_stack=n_layers > 1)
        means[b], stds[b] = m[0], sd[0]
        c = spectral.spectrum_corner(z, feature, convention, overwrite=True) if feature else z
        del z, layer
        if corner is None:
            corner = np.empty((n_layers,) + c.shape[1:], dtype=np.float64)
        corner[b] = c[0]
        del c
    assert corner is not None
    out = np.empty((min(lengths[0], n_layers),) + corner.shape[1:], dtype=store)
    for rows, chunk in spectral.layer_axis_chunks(corner, out.shape[0], convention):
        out[(slice(None), rows) if out.ndim > 1 else rows] = chunk
    return out, means, stds
