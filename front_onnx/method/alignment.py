"""Alignment (``align``): before the transform, the source's channel spaces are permuted into
a smooth order, with the same permutation on every weight axis that indexes the space, so the
source computes the same function and a low-pass along a neuron axis blends similar neurons.

Spaces come from the dimension flow (``analysis.dimflow``): the residual width shared by all
blocks gets one order, each block's hidden width its own. Orders are spectral seriation of the
units' concatenated weight vectors (``numeric.seriation``), each member's rows scaled to unit
norm so that every tensor of the space has a say. A space split by attention heads (a query's
and key's projections, or a value's and the output projection's input: one space each,
``dimflow``) is ordered head by head, each head's units among themselves, so that heads stay
whole and a head-size resampling blends similar units; ordered by importance, the heads
themselves are also put strongest first, one order for an attention's two spaces
(``_pair_heads``), so that a selection of fewer heads keeps the strongest. A space is not aligned when a member is
not a plain stored tensor (a view, a quantized weight, an absent bias), when it is split in more
than one way, or when it indexes classes or a vocabulary.

The aligned source is written to a folder the caller owns; whether it still computes the
source's function is for the caller to check (``api``: onnxruntime on synthesized inputs),
space by space when the whole alignment does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.optimize

from front_onnx.analysis.dimflow import ChannelSpace, DimensionFlow, UnionFind, dimension_flow, unsplit
from front_onnx.analysis.slots import CUT, INDEX, GraphSlots, Slot
from front_onnx.analysis.structure import Structure, find_structure
from front_onnx.method.learngene import LEADING_ORDERS
from front_onnx.numeric.seriation import (MAX_COLUMNS, diverse_key, group_order, grouped_order, importance_order,
                                          roughness, unit_gram, unit_rows, unit_shares)
from front_onnx.onnxio import OnnxModel, attribute, load_model, save_model


_UNIT_ROLES = {"linear.weight", "conv.weight"}


@dataclass
class SpaceOrder:
    """One channel space's permutation: where it applies and how smooth it made the space."""

    id: str
    size: int
    members: list[tuple[str, int]]          # (initializer, stored axis)
    order: np.ndarray
    before: float = 0.0                     # roughness of the original order
    after: float = 0.0
    parts: dict[str, int] = field(default_factory=dict)  # fused projection -> its parts, each permuted alike
    inner: dict[str, int] = field(default_factory=dict)  # fused projection -> its heads, its parts inside them
    depth_matched: bool = False             # ordered by matching to the block before (``_match_depth``)
    # (graph output, axis) holding the units of a space that later layers also read (a residual
    # width that is the model's output): the function check compares them in the permuted order.
    # Units only an output holds (classes, whatever the slot analysis calls them) are never in it.
    outputs: list[tuple[str, int]] = field(default_factory=list)
    heads_with: str = ""                    # importance: the space whose heads move with these (``_pair_heads``;
    #                                         itself for a fused attention's one space)
    in_place: np.ndarray | None = None      # with heads_with: the order with the heads in place (``heads_in_place``)
    heads_group: int = -1                   # the spaces whose heads take one order (``_pair_heads``): one group
    heads: int = 0                          # a space split by attention heads: how many (units move within them)
    table: bool = False                     # a heads-sized axis of another tensor (a relative-position bias
    #                                         table): its units are heads, moved only with ``in_place`` set

    def moves_heads(self) -> bool:
        """Whether the order ranks whole heads too, not only the units within each head (a
        space not split by heads: whether its units are in the order; a table's are only
        while its heads move)."""
        return self.in_place is not None if self.heads or self.table else True

    def heads_in_place(self) -> None:
        """Back to the heads' own order, units still ordered within each head."""
        if self.in_place is not None:
            self.order, self.in_place, self.heads_with, self.heads_group = self.in_place, None, "", -1

    def heads_state(self) -> tuple:
        """What ``heads_in_place`` changes, for ``restore_heads``."""
        return self.order, self.in_place, self.heads_with, self.heads_group

    def restore_heads(self, state: tuple) -> None:
        self.order, self.in_place, self.heads_with, self.heads_group = state


