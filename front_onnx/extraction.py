"""Extract a learngene from an analyzed source graph."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from front_onnx import spectral
from front_onnx.graph import FEATURE, SPATIAL, GraphSlots, analyze_slots
from front_onnx.learngene import GeneTemplate, Learngene
from front_onnx.onnx_io import OnnxModel
from front_onnx.structure import Structure, Template, find_structure

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


def read_stack(model: OnnxModel, gs: GraphSlots, tpl: Template) -> np.ndarray:
    """The template's tensors across its blocks in canonical layout, stacked along depth
    into one float64 buffer (each block converted straight from its memory map)."""
    first = gs.slots[tpl.blocks[0][0]]
    assert first.layout is not None
    out = np.empty((len(tpl.blocks),) + first.layout.canonical_shape(first.shape), dtype=np.float64)
    for b, block in enumerate(tpl.blocks):
        s = gs.slots[block[0]]
        assert s.layout is not None
        np.copyto(out[b], s.layout.to_canonical(np.asarray(model.array(s.initializer))), casting="unsafe")
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_learngene(model: OnnxModel, keep: float = 1.0, convention: str = "ortho",
                      structure: tuple[GraphSlots, Structure] | None = None,
                      needed: dict[str, tuple[int, ...]] | None = None) -> Learngene:
    """The learngene of a source model: per template, standardize each block's tensor,
    DCT along depth and feature axes, keep the low-frequency corner.

    ``needed`` (template key -> the target's [depth, *shape]) is what an in-memory transfer
    passes: only those templates are extracted, and only the part of each corner the target
    reads is computed. Initializing from it gives the same bytes as from the full learngene
    (the DCT is separable and runs in a fixed axis order), but it cannot be saved."""
    from front_onnx import __version__

    if convention not in spectral.CONVENTIONS:
        raise ValueError(f"unknown scale convention {convention!r} (choose from {', '.join(spectral.CONVENTIONS)})")
    spectral.kept_length(1, keep)  # validates keep
    gs, st = structure or analyze(model)
    templates: dict[str, GeneTemplate] = {}
    skipped: dict[str, str] = {}
    for key in sorted(st.templates):
        if needed is not None and key not in needed:
            continue
        tpl = st.templates[key]
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        stack = read_stack(model, gs, tpl)
        try:
            z, means, stds = spectral.standardize_stack(stack, inplace=True)
        except ValueError:
            skipped[key] = "non-finite values in the source weights"
            continue
        kinds = first.layout.kinds
        kept = kept_shape(stack.shape[0], stack.shape[1:], kinds, keep)
        want = needed.get(key) if needed is not None else None
        lengths = kept if want is None or len(want) != len(kept) else tuple(min(k, n) for k, n in zip(kept, want))
        axes = transformed_axes(kinds)
        coef = spectral.spectrum_corner(z, {a: lengths[a] for a in axes}, convention, overwrite=True)
        del z, stack
        store = np.float64 if model.dtype(first.initializer) == np.float64 else np.float32
        templates[key] = GeneTemplate(
            key=key, stage=tpl.stage, role=tpl.role, layout=first.layout.name, kinds=kinds,
            shape=first.layout.canonical_shape(first.shape), depth=len(tpl.blocks),
            dtype=str(model.dtype(first.initializer)), coefficients=np.ascontiguousarray(coef, dtype=store),
            means=means, stds=stds, kept=kept)
    return Learngene(templates, float(keep), convention, source=model.path.name,
                     source_sha256=file_sha256(model.path), tool_version=__version__, skipped=skipped,
                     partial=needed is not None, structure=[asdict(seg) for seg in st.segments])


def analyze(model: OnnxModel) -> tuple[GraphSlots, Structure]:
    """Slots and structure of a model (the structure finder lives in structure.py)."""
    gs = analyze_slots(model.proto)
    return gs, find_structure(gs, model.proto)
