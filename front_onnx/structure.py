"""Stages, blocks and templates of a graph, from the module paths of its weight slots.

This is the name-based structure finder: module paths come from parameter names, node
scopes and legacy node names (see ``graph.Slot.module``). It is kept behind one function,
``find_structure``, so that a topology-based finder can replace it.

A *stage* is a run of repeated blocks with the same structure and shapes; a *template* is
one role inside a stage's block, and its tensors across the blocks form the depth stack.
Slots outside any repeated block form single-block stages of their own (stem, head).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from front_onnx.graph import GraphSlots, Slot


@dataclass
class Template:
    """One role inside a stage's block; ``blocks[i]`` lists the slots of block i."""

    key: str                         # stable id used to match source and target
    stage: str                       # stage id, e.g. 'blocks[0]' or '' for stem/head
    role: str
    blocks: list[list[int]] = field(default_factory=list)  # indices into GraphSlots.slots

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass
class Structure:
    templates: dict[str, Template]
    unplaced: dict[int, str]         # slot index -> why it has no template
    stages: dict[str, list[str]]     # stage id -> block labels (module paths), in depth order


def _is_int(s: str) -> bool:
    return s.isdigit()


def _split_block(module: str, non_leaf: set[str]) -> tuple[str, int, str] | None:
    """(container, block index, path inside the block) for the innermost integer component
    of ``module`` whose child spans several modules (a block, not a Sequential's leaf)."""
    parts = module.split(".")
    for k in range(len(parts) - 1, 0, -1):
        if _is_int(parts[k]):
            child = ".".join(parts[: k + 1])
            if child in non_leaf:
                return ".".join(parts[:k]), int(parts[k]), ".".join(parts[k + 1:])
    return None


def find_structure(gs: GraphSlots) -> Structure:
    """Group the weight slots of a graph into templates with depth stacks."""
    slots = gs.slots
    modules = {s.module for s in slots if s.role and s.module}
    non_leaf: set[str] = set()
    for m in modules:
        parts = m.split(".")
        for k in range(1, len(parts)):
            non_leaf.add(".".join(parts[:k]))

    unplaced: dict[int, str] = {}
    # container -> block index -> list of (template path key, slot index)
    blocks: dict[str, dict[int, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
    loose: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(slots):
        if s.role is None:
            unplaced[i] = s.reason
            continue
        if not s.module:
            unplaced[i] = "no module path (no parameter name, scope or node name to place it)"
            continue
        tkey = _template_key(s)
        where = _split_block(s.module, non_leaf)
        if where is None:
            loose[f"{s.module}:{tkey}"].append(i)
        else:
            container, b, inner = where
            blocks[container][b].append((f"{inner}:{tkey}" if inner else tkey, i))

    templates: dict[str, Template] = {}
    stages: dict[str, list[str]] = {}
    for key, idx in loose.items():
        templates[key] = Template(key, "", slots[idx[0]].role or "", [idx])
    for container in sorted(blocks):
        per_block = blocks[container]
        order = sorted(per_block)
        # runs of consecutive blocks with identical structure and shapes form a stage
        runs: list[list[int]] = []
        prev = None
        for b in order:
            sig = tuple(sorted((k, slots[i].shape) for k, i in per_block[b]))
            if sig != prev:
                runs.append([])
                prev = sig
            runs[-1].append(b)
        seen: dict[str, int] = defaultdict(int)   # template key -> runs holding it so far
        for run in runs:
            keys = sorted({k for k, _ in per_block[run[0]]})
            stage_id = f"{container}[{run[0]}:{run[-1] + 1}]"
            stages[stage_id] = [f"{container}.{b}" for b in run]
            for k in keys:
                occ = seen[k]
                seen[k] += 1
                tid = f"{container}[{occ}].{k}"
                tpl = Template(tid, stage_id, "", [])
                for b in run:
                    tpl.blocks.append([i for kk, i in per_block[b] if kk == k])
                tpl.role = slots[tpl.blocks[0][0]].role or ""
                templates[tid] = tpl
    return Structure(templates, unplaced, stages)


def _template_key(s: Slot) -> str:
    """The role of a slot within its module (several slots of a module differ by role)."""
    return s.role or "?"
