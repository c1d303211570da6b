"""Weight Selection: the baseline initialization that front-onnx is compared with.

Xu et al. 2023, "Initializing Models with Larger Ones" (ICLR 2024), from the paper's
description, in torch state-dict space (source and target are sizes of one family, so their
parameters have the same names):

- layer selection: "first N" -- target block i takes source block i. With one family's
  parameter names this is name identity (``blocks.3.attn.qkv.weight`` from
  ``blocks.3.attn.qkv.weight``); in a multi-stage CNN the first N blocks of every stage.
- element selection: "uniform" -- along every dimension that is smaller in the target,
  evenly spaced indices ``floor(i * n_src / n_tgt)`` (every other element when halving).
  The indices depend only on the two sizes, so the same hidden unit is selected in every
  weight that touches it (the paper's consistency requirement: residual stream, heads).
- a fused projection (``qkv``: out axis ``3 d``) is three parts: the selection runs inside
  each part, so q, k and v keep matching units.
- it cannot grow: a target dimension larger than the source's, or a block the source does not
  have, raises ``CannotGrow``.
"""
from __future__ import annotations

import re

import torch

# parameter names whose first axis is made of equal parts (fused projections)
FUSED_PARTS = {re.compile(r"(^|\.)qkv\.(weight|bias)$"): 3}


class CannotGrow(ValueError):
    """Weight Selection only shrinks: the target is larger than the source somewhere."""


def uniform_indices(n_src: int, n_tgt: int) -> torch.Tensor:
    """Evenly spaced indices of ``n_tgt`` out of ``n_src`` (``floor(i * n_src / n_tgt)``)."""
    if n_tgt > n_src:
        raise CannotGrow(f"cannot select {n_tgt} of {n_src} elements")
    return (torch.arange(n_tgt) * n_src) // n_tgt


def _parts(name: str) -> int:
    return next((p for rx, p in FUSED_PARTS.items() if rx.search(name)), 1)


def select_tensor(src: torch.Tensor, shape: torch.Size | tuple[int, ...], parts: int = 1) -> torch.Tensor:
    """``src`` reduced to ``shape`` by uniform element selection along every axis; axis 0
    taken part by part when ``parts > 1``."""
    if src.dim() != len(shape):
        raise ValueError(f"rank {src.dim()} != {len(shape)}")
    out = src
    for axis, (ns, nt) in enumerate(zip(src.shape, shape)):
        if ns == nt:
            continue
        if axis == 0 and parts > 1:
            if ns % parts or nt % parts:
                raise ValueError(f"axis 0 of sizes {ns} -> {nt} is not made of {parts} parts")
            idx = uniform_indices(ns // parts, nt // parts)
            idx = torch.cat([idx + k * (ns // parts) for k in range(parts)])
        else:
            idx = uniform_indices(ns, nt)
        out = out.index_select(axis, idx)
    return out.clone()


def weight_selection(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict for ``target``'s names and shapes selected from ``source``'s (both torch
    state dicts of one family; first N blocks, uniform elements). Integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) are copied when shapes agree. Raises ``CannotGrow``."""
    missing = sorted(set(target) - set(source))
    if missing:
        raise CannotGrow(f"the source has no {missing[0]} (and {len(missing) - 1} more): Weight Selection takes "
                         f"the first N blocks and cannot add blocks")
    out = {}
    for name, t in target.items():
        s = source[name]
        if not torch.is_floating_point(t):
            out[name] = s.clone() if s.shape == t.shape else t.clone()
            continue
        out[name] = select_tensor(s, t.shape, _parts(name)).to(t.dtype)
    return out


def apply_weight_selection(source_model: torch.nn.Module, target_model: torch.nn.Module) -> torch.nn.Module:
    """Initialize ``target_model`` in place from ``source_model`` by Weight Selection."""
    sd = weight_selection(source_model.state_dict(), target_model.state_dict())
    target_model.load_state_dict(sd, strict=True)
    return target_model
