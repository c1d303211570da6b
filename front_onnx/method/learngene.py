"""The learngene: per template, the kept low-frequency DCT coefficients of a source's
standardized weights (depth x feature axes), their per-block statistics and layout
metadata. Stored as safetensors (arrays) plus JSON metadata; loading runs no code and
needs neither the source model nor torch. Format: docs/learngene-format.md.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from front_onnx.analysis.slots import CUT, FEATURE, INDEX, PARTS, SPATIAL
from front_onnx.errors import LearngeneError
from front_onnx.numeric.spectral import CONVENTIONS
from front_onnx.outputs import write_bytes

FORMAT = "front-onnx.learngene"
FORMAT_VERSION = 1




AXIS_KINDS = {FEATURE, INDEX, SPATIAL, PARTS, CUT}
# orders whose leading units are the ones to keep: a selection takes them first
LEADING_ORDERS = ("importance", "diverse")
UNIT_ORDERS = ("", "smooth") + LEADING_ORDERS


def _segment(x: Any) -> dict[str, Any]:
    """One entry of a learngene's ``structure`` (a source segment), checked field by field."""
    if not isinstance(x, dict) or not isinstance(x.get("kind"), str) or not isinstance(x.get("sig"), str) \
            or type(x.get("count")) is not int or not isinstance(x.get("roles"), list) \
            or not all(isinstance(r, str) for r in x["roles"]):
        raise ValueError("'structure' entries must be segments (kind, sig, count, roles)")
    out = {"kind": x["kind"], "sig": x["sig"], "count": x["count"], "roles": list(x["roles"])}
    # what aligns a target's units with the source's (optional: older learngenes match by key)
    if not isinstance(x.get("key", ""), str):
        raise TypeError("a 'structure' entry's key must be a string")
    out["key"] = x.get("key", "")
    for name, kind in (("units", str), ("coarse", str), ("starts", bool), ("shortcut", bool)):
        v = x.get(name, [])
        if not isinstance(v, list) or not all(type(e) is kind for e in v):
            raise ValueError(f"a 'structure' entry's {name} must be a list of {kind.__name__}")
        out[name] = list(v)
    return out


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays by name (name, dtype, shape, bytes), independent of the file's
    layout: stored as ``arrays_sha256`` so that a flipped bit in the data is caught."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


@dataclass
class GeneTemplate:
    """The learngene of one template (one role across the blocks of a stage)."""

    key: str
    stage: str
    role: str
    layout: str                    # the source slot's stored layout, for people
    kinds: tuple[str, ...]         # canonical axis kinds of one block's tensor
    shape: tuple[int, ...]         # canonical shape of one block's tensor in the source
    depth: int                     # number of blocks in the source stage
    dtype: str                     # source tensor dtype
    coefficients: np.ndarray       # [kept depth, kept axes...] DCT-II coefficients
    means: np.ndarray              # [depth] per-block means (float64)
    stds: np.ndarray               # [depth] per-block standard deviations (float64)
    kept: tuple[int, ...] = ()     # the corner's shape; coefficients may hold less in a partial learngene
    masked: np.ndarray | None = None  # [depth, *shape] bool: entries the source holds only as mask values
    # [depth, *shape]: the source's own tensors, held by a transfer's private (partial) learngene
    # for the templates it selects from: selection copies units, so it needs no spectrum, and
    # copies them exactly (a spectrum stored in float32 gives them back to its rounding); never saved
    values: np.ndarray | None = None
    # canonical heads axis -> key/value groups of grouped-query heads (``Layout.head_groups``):
    # a selection keeps each query head with its key/value head
    groups: dict[int, int] = field(default_factory=dict)
    # per canonical axis, how many of the source's blocks hold it in the learngene's
    # ``unit_order`` (``alignment.ordered_blocks``; empty: not recorded, every axis taken as ordered)
    ordered: tuple[int, ...] = ()
    # canonical axis -> the lengths of the concatenated branches it reads (``Layout.branches``):
    # a selection takes each target branch from its own source branch
    branches: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kept:
            self.kept = tuple(self.coefficients.shape)

    def is_zero(self) -> bool:
        """Whether the source's tensors are zero in every block."""
        if self.values is not None:
            return not np.any(self.values)
        return not np.any(self.coefficients) and not np.any(self.means)

    def meta(self) -> dict[str, Any]:
        return {
            "key": self.key, "stage": self.stage, "role": self.role, "layout": self.layout,
            "kinds": list(self.kinds), "shape": list(self.shape), "depth": self.depth,
            "dtype": self.dtype, "kept": list(self.kept),
            **({"groups": {str(a): g for a, g in sorted(self.groups.items())}} if self.groups else {}),
            **({"ordered": list(self.ordered)} if self.ordered else {}),
            **({"branches": {str(a): list(b) for a, b in sorted(self.branches.items())}} if self.branches else {}),
        }