@dataclass
class Alignment:
    spaces: list[SpaceOrder] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # space id -> why it is not aligned
    order: str = "smooth"                                   # ``ORDERS``
    why: str = ""                                           # why none was attempted

    def describe(self) -> str:
        done = len(self.spaces)
        if self.why:
            return f"align: none: {self.why}"
        if not done:
            return "align: no channel space could be aligned"
        b = np.mean([s.before for s in self.spaces])
        a = np.mean([s.after for s in self.spaces])
        matched = sum(s.depth_matched for s in self.spaces)
        what = (f"into a smooth order (mean neighbour cosine distance {b:.3f} -> {a:.3f})" if self.order == "smooth"
                else "strongest units first (importance)" if self.order == "importance"
                else "strongest distinct units first (diverse: importance discounted by redundancy)")
        attentions = len({frozenset((s.id, s.heads_with)) for s in self.spaces if s.heads_with})
        return (f"align: {done} channel spaces permuted {what}"
                + (f", the heads of {attentions} attention{'s' if attentions > 1 else ''} strongest first"
                   if attentions else "")
                + (f", {matched} of them matched to the block before" if matched else "")
                + f"; {len(self.skipped)} left as they are")


def channel_concatenations(flow: DimensionFlow, by_init: dict[str, Slot]) -> list[str]:
    """The Concat nodes whose concatenated axis a projection or convolution reads, in graph order."""
    sizes = {sp.id: sp for sp in flow.spaces}
    return [name for name, sid in flow.concatenated.items()
            if any(by_init.get(init) is not None and by_init[init].role in _UNIT_ROLES for init, _ in sizes[sid].axes)]


def _unorderable(model: OnnxModel, flow: DimensionFlow, by_init: dict[str, Slot], order: str) -> Alignment | None:
    """Why a strongest-first order cannot serve a selection of the leading units here (an
    alignment that orders nothing, saying why), or None.
    The leading units of one space must be the units its readers take: a grouped convolution
    reads its channels group by group, and a concatenation's reader reads its branches side by
    side, each branch ordered (and selected) by itself. Evenly spaced units (Weight
    Selection) keep both: each target group's channels come from one source group, and a
    concatenation's readers take each branch's channels from that branch (``Layout.branches``)."""
    grouped = grouped_convolutions(model)
    joined = channel_concatenations(flow, by_init)
    found = [f"{len(grouped)} grouped convolution{'s' if len(grouped) > 1 else ''} ({', '.join(grouped[:3])}"
             f"{', ...' if len(grouped) > 3 else ''})"] if grouped else []
    found += [f"{len(joined)} concatenation{'s' if len(joined) > 1 else ''} of channels that layers read "
              f"({', '.join(joined[:3])}{', ...' if len(joined) > 3 else ''})"] if joined else []
    if not found:
        return None
    return Alignment(order=order,
                     why=(f"the source has {' and '.join(found)}, whose channels a selection of the strongest first "
                          "would take across their groups or branches: units are selected evenly spaced (as Weight "
                          "Selection)"))


