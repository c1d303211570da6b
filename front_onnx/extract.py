"""Extract a learngene from an analyzed source graph."""
from __future__ import annotations

import hashlib
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
    """The template's tensors across its blocks in canonical layout, stacked along depth."""
    layers = []
    for block in tpl.blocks:
        s = gs.slots[block[0]]
        assert s.layout is not None
        layers.append(s.layout.to_canonical(np.asarray(model.array(s.initializer))))
    return np.stack(layers).astype(np.float64, copy=False)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_learngene(model: OnnxModel, keep: float = 1.0, convention: str = "ortho",
                      structure: tuple[GraphSlots, Structure] | None = None) -> Learngene:
    """The learngene of a source model: per template, standardize each block's tensor,
    DCT along depth and feature axes, keep the low-frequency corner."""
    from front_onnx import __version__

    if convention not in spectral.CONVENTIONS:
        raise ValueError(f"unknown scale convention {convention!r} (choose from {', '.join(spectral.CONVENTIONS)})")
    spectral.kept_length(1, keep)  # validates keep
    gs, st = structure or analyze(model)
    templates: dict[str, GeneTemplate] = {}
    skipped: dict[str, str] = {}
    for key in sorted(st.templates):
        tpl = st.templates[key]
        first = gs.slots[tpl.blocks[0][0]]
        assert first.layout is not None
        stack = read_stack(model, gs, tpl)
        if not np.all(np.isfinite(stack)):
            skipped[key] = "non-finite values in the source weights"
            continue
        z, means, stds = spectral.standardize_stack(stack)
        kinds = first.layout.kinds
        axes = transformed_axes(kinds)
        coef = spectral.fit_spectrum(spectral.dct_forward(z, axes, convention),
                                     kept_shape(stack.shape[0], stack.shape[1:], kinds, keep))
        store = np.float64 if np.dtype(model.array(first.initializer).dtype) == np.float64 else np.float32
        templates[key] = GeneTemplate(
            key=key, stage=tpl.stage, role=tpl.role, layout=first.layout.name, kinds=kinds,
            shape=tuple(stack.shape[1:]), depth=stack.shape[0], dtype=str(model.dtype(first.initializer)),
            coefficients=np.ascontiguousarray(coef.astype(store)), means=means, stds=stds)
    return Learngene(templates, float(keep), convention, source=model.path.name,
                     source_sha256=file_sha256(model.path), tool_version=__version__, skipped=skipped)


def analyze(model: OnnxModel) -> tuple[GraphSlots, Structure]:
    """Slots and structure of a model (the replaceable structure finder lives in structure.py)."""
    gs = analyze_slots(model.proto)
    return gs, find_structure(gs)