@dataclass
class Learngene:
    """Everything needed to initialize a target: templates plus how they were made."""

    templates: dict[str, GeneTemplate]
    keep: float
    convention: str
    source: str = ""               # source file name (informational)
    source_sha256: str = ""
    tool_version: str = ""
    skipped: dict[str, str] = field(default_factory=dict)   # template key -> why not extracted
    partial: bool = False          # only what one target reads (an in-memory transfer): not saved
    structure: list[dict[str, Any]] = field(default_factory=list)  # the source's segments, in order
    # how the source's units were ordered before extraction ('' as stored; 'smooth', 'importance'
    # or 'diverse': ``alignment``). Selection keeps the leading units of a ``LEADING_ORDERS`` order.
    unit_order: str = ""
    # a partial learngene: the role of each source template it does not hold (the target reads
    # none of them), so a plan can say which of the source's layers the target lacks
    omitted: dict[str, str] = field(default_factory=dict)

    @property
    def leading_order(self) -> str:
        """The unit order whose leading units a selection keeps (one of ``LEADING_ORDERS``), or ''
        when the source's units were not put in such an order (a selection then spaces them evenly)."""
        return self.unit_order if self.unit_order in LEADING_ORDERS else ""

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": self.tool_version,
            "source": self.source, "source_sha256": self.source_sha256, "keep": self.keep,
            "convention": self.convention, "skipped": dict(sorted(self.skipped.items())),
            "templates": [self.templates[k].meta() for k in sorted(self.templates)],
            "structure": self.structure,
            **({"unit_order": self.unit_order} if self.unit_order else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (``front_onnx.outputs``); the caller guards ``path`` against its inputs."""
        from safetensors.numpy import save

        if self.partial:
            raise ValueError("a partial learngene (made for one target by transfer) cannot be saved; use extract")
        path = Path(path)
        tensors: dict[str, np.ndarray] = {}
        for i, k in enumerate(sorted(self.templates)):
            t = self.templates[k]
            tensors[f"t{i}.coefficients"] = np.ascontiguousarray(t.coefficients)
            tensors[f"t{i}.means"] = np.ascontiguousarray(t.means, dtype=np.float64)
            tensors[f"t{i}.stds"] = np.ascontiguousarray(t.stds, dtype=np.float64)
            if t.masked is not None:
                tensors[f"t{i}.masked"] = np.ascontiguousarray(t.masked, dtype=np.uint8)
        meta = {**self.metadata(), "arrays_sha256": arrays_sha256(tensors)}
        data = save(tensors, metadata={"front_onnx": json.dumps(meta, sort_keys=True)})
        write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Learngene":
        """Read a learngene file; any problem raises LearngeneError naming the file."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise LearngeneError(f"{path}: cannot read learngene file ({e.strerror or e})") from None
        try:
            arrays = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8:8 + header_len])
            meta = json.loads(header.get("__metadata__", {}).get("front_onnx", "null"))
        except (SafetensorError, ValueError, TypeError, UnicodeDecodeError) as e:
            raise LearngeneError(f"{path}: not a learngene file (unreadable safetensors: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LearngeneError(f"{path}: not a front-onnx learngene (no '{FORMAT}' metadata)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise LearngeneError(f"{path}: learngene format version {meta.get('format_version')!r} is not "
                                 f"supported (this front-onnx reads version {FORMAT_VERSION})")
        digest = meta.get("arrays_sha256")
        if digest is not None and digest != arrays_sha256(arrays):
            raise LearngeneError(f"{path}: corrupted learngene (its arrays do not match the stored checksum)")
        try:
            templates: dict[str, GeneTemplate] = {}
            for i, tm in enumerate(meta["templates"]):
                coef = arrays[f"t{i}.coefficients"]
                means, stds = arrays[f"t{i}.means"], arrays[f"t{i}.stds"]
                t = GeneTemplate(
                    key=str(tm["key"]), stage=str(tm["stage"]), role=str(tm["role"]), layout=str(tm["layout"]),
                    kinds=tuple(str(k) for k in tm["kinds"]), shape=tuple(int(d) for d in tm["shape"]),
                    depth=int(tm["depth"]), dtype=str(tm["dtype"]), coefficients=coef, means=means, stds=stds,
                    groups={int(a): int(g) for a, g in tm.get("groups", {}).items()},
                    ordered=tuple(tm.get("ordered", ())),
                    branches={int(a): tuple(int(n) for n in b) for a, b in tm.get("branches", {}).items()})
                if any(not 0 <= a < len(t.shape) or sum(b) != t.shape[a] or min(b, default=0) < 1
                       for a, b in t.branches.items()):
                    raise ValueError(f"template {t.key!r}: branches whose lengths do not make up their axis")
                if t.ordered and (len(t.ordered) != len(t.kinds)
                                  or any(type(n) is not int or not 0 <= n <= t.depth for n in t.ordered)):
                    raise ValueError(f"template {t.key!r}: 'ordered' must count 0 to depth blocks per axis")
                if any(not 0 <= a < len(t.shape) or g < 1 or t.shape[a] % g for a, g in t.groups.items()):
                    raise ValueError(f"template {t.key!r}: key/value groups that do not divide its heads")
                if (list(coef.shape) != list(tm["kept"]) or coef.ndim != len(t.kinds) + 1
                        or means.shape != (t.depth,) or stds.shape != (t.depth,)):
                    raise ValueError(f"template {t.key!r}: array shapes disagree with the metadata")
                if f"t{i}.masked" in arrays:
                    t.masked = arrays[f"t{i}.masked"].astype(bool)
                    if t.masked.shape != (t.depth,) + t.shape:
                        raise ValueError(f"template {t.key!r}: masked entries of another shape than the template's")
                if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(means)) and np.all(np.isfinite(stds))):
                    raise ValueError(f"template {t.key!r}: non-finite values")
                templates[t.key] = t
                if not set(t.kinds) <= AXIS_KINDS:
                    raise ValueError(f"template {t.key!r}: unknown axis kinds {sorted(set(t.kinds) - AXIS_KINDS)}")
            keep = float(meta["keep"])
            convention = meta["convention"]
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"keep {keep} is not in (0, 1]")
            if convention not in CONVENTIONS:
                raise ValueError(f"convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
            skipped, structure = meta.get("skipped", {}), meta.get("structure", [])
            if not isinstance(skipped, dict) or not isinstance(structure, list):
                raise ValueError("'skipped' must be an object and 'structure' a list of objects")
            structure = [_segment(x) for x in structure]
            unit_order = meta.get("unit_order", "")
            if unit_order not in UNIT_ORDERS:
                raise ValueError(f"unit_order {unit_order!r} is not one of {', '.join(map(repr, UNIT_ORDERS))}")
        except (KeyError, TypeError, ValueError) as e:
            raise LearngeneError(f"{path}: corrupted learngene ({e})") from None
        return cls(templates, keep, convention, str(meta.get("source", "")), str(meta.get("source_sha256", "")),
                   str(meta.get("tool_version", "")), dict(skipped), structure=list(structure),
                   unit_order=unit_order)