def grouped_convolutions(model: OnnxModel) -> list[str]:
    """The convolutions of several groups with more than one input channel each (ResNeXt's,
    RegNet's; not depthwise ones): a channel order must keep their groups whole, and a
    selection of the leading units of an order would take whole groups and leave others."""
    out = []
    shapes = {t.name: list(t.dims) for t in model.proto.graph.initializer}
    for n in model.proto.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1:
            groups = int(attribute(n, "group", 1))
            w = shapes.get(n.input[1])
            per_group = (w[1] if n.op_type == "Conv" else w[0] // groups) if w and len(w) > 1 else 0
            if groups > 1 and per_group > 1:
                out.append(n.name or n.output[0])
    return out


def outputs_kept(source: OnnxModel, target: OnnxModel) -> frozenset[tuple[str, int]]:
    """(source graph output, axis) that the target's output in the same place holds at least
    as long: the target can give that output's units back in the source's order."""
    def dims(m: OnnxModel) -> list[tuple[str, list[int]]]:
        return [(o.name, [d.dim_value if d.HasField("dim_value") else 0 for d in o.type.tensor_type.shape.dim])
                for o in m.proto.graph.output]
    kept = set()
    for (name, a), (_, b) in zip(dims(source), dims(target)):
        kept.update((name, k) for k, (x, y) in enumerate(zip(a, b)) if x and y and y >= x)
    return frozenset(kept)


def _produces(s: Slot | None, k: int) -> bool:
    """Whether axis ``k`` (unsplit canonical) of a slot's tensor makes the space's values: a
    projection's or convolution's out axis, or the width of a table added into it. A
    permutation preserves the function only if what produces the space is permuted too."""
    if s is None or s.layout is None:
        return False
    if s.role in _UNIT_ROLES:
        return k == (1 if s.layout.parts > 1 else 0)
    return s.role in ("embedding", "token", "parameter")


def _stored_axis(s: Slot, k: int) -> int | None:
    """The stored axis of a slot's unsplit canonical axis ``k`` (None for a parts axis, or
    for an axis of a view that does not read the stored tensor's units one to one)."""
    lay = s.layout
    assert lay is not None
    if lay.parts > 1:
        if k == 0:
            return None
        k -= 1
    if k >= len(lay.perm):
        return None
    return lay.perm[k] if s.view is None else s.view.stored_axis(tuple(s.shape), lay.perm[k])


def ordered_blocks(al: Alignment, gs: GraphSlots, templates: dict[str, list[list[int]]]) -> dict[str, tuple[int, ...]]:
    """Per template (key -> its slots per block) and canonical axis, how many of its blocks hold
    that axis in the alignment's order. An axis no aligned space covers (a skipped space:
    Llama's query and key, whose reader is a rotary embedding) keeps the source's order, and so
    do the heads of a space whose heads stayed in place: a selection's leading units are the
    strongest only where the axis was ordered, and the plan says which. A bias the source lacks
    is zero, in any order."""
    member = {m: sp for sp in al.spaces for m in sp.members}
    return {key: _ordered_axes(member, gs, blocks) for key, blocks in templates.items()}


def _ordered_axes(member: dict[tuple[str, int], SpaceOrder], gs: GraphSlots, blocks: list[list[int]]) -> tuple[int, ...]:
    counts: list[int] = []
    for block in blocks:
        s = gs.slots[block[0]]
        lay = s.layout
        assert lay is not None
        states = [False] if lay.parts > 1 else []      # a fused projection's parts never move
        off = len(states)
        for k in range(len(lay.perm)):
            ax = None if s.absent else _stored_axis(s, k + off)
            sp = member.get((s.initializer, ax)) if ax is not None else None
            if k < len(lay.heads) and lay.heads[k]:
                states += [s.absent or (sp is not None and sp.moves_heads()), s.absent or sp is not None]
            else:
                states.append(s.absent or (sp is not None and sp.moves_heads()))
        counts = [c + int(x) for c, x in zip(counts, states)] if counts else [int(x) for x in states]
    return tuple(counts)


ORDERS = ("smooth",) + LEADING_ORDERS


def plan_alignment(model: OnnxModel, gs: GraphSlots, across_depth: bool = False, order: str = "smooth",
                   kept_outputs: frozenset[tuple[str, int]] = frozenset()) -> Alignment:
    """The permutation of every channel space that can be aligned. ``across_depth``: a block's
    spaces are also matched to the same spaces of the block before it (``_match_depth``).
    ``order`` 'smooth' is spectral seriation; 'importance' sorts units by descending importance
    (``_importance``), for a selection of the leading units, and 'diverse' by importance
    discounted by what the units before already express (``seriation.diverse_key``; a space
    normalized per unit, a BatchNorm's, by importance alone), an attention's heads too
    (``_pair_heads``; ``SpaceOrder.heads_in_place`` undoes that). ``kept_outputs``: (graph
    output, axis) of the source that the target holds whole (``outputs_kept``): a space whose
    units such an output holds stays in order, or the target's output would come permuted."""
    if order not in ORDERS:
        raise ValueError(f"unknown alignment order {order!r}; use one of {', '.join(ORDERS)}")
    if across_depth and order != "smooth":
        raise ValueError("matching along depth reorders a block's units, which would undo an importance order")
    flow = dimension_flow(model.proto, gs)
    by_init: dict[str, Slot] = {}
    index: dict[str, int] = {}
    for i, s in enumerate(gs.slots):
        if s.role is not None and not s.absent:
            by_init.setdefault(s.initializer, s)
            index.setdefault(s.initializer, i)
    absent = {s.initializer for s in gs.slots if s.absent}  # zero biases a layer lacks: nothing to permute
    if order in LEADING_ORDERS:
        declined = _unorderable(model, flow, by_init, order)
        if declined is not None:
            return declined
    inner = {init: s.layout.inner_groups or s.layout.heads[0] for init, s in by_init.items()
             if s.layout is not None and s.layout.interleaved}
    heads_split = {name.rsplit("/", 1)[0] for axes in flow.slot_axes.values() for name in axes
                   if name and "/" in name}
    out = Alignment(order=order)
    arrays: dict[str, np.ndarray] = {}
    vectors: dict[str, tuple[np.ndarray, tuple[int, int] | None, int | None]] = {}  # id -> (units, heads, producer)
    headed: list[_Headed] = []  # leading orders, split by heads
    found: list[_Found] = []

    def members_of(sp: ChannelSpace) -> tuple[list[tuple[str, int]], dict[str, int], str]:
        """(initializer, stored axis) of every tensor indexing ``sp``, the fused ones' parts, or why not."""
        members: list[tuple[str, int]] = []
        parts: dict[str, int] = {}
        why = ""
        for init, k in sp.axes:
            if why:
                break
            if init in absent:
                continue
            s = by_init.get(init)
            if s is None or s.quant is not None or s.layout is None or model.constant_node(init) is not None:
                why = f"{init} is not a plain stored tensor"
                break
            s = unsplit(s)  # the flow's axes are whole (heads merged back)
            assert s.layout is not None
            kinds = s.layout.kinds[1:] if s.layout.parts > 1 else s.layout.kinds
            kk = k - 1 if s.layout.parts > 1 else k
            if kk < len(kinds) and kinds[kk] == INDEX:
                why = "indexes a vocabulary, classes or the features a model returns"
                break
            if kk < len(kinds) and kinds[kk] == CUT:
                why = f"{init}: the graph cuts this output into pieces its layout does not express"
                break
            ax = _stored_axis(s, k)
            if ax is None:
                why = (f"{init}: a fused projection's parts" if s.view is None else
                       f"{init} is read through a view that does not take its units one to one")
                break
            if (init, ax) not in members:
                members.append((init, ax))
                if s.layout.parts > 1 and k == 1:  # the out axis within each part
                    parts[init] = s.layout.parts
        return members, parts, why

    for sp in flow.spaces:
        why = ""
        members: list[tuple[str, int]] = []
        parts: dict[str, int] = {}
        if sp.size < 3:
            why = "fewer than 3 units"
        elif sp.id in heads_split and _heads(sp) is None:
            why = "split by attention heads in more than one way"
        elif not any(by_init.get(init) is not None and by_init[init].role in _UNIT_ROLES for init, _ in sp.axes):
            why = "no projection or convolution indexes it (a position or token axis, not units)"
        elif not any(_produces(by_init.get(init), k) for init, k in sp.axes):
            why = ("none of its weights produces its values (a graph input's channels, or one part of a fused "
                   "projection, which is not aligned)")
        if not why:
            members, parts, why = members_of(sp)
        if why or not members:
            out.skipped[sp.id] = why or "no member"
            continue
        found.append(_Found([sp.id], sp, members, parts, _heads(sp) if sp.id in heads_split else None))
    def read(init: str) -> np.ndarray:
        if init not in arrays:
            arrays[init] = np.asarray(model.array(init))
        return arrays[init]

    for f in _tied(found, out.skipped, _copies(found, read)):
        sp, members, parts, split = f.sp, f.members, f.parts, f.split
        sid = "+".join(f.ids)
        for init, _ in members:
            read(init)
        folded = [(_parts_folded(arrays[init], ax, parts.get(init, 1), inner.get(init, 0)),
                   ax if init not in parts else 0) for init, ax in members]
        inside = {init: inner[init] for init in parts if init in inner}
        groups = split[0] if split else 1  # heads: units move within their head
        roles = [_member_role(by_init[init], ax) for init, ax in members]
        if "consumer" not in roles and any(a in f.ids for axes in flow.outputs.values() for a in axes):
            for x in f.ids:
                out.skipped[x] = "the model's output units, which no later layer reads (classes)"
            continue
        makers = {init for (init, _), r in zip(members, roles) if r == "producer" and by_init[init].role in _UNIT_ROLES}
        if "consumer" not in roles and len(makers) == 1:  # Llama's q, k and v: the check would only fail, slowly
            for x in f.ids:
                out.skipped[x] = ("one projection makes it and no weight reads it: what reads it (an attention "
                                  "product, a rotary embedding) would see its units moved")
            continue
        # a graph output holding a width later layers also read (an embedding model's output)
        outputs = [(name, k) for name, axes in flow.outputs.items() for k, a in enumerate(axes)
                   if a in f.ids] if "consumer" in roles else []
        if any(o in kept_outputs for o in outputs):
            for x in f.ids:
                out.skipped[x] = ("a graph output holds its units and the target keeps all of them: ordering "
                                  "them would permute that output")
            continue
        if order in LEADING_ORDERS:
            score = _importance(folded, roles)
            key = (diverse_key(unit_gram([m for m, r in zip(folded, roles) if r != "statistic"]), groups)
                   if order == "diverse" and "statistic" not in roles else score)
            out.spaces.append(SpaceOrder(sid, sp.size, members, importance_order(key, groups),
                                         parts=parts, inner=inside, outputs=outputs, heads=split[0] if split else 0))
            if split:
                headed.append(_Headed(out.spaces[-1], score, key, split, roles))
            continue
        vec = _unit_vectors(folded, sp.size)
        perm, before, after = grouped_order(vec, groups)
        out.spaces.append(SpaceOrder(sid, sp.size, members, perm, before, after, parts, inside, outputs=outputs,
                                     heads=split[0] if split else 0))
        if across_depth:  # kept for matching along depth only (a DeiT-B's spaces hold ~0.8 GB of them)
            producer = next((index[init] for init, k in sp.axes if init in index and _produces(by_init[init], k)), None)
            vectors[sid] = (vec.astype(np.float32), split, producer)
    if across_depth:
        _match_depth(out, vectors, find_structure(gs, model.proto))
    by_id = {sp.id: sp for sp in flow.spaces}
    tables: dict[str, tuple[str, list[tuple[str, int]] | None]] = {}
    for h in headed:  # a heads axis other tensors index too: a relative-position bias table
        so, split = h.space, h.split
        ids = {t[0] for t in flow.factor_spaces.get(so.id.split("+")[0], ()) if len(t) == 2 and t[0] is not None
               and by_id[t[0]].size == split[0]}
        if len(ids) == 1:
            hid = ids.pop()
            members, parts, why = members_of(by_id[hid])
            tables[so.id] = (hid, members if members and not parts and not why else None)
        elif ids:
            tables[so.id] = ("+".join(sorted(ids)), None)
    for table in _pair_heads(headed, tables):
        out.spaces.append(table)
        out.skipped.pop(table.id, None)
    return out


@dataclass
class _Found:
    """A space (or spaces sharing a tensor, ``_tied``) that can be aligned, before its order."""

    ids: list[str]
    sp: ChannelSpace                          # the first of them (length, axes)
    members: list[tuple[str, int]]            # (initializer, stored axis)
    parts: dict[str, int]
    split: tuple[int, int] | None             # (heads, head size)


def _copies(found: list[_Found], read) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Axes of two stored tensors that are one parameter stored twice (equal values, or one
    the transpose of the other: the dynamo exporter's optimizer stores a tied embedding and
    output layer as a table and its transposed copy): (initializer, axis) pairs that index the
    same units. Trained values of varied entries are never equal by chance. ``read``: an
    initializer's array (the alignment's cache: each is read once)."""
    by_key: dict[tuple, list[str]] = {}
    for init in dict.fromkeys(m[0] for f in found for m in f.members):
        a = read(init)
        if a.ndim != 2 or a.dtype.kind != "f" or not np.ptp(a) > 0:
            continue
        key = (a.size, float(np.sum(a, dtype=np.float64)), float(np.sum(np.abs(a), dtype=np.float64)))
        by_key.setdefault(key, []).append(init)
    out = []
    for names in by_key.values():
        for i, x in enumerate(names):
            a = read(x)
            for y in names[i + 1:]:
                b = read(y)
                if a.shape == b.shape and np.array_equal(a, b):
                    out += [((x, 0), (y, 0)), ((x, 1), (y, 1))]
                elif a.shape == b.shape[::-1] and np.array_equal(a, b.T):
                    out += [((x, 0), (y, 1)), ((x, 1), (y, 0))]
    return out


def _tied(found: list[_Found], skipped: dict[str, str],
          copies: list[tuple[tuple[str, int], tuple[str, int]]] = ()) -> list[_Found]:
    """Spaces that permute one stored tensor along one axis are one space for a permutation
    (a tied table: T5's encoder and decoder residual widths read one embedding, which is also
    its output layer), and so are spaces that permute two ``copies`` of one parameter (whose
    copies would otherwise differ, and a torch module holds one): merged when their lengths
    and heads agree, else none is aligned."""
    uf = UnionFind()
    for a, b in copies:
        uf.union(("tensor", a), ("tensor", b))
    for i, f in enumerate(found):
        for m in f.members:
            uf.union(("space", i), ("tensor", m))
    groups: dict[tuple, list[_Found]] = {}
    for i, f in enumerate(found):
        groups.setdefault(uf.find(("space", i)), []).append(f)
    out = []
    for fs in groups.values():  # in the order of their first space
        if len(fs) == 1:
            out.append(fs[0])
            continue
        ids = [x for f in fs for x in f.ids]
        if len({f.sp.size for f in fs}) > 1 or len({f.split for f in fs}) > 1:
            for x in ids:
                skipped[x] = f"shares a tensor with {', '.join(i for i in ids if i != x)}, of another length or heads"
            continue
        out.append(_Found(ids, fs[0].sp, list(dict.fromkeys(m for f in fs for m in f.members)),
                          {k: v for f in fs for k, v in f.parts.items()}, fs[0].split))
    return out


@dataclass
class _Headed:
    """A space split by heads, ordered strongest first: ``score`` its units' importance (heads
    are ordered by it), ``key`` the order within each head (the importance, or ``diverse_key``)."""

    space: SpaceOrder
    score: np.ndarray
    key: np.ndarray
    split: tuple[int, int]
    roles: list[str]


def _pair_heads(headed: list[_Headed],
                tables: dict[str, tuple[str, list[tuple[str, int]] | None]]) -> list[SpaceOrder]:
    """Heads by importance: an attention's query/key space (its members all produce it) and
    the value/output space that follows it (the value produces it, the output projection
    reads it) are one attention's heads, so they move together: both spaces take one head
    order, by the heads' summed shares of the two importances, and within each head their
    units as before. So a selection of the leading heads keeps the strongest ones. Pairing by
    the flow's order is a reading of the graph, not a proof: ``validation.equivalence`` checks
    the permuted source and puts the heads back in place when it does not hold. A fused qkv
    projection's space holds the whole attention (its three parts and the output projection's
    input): its heads are ordered by its own importance.

    ``tables``: a query/key space -> the space of its heads axis and that space's tensors (a
    relative-position bias table added to the scores; None when they cannot be permuted).
    The attentions sharing a table (T5's layers all add their stack's one table) take one
    head order, from all their shares, and the table is permuted with it (returned: one
    space per table); an attention whose table cannot be permuted keeps its heads in place."""
    attentions: list[tuple[list[_Headed], int]] = []
    pending: _Headed | None = None
    for h in headed:
        if h.space.parts and "consumer" in h.roles:  # a fused qkv's parts and the output projection: the whole attention
            attentions.append(([h], h.split[0]))
            continue
        if "consumer" not in h.roles:     # a query/key space
            pending = h
            continue
        if pending is None or pending.split != h.split:
            continue
        attentions.append(([pending, h], h.split[0]))
        pending = None
    together: dict[tuple, list[tuple[list[_Headed], int]]] = {}
    for n, att in enumerate(attentions):
        table = tables.get(att[0][0].space.id)
        if table is not None and table[1] is None:
            continue
        together.setdefault(("table", tuple(table[1])) if table else ("alone", n), []).append(att)
    out = []
    for g, (key, atts) in enumerate(together.items()):
        heads = atts[0][1]
        if any(n != heads for _, n in atts):
            continue
        order = group_order([h.score for spaces, _ in atts for h in spaces], heads)
        for spaces, _ in atts:
            for h in spaces:
                sp = h.space
                sp.in_place, sp.order, sp.heads_group = sp.order, importance_order(h.key, heads, order), g
            spaces[0].space.heads_with, spaces[-1].space.heads_with = spaces[-1].space.id, spaces[0].space.id
        if key[0] == "table":
            tid = tables[atts[0][0][0].space.id][0]
            out.append(SpaceOrder(tid, heads, list(key[1]), order, in_place=np.arange(heads), heads_group=g,
                                  table=True))
    return out


def _member_role(s: Slot, ax: int) -> str:
    """What a member tensor is to its space's units: 'statistic' (a BatchNorm's running mean or
    variance), 'norm' (a normalization's scale or bias), 'consumer' (a projection or
    convolution reading the units: its input axis), 'producer' (what makes the units' values)."""
    if s.role in ("norm.mean", "norm.var"):
        return "statistic"
    if s.role in ("norm.scale", "norm.bias"):
        return "norm"
    u = unsplit(s)
    if u.role in _UNIT_ROLES and u.layout is not None:
        k = list(u.layout.perm).index(ax) + (1 if u.layout.parts > 1 else 0)
        if not _produces(u, k):
            return "consumer"
    return "producer"


def _importance(members: list[tuple[np.ndarray, int]], roles: list[str]) -> np.ndarray:
    """Each unit's importance, from its share of every member tensor (``seriation.unit_shares``:
    every tensor has a say, whatever its scale).

    Running statistics never count: they describe the data, not what the unit contributes
    (counting a BatchNorm's variance ranked channels by the scale the normalization removes,
    and a selection of them trained worse than evenly spaced ones). In a space normalized per
    unit (a BatchNorm, known by its statistics) a unit's output is set by its normalizations'
    scale and bias whatever the weights that produce it (normalized away): its importance is
    its share of those, times its share of the consumers' weights, what reaches the next layers
    (network slimming's criterion, with the consumers). Elsewhere: the sum of the unit's shares
    of every tensor. (docs/results.md measures both rules.)"""
    n = members[0][0].shape[members[0][1]]
    if "statistic" in roles:
        out = sum((unit_shares(a, ax) for (a, ax), r in zip(members, roles) if r == "norm"), np.zeros(n))
        consumers = [unit_shares(a, ax) for (a, ax), r in zip(members, roles) if r == "consumer"]
        return out * sum(consumers) if consumers else out
    return sum((unit_shares(a, ax) for (a, ax), r in zip(members, roles) if r != "statistic"), np.zeros(n))


def _match_depth(al: Alignment, vectors: dict, st: Structure) -> None:
    """Depth alignment: the spaces a stage's blocks produce with the same layer (each block's
    MLP hidden width, its attention spaces) are put in corresponding orders, each block's units
    matched one to one to the (aligned) units of the block before it (the assignment of
    greatest total cosine similarity; within heads for spaces split by heads), so that a
    resampling along depth that mixes blocks mixes units that correspond. The first block keeps
    its smooth order."""
    where = {i: (tpl.key, b) for tpl in st.templates.values() if tpl.stage
             for b, slots in enumerate(tpl.blocks) for i in slots}
    groups: dict[str, list[tuple[int, SpaceOrder]]] = {}
    for sp in al.spaces:
        producer = vectors[sp.id][2]
        if producer in where:
            key, b = where[producer]
            groups.setdefault(key, []).append((b, sp))
    for chain in groups.values():
        chain.sort(key=lambda x: x[0])
        if len(chain) < 2 or len({sp.size for _, sp in chain}) != 1 or len({vectors[sp.id][1] for _, sp in chain}) != 1:
            continue
        prev = chain[0][1]
        for _, sp in chain[1:]:
            vec, split, _ = vectors[sp.id]
            if vec.shape != vectors[prev.id][0].shape:
                break
            ref = unit_rows(vectors[prev.id][0][prev.order])
            h, d = split if split is not None else (1, sp.size)
            order = np.empty(sp.size, dtype=np.int64)
            for j in range(h):
                sim = ref[j * d:(j + 1) * d] @ unit_rows(vec[j * d:(j + 1) * d]).T
                _, cols = scipy.optimize.linear_sum_assignment(-sim)
                order[j * d:(j + 1) * d] = j * d + cols
            sp.order, sp.after = order, roughness(vec[order])
            sp.depth_matched = True
            prev = sp


def part_rows(parts: int, size: int, heads: int = 0) -> np.ndarray:
    """[parts, size]: the stored row of each part's unit along a fused projection's out axis,
    the parts outermost (q|k|v), or inside each of ``heads`` heads (stored (heads, parts,
    head_dim): Bloom, GPT-NeoX)."""
    if not heads:
        return np.arange(parts * size).reshape(parts, size)
    d = size // heads
    u = np.arange(size)
    return (u // d)[None, :] * parts * d + np.arange(parts)[:, None] * d + (u % d)[None, :]


def _parts_folded(a: np.ndarray, ax: int, parts: int, heads: int = 0) -> np.ndarray:
    """A fused projection's tensor with its parts moved off the space's axis: [size, parts * rest]
    (the unit's rows in every part), the space's axis first."""
    if parts == 1:
        return a
    b = np.moveaxis(a, ax, 0)
    size = b.shape[0] // parts
    return b[part_rows(parts, size, heads).T.reshape(-1)].reshape(size, -1)


def _heads(sp: ChannelSpace) -> tuple[int, int] | None:
    """(heads, head size) of a space split one way into heads of at least 3 units."""
    splits = {tuple(f) for f in sp.factors if len(f) == 2}
    if len(splits) != 1 or len(sp.factors) != 1:
        return None
    h, d = next(iter(splits))
    return (h, d) if h * d == sp.size and d >= 3 else None


def _unit_vectors(members: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """Each unit's weight vector [n, <= MAX_COLUMNS]: every member's entries for the unit
    (evenly spaced columns of the larger ones, their share of the total), each member scaled
    to unit norm so that a small tensor (a bias, a norm's scale) has a say beside a matrix."""
    total = sum(a.size // n for a, _ in members)
    rows = []
    for a, ax in members:
        m = a.size // n
        k = max(1, min(m, MAX_COLUMNS * m // max(total, 1)))
        norm = max(float(np.linalg.norm(a.reshape(-1).astype(np.float64))), 1e-30)
        if a.ndim == 2 and k < m:  # sample the other axis first: no copy of the whole matrix
            a = np.take(a, np.linspace(0, a.shape[1 - ax] - 1, k).astype(np.int64), axis=1 - ax)
        b = np.moveaxis(a, ax, 0).reshape(n, -1)
        if b.shape[1] > k:
            b = b[:, np.linspace(0, b.shape[1] - 1, k).astype(np.int64)]
        rows.append(np.asarray(b, np.float64) / norm)
    return np.concatenate(rows, axis=1)


def write_aligned(model: OnnxModel, alignment: Alignment, folder: Path, only: set[str] | None = None) -> OnnxModel:
    """A copy of ``model`` in ``folder`` with the spaces of ``alignment`` (or of ``only``) permuted."""
    new: dict[str, np.ndarray] = {}
    for sp in alignment.spaces:
        if only is not None and sp.id not in only:
            continue
        for init, ax in sp.members:
            a = new[init] if init in new else np.array(model.array(init))
            n = sp.parts.get(init, 1)
            idx = sp.order
            if n > 1:  # each part's units take the order: the new row of a part's unit u is its old row order[u]
                rows = part_rows(n, sp.size, sp.inner.get(init, 0))
                idx = np.empty(n * sp.size, dtype=np.int64)
                idx[rows.reshape(-1)] = rows[:, sp.order].reshape(-1)
            new[init] = np.take(a, idx, axis=ax)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "aligned.onnx"
    save_model(model, path, new)
    return load_model(path)
