"""Stages, blocks and templates of a graph, found from its topology alone.

The weight slots are grouped into *units*, one per layer: the slots of one consuming node,
with a bias Add joined to its projection. The units are taken in graph order, which is
topological. Each unit has a signature that carries no names and no widths: its roles,
axis kinds and ranks, plus the kernel size, strides, dilations and groups of a
convolution.

A *stage* is a maximal run of repeated blocks. Scanning left to right, at each unit we
look for the shortest period p whose next p units repeat it exactly, shapes included,
and extend the run as far as it goes. Units outside any run are *loose*: the stem before
the stages, the head after them, and the irregular first blocks of CNN stages.

Templates are keyed by signatures and occurrence counts, never by names:
``S<block signature hash>#<occurrence>/u<unit>:<role>`` inside a stage, and
``U<unit signature hash>#<occurrence>:<role>`` for loose units. So a source and a target of
one family, exported by different tools and with different widths and depths, get the
same keys. Names and scopes are kept as evidence only (``graph.Slot.module``).

Occurrences count by *place in the dataflow*, not by position in the node list: exporters
keep the node list topological but not stable. tf2onnx, for one, emits the side branches of
a CNN (a 1x1 conv reading the end of each stage, each a graph output) after the whole
backbone when the convs have a bias and each right after its stage when they have none, so
a trained source and a fresh target of one design list them in different orders. So
occurrences count apart for each set of graph outputs a unit reaches: a side branch, an
encoder beside a decoder, a second head each count on their own, tagged with the
positions of those outputs (``U<hash>@0,3#<occurrence>``; no tag for units that reach
every output, as in a plain chain). Within one such group the order is the longest chain
of weighted units from the graph inputs (depth), then the longest chain down to an output,
then, for what ties (units side by side feeding the same things, as q, k and v), the
node list. Widths do not enter, and a stage of another depth moves every later unit of
its group alike. Stages are numbered, and segments listed, the same way (``_places``).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from front_onnx.analysis.slots import BIAS_ROLES, GraphSlots


@dataclass
class Template:
    """One role inside a stage's block; ``blocks[i]`` lists the slots of block i."""

    key: str                         # stable id used to match source and target
    stage: str                       # stage id, '' for loose units
    role: str
    blocks: list[list[int]] = field(default_factory=list)  # indices into GraphSlots.slots
    evidence: str = ""
    ends_branch: bool = False        # its layer is the last of a residual branch, in every block
    output_norm: bool = False        # the block's last layer is a norm after its residual Add (post-norm) or
    #                                  ending its residual branch (a ResNet's bn2): it scales what the block passes on

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass
class Segment:
    """One stage or loose layer, in dataflow order (module docstring): what two structures are aligned by."""

    kind: str                        # 'stage' or 'layer'
    sig: str                         # 'S<hash>' / 'U<hash>': equal for the same structure
    count: int                       # blocks in a stage, 1 for a layer
    roles: list[str]                 # the roles of one block, in order
    key: str = ""                    # the prefix of its template keys ('S<hash>#<occurrence>', 'U<hash>#<occurrence>')
    units: list[str] = field(default_factory=list)   # per unit of one block: its signature hash
    coarse: list[str] = field(default_factory=list)  # ... the same without strides and dilations
    starts: list[bool] = field(default_factory=list)  # ... whether a residual block starts at that unit
    shortcut: list[bool] = field(default_factory=list)  # ... whether it is on a projection shortcut

    def describe(self) -> str:
        what = ", ".join(self.roles[:6]) + (", ..." if len(self.roles) > 6 else "")
        if self.kind == "stage":
            return f"a stage of {self.count} blocks of [{what}]"
        return f"a layer [{what}]"


@dataclass
class Structure:
    templates: dict[str, Template]
    unplaced: dict[int, str]         # slot index -> why it has no template
    stages: dict[str, list[str]]     # stage id -> block labels, in depth order
    segments: list[Segment] = field(default_factory=list)


@dataclass
class _Unit:
    anchor: int
    slots: list[int]
    sig: tuple                       # no names, no widths
    shapes: tuple

    @property
    def coarse(self) -> tuple:
        """The signature without a convolution's strides and dilations: the first block of a
        CNN stage (strided) and the blocks that repeat it (not) have the same coarse units."""
        parts, conv = self.sig
        if not conv:
            return self.sig
        kernel, attrs = conv
        return parts, (kernel, tuple(a for a in attrs if a[0] not in ("strides", "dilations")))


def _hash(obj: object) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:8]


def _units(gs: GraphSlots, model: onnx.ModelProto) -> list[_Unit]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(gs.slots):
        if s.role is not None:
            groups[s.anchor].append(i)
    units = []
    for anchor in sorted(groups):
        # by role first: the same layer decomposed differently (Gemm vs MatMul + Add, LayerNorm
        # vs its decomposition) gives its slots in the same order
        idx = sorted(groups[anchor], key=lambda i: (gs.slots[i].role or "", gs.slots[i].consumer_input))
        node = model.graph.node[anchor]
        parts = []
        for i in idx:
            s = gs.slots[i]
            assert s.layout is not None
            if s.role not in BIAS_ROLES:  # a bias may be absent (zero, dropped by the exporter): not structure
                parts.append((s.role, s.layout.kinds, len(s.shape), tuple(bool(h) for h in s.layout.heads)))
        conv = ()
        if node.op_type in ("Conv", "ConvTranspose"):
            w = next((gs.slots[i] for i in idx if gs.slots[i].role == "conv.weight"), None)
            attrs = {a.name: tuple(onnx.helper.get_attribute_value(a)) if a.type == onnx.AttributeProto.INTS
                     else onnx.helper.get_attribute_value(a) for a in node.attribute
                     if a.name in ("strides", "dilations", "group")}
            kernel = w.layout.canonical_shape(w.shape)[2:] if w is not None and w.layout is not None else ()
            if w is not None and attrs.get("group", 1) > 1 and w.layout is not None \
                    and w.layout.canonical_shape(w.shape)[1] == 1:
                attrs["group"] = "depthwise"  # one group per channel: a property of the layer, not a width
            conv = (kernel, tuple(sorted(attrs.items())))
        units.append(_Unit(anchor, idx, (tuple(parts), conv),
                           tuple(gs.slots[i].shape for i in idx if gs.slots[i].role not in BIAS_ROLES)))
    return units


def _residual_adds(model: onnx.ModelProto, anchors: set[int]) -> list[tuple[int, int, int]]:
    """(Add node, node that made its skip, node that made its branch) of each residual Add:
    one input (the skip) feeds the other (the branch) through at least one weighted layer
    (``anchors``); the skip may be a graph input (made by "node" -1). Walking back from the
    branch, an earlier residual Add is passed through its skip only: an attention mask that
    every block adds to its scores reaches a later block's scores through the earlier blocks'
    branches, and is no skip. An Add of a value and its own activation terms (GELU's tanh
    form) has no layer between them, and is none either."""
    nodes = model.graph.node
    made = {o: k for k, n in enumerate(nodes) for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    made.update({i.name: -1 for i in model.graph.input if i.name not in made and i.name not in weights})
    out = []
    skips: dict[int, str] = {}  # residual Add -> its skip value
    for k, n in enumerate(nodes):
        if n.op_type != "Add" or len(n.input) != 2 or not all(x in made for x in n.input):
            continue
        skip_value, branch_value = sorted(n.input, key=made.__getitem__)
        skip, branch = made[skip_value], made[branch_value]
        if skip == branch:
            continue
        # walk back from the branch, not below the skip: does it read the skip, through a layer?
        seen, todo, reads, layer = set(), [branch], False, False
        while todo and not (reads and layer):
            j = todo.pop()
            if j in seen:
                continue
            seen.add(j)
            layer |= j in anchors
            for x in [skips[j]] if j in skips else nodes[j].input:
                reads |= x == skip_value
                if made.get(x, -1) > skip:
                    todo.append(made[x])
        if reads and layer:
            out.append((k, skip, branch))
            skips[k] = skip_value
            continue
        reach_a, free_a = _upstream(nodes, made, skips, anchors, skip_value)
        reach_b, free_b = _upstream(nodes, made, skips, anchors, branch_value)
        common = reach_a & reach_b
        if common:  # a projection shortcut: both sides computed from one value, each through a layer
            v = max(common, key=made.__getitem__)
            if v not in free_a and v not in free_b:
                out.append((k, made[v], branch))
                skips[k] = v
    return out


def _shortcut_layers(model: onnx.ModelProto, residual: list[tuple[int, int, int]], anchors: set[int]) -> set[int]:
    """Layers (anchor nodes) on a projection shortcut: of the two paths from the value a
    residual block starts from to its Add, both through layers, the one with fewer layers
    (a ResNet's downsampling convolution and its norm, beside three convolutions). Such a
    layer is never paired with a main branch's: a target with a shortcut projection the
    source lacks leaves it."""
    nodes = model.graph.node
    made = {o: k for k, n in enumerate(nodes) for o in n.output}

    def layers(j: int, start: int) -> set[int]:
        todo, seen, path = [j], set(), set()
        while todo:
            j = todo.pop()
            if j in seen or j <= start:
                continue
            seen.add(j)
            if j in anchors:
                path.add(j)
            todo.extend(made[x] for x in nodes[j].input if x in made)
        return path

    out: set[int] = set()
    for k, start, _ in residual:
        sides = [layers(made[x], start) for x in nodes[k].input if made.get(x, -1) > start]
        if len(sides) == 2 and all(sides) and len(sides[0]) != len(sides[1]) and not sides[0] & sides[1]:
            out |= min(sides, key=len)
    return out


def _upstream(nodes, made: dict[str, int], skips: dict[int, str], anchors: set[int], value: str,
              limit: int = 256) -> tuple[set[str], set[str]]:
    """Values ``value`` is computed from, walking back no further than an earlier residual
    Add (its output is the last value taken), and those of them it reaches on some path
    without passing a weighted layer."""
    reach: set[str] = set()
    free: set[str] = set()
    todo, seen = [(value, True)], set()
    while todo and len(seen) < limit:
        v, no_layer = todo.pop()
        if (v, no_layer) in seen or v not in made or made[v] < 0:
            continue
        seen.add((v, no_layer))
        reach.add(v)
        if no_layer:
            free.add(v)
        j = made[v]
        if j in skips:
            continue
        todo.extend((x, no_layer and j not in anchors) for x in nodes[j].input if x)
    return reach, free


def _after_residual(units: list[_Unit], model: onnx.ModelProto, residual: list[tuple[int, int, int]]) -> set[int]:
    """Units whose layer reads a residual Add's output (``residual``: ``_residual_adds``): a
    post-norm block's norms."""
    nodes = model.graph.node
    adds = {nodes[k].output[0] for k, _, _ in residual}
    return {i for i, u in enumerate(units) if nodes[u.anchor].input and nodes[u.anchor].input[0] in adds}


def _block_starts(units: list[_Unit], residual: list[tuple[int, int, int]]) -> set[int]:
    """Units at which a residual block starts: for each residual Add, the first unit after
    the node that made the earlier input (the skip). Where a model repeats a block with no
    residual in it, these say where its copies begin."""
    anchors = [u.anchor for u in units]
    out: set[int] = set()
    for k, skip, _ in residual:
        first = next((i for i, a in enumerate(anchors) if a > skip), None)
        if first is not None and anchors[first] < k:
            out.add(first)
    return out


def _concat_starts(units: list[_Unit], model: onnx.ModelProto) -> set[int]:
    """Units at which a densely connected block starts: the first layer after a Concat of
    values that each come through a weighted layer (DenseNet's features, a U-Net's skip and
    upsampled paths; not a class token beside the patches). Such a block adds to what it
    reads instead of adding to it, so no residual Add marks it; a pair alignment then cuts a
    layer that one side lacks at these boundaries, not across two layers."""
    nodes = model.graph.node
    made = {o: k for k, n in enumerate(nodes) for o in n.output}
    anchors = {u.anchor for u in units}
    positions = [u.anchor for u in units]
    out: set[int] = set()
    for k, n in enumerate(nodes):
        ins = [x for x in n.input if x]
        if n.op_type != "Concat" or len(ins) < 2 or not all(x in made for x in ins):
            continue
        if all(any(made[v] in anchors for v in _upstream(nodes, made, {}, anchors, x)[0]) for x in ins):
            first = next((i for i, a in enumerate(positions) if a > k), None)
            if first is not None:
                out.add(first)
    return out


# Nodes that give zero for a zero from their one computed input (a reshape, a bias Add, a
# layer scale): walking back through them from a residual Add finds the branch's last layer.
_KEEPS_ZERO = {"Identity", "Dropout", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Mul",
               "Div", "Add"}


def _branch_ends(units: list[_Unit], model: onnx.ModelProto, residual: list[tuple[int, int, int]]) -> set[int]:
    """Units whose layer is the last of a residual branch: walking back from each residual
    Add's later input through ``_KEEPS_ZERO`` nodes with one computed input to a weighted
    unit. A branch whose last layer gives zero adds nothing, so its block is the identity
    (depth mode 'identity', ``method.materialize``)."""
    nodes = model.graph.node
    made = {o: k for k, n in enumerate(nodes) for o in n.output}
    unit_at = {u.anchor: i for i, u in enumerate(units)}
    out: set[int] = set()
    for _, _, k in residual:
        while k >= 0:
            if k in unit_at:
                out.add(unit_at[k])
                break
            computed = [x for x in nodes[k].input if x in made]
            if nodes[k].op_type not in _KEEPS_ZERO or len(computed) != 1:
                break
            k = made[computed[0]]
    return out


def _places(units: list[_Unit], model: onnx.ModelProto) -> list[tuple[tuple[int, ...], int, int, int]]:
    """Per unit, its place in the dataflow (module docstring): (positions of the graph
    outputs it reaches; weighted units on the longest path from the graph inputs to it,
    itself included; the same on the longest path from it to a graph output; its node)."""
    nodes = model.graph.node
    anchors = {u.anchor for u in units}
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for x in n.input:
            if x:
                consumers[x].append(i)
        for y in n.output:
            if y:
                producer[y] = i
    depth = [0] * len(nodes)
    for i, n in enumerate(nodes):  # the node list is topological (ONNX requires it)
        up = [depth[producer[x]] for x in n.input if x in producer and producer[x] < i]
        depth[i] = max(up, default=0) + (i in anchors)
    outputs = {o.name: k for k, o in enumerate(model.graph.output)}
    reach = [0] * len(nodes)   # bit k: graph output k is reached
    height = [0] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        r, h = 0, 0
        for y in nodes[i].output:
            if y in outputs:
                r |= 1 << outputs[y]
            for c in consumers.get(y, ()):
                if c > i:
                    r |= reach[c]
                    h = max(h, height[c])
        reach[i], height[i] = r, h + (i in anchors)
    return [(tuple(k for k in range(len(outputs)) if reach[u.anchor] >> k & 1), depth[u.anchor],
             height[u.anchor], u.anchor) for u in units]


def _dataflow_order(place: list[tuple]) -> list[int]:
    """Unit indices by depth, then outputs reached, height and node: the order of segments."""
    return sorted(range(len(place)), key=lambda u: (place[u][1], place[u][0], place[u][2], place[u][3]))


def _runs(units: list[_Unit], known: dict[str, int] | None = None,
          starts: set[int] | frozenset[int] = frozenset(), depths: list[int] | None = None,
          lone: frozenset[str] = frozenset()) -> list[tuple[int, int, int]]:
    """(start, period, count) of each repeated run, scanning left to right. At each unit a
    ``known`` block (block signature hash -> units; of this model's stages or a source's,
    several units long) that starts there is taken first, repeated as often as it goes,
    even once; else the shortest period whose next block repeats it exactly. A repeat must
    also repeat where residual blocks start (``starts``), and a block that holds such a
    start begins at one: a ResNet's basic block is two conv+norm pairs of one shape, and a
    period of one pair (or a period that begins at the stem's norm) would cut blocks apart,
    so that depth resampling pairs one block's second convolution with another's first. And
    in a residual network, single layers that feed one another (``depths``: weighted layers on
    the longest path from the inputs) inside a residual block are not repeated blocks, though
    their shapes agree: a square MLP's two projections, a narrow squeeze-excite's two
    convolutions and the projection after them (a stage would draw them all from one source
    layer). Layers side by side (q, k and v) are left as they were read."""
    full = [(u.sig, u.shapes) for u in units]

    def same_starts(i: int, p: int, k: int) -> bool:
        return all(((i + o) in starts) == ((i + b * p + o) in starts) for b in range(1, k) for o in range(p))

    sigs = [u.sig for u in units]
    blocks = sorted(((h, p) for h, p in (known or {}).items() if p >= 2), key=lambda x: -x[1])
    n, i, runs = len(units), 0, []
    while i < n:
        found = None
        for h, p in blocks:
            if i + p <= n and _hash(tuple(sigs[i:i + p])) == h:
                k = 1
                while i + (k + 1) * p <= n and full[i + k * p:i + (k + 1) * p] == full[i:i + p] \
                        and same_starts(i, p, k + 1):
                    k += 1
                found = (i, p, k)
                break
        for p in range(1, (n - i) // 2 + 1) if found is None else ():
            if p == 1 and depths and depths[i + 1] > depths[i] and \
                    ((starts and i not in starts) or _hash((units[i].sig,)) in lone):
                continue  # one layer feeding the next inside a residual block, or one the other model has once
            if full[i:i + p] == full[i + p:i + 2 * p] and same_starts(i, p, 2):
                k = 2
                while full[i:i + p] == full[i + k * p:i + (k + 1) * p] and same_starts(i, p, k + 1):
                    k += 1
                found = (i, p, k)
                break
        if found and i not in starts and any(i + o in starts for o in range(1, found[1])):
            found = None  # a block begins where a residual block does: this unit stays loose
        if found:
            runs.append(found)
            i += found[1] * found[2]
        else:
            i += 1
    return runs


def _layout_of(gs: GraphSlots, i: int) -> tuple:
    """A slot's axis kinds and canonical shape: what the blocks of a depth stack must share."""
    s = gs.slots[i]
    assert s.layout is not None
    return s.layout.kinds, s.layout.canonical_shape(tuple(s.shape))


def _by_role(gs: GraphSlots, unit: _Unit) -> dict[tuple[str, int], int]:
    """A unit's slots keyed by (role, occurrence of that role in the unit)."""
    out: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = defaultdict(int)
    for i in unit.slots:
        role = gs.slots[i].role or ""
        out[(role, seen[role])] = i
        seen[role] += 1
    return out


def single_layer_stages(st: Structure) -> frozenset[str]:
    """Block hashes of the stages whose blocks are one layer each."""
    return frozenset(h for h, p in stage_blocks(st.templates).items() if p == 1)


def stage_blocks(keys) -> dict[str, int]:
    """Block signature hash -> units per block, for the stages among template keys
    (``S<hash>[@<outputs>]#<occurrence>/u<unit>:<role>``): what a learngene's stages look like."""
    out: dict[str, int] = {}
    for key in keys:
        if key.startswith("S") and "/u" in key:
            h = key[1:key.index("#")].split("@")[0]
            unit = int(key[key.index("/u") + 2:key.index(":")])
            out[h] = max(out.get(h, 0), unit + 1)
    return out


def find_structure(gs: GraphSlots, model: onnx.ModelProto, known_blocks: dict[str, int] | None = None,
                   lone: frozenset[str] = frozenset()) -> Structure:
    """Group the weight slots of a graph into templates with depth stacks, from topology.
    ``known_blocks`` (block signature hash -> units per block, from a source's stages) lets
    a stage of a single block be recognized as one. ``lone``: hashes of single layers the
    other model of a pair does not repeat (``single_layer_stages``): layers of one of them
    that feed one another are not a stage here either, only layers whose shapes agree by
    chance (a narrow squeeze-excite's two convolutions and the projection after them)."""
    units = _units(gs, model)
    unplaced = {i: s.reason for i, s in enumerate(gs.slots) if s.role is None}
    templates: dict[str, Template] = {}
    stages: dict[str, list[str]] = {}
    in_run: set[int] = set()
    seen_stage: dict[str, int] = defaultdict(int)
    residual = _residual_adds(model, {u.anchor for u in units})  # once: starts, branch ends and norms read it
    starts, ends = _block_starts(units, residual), _branch_ends(units, model, residual)
    dense = _concat_starts(units, model)  # where a pair's alignment may cut, not where stages repeat
    shortcut = _shortcut_layers(model, residual, {u.anchor for u in units})
    after = _after_residual(units, model, residual)
    place = _places(units, model)
    depths = [p[1] for p in place]
    runs = _runs(units, starts=starts, depths=depths, lone=lone)
    # a block seen as a stage here, or in the source, is looked for first, so that a lone copy
    # of it is a one-block stage (on both sides alike: a source and a target of one
    # architecture agree) and no shorter period inside it (q, k, v) takes its place
    known = {_hash(tuple(u.sig for u in units[start:start + p])): p for start, p, _ in runs}
    known.update(known_blocks or {})
    # runs are found along the node list; stages, segments and occurrences are then taken by
    # their place in the dataflow (module docstring)
    rank = {u: n for n, u in enumerate(_dataflow_order(place))}
    full = tuple(sorted({k for p in place for k in p[0]}))  # the outputs weights reach

    def group(u: int) -> str:
        return "" if place[u][0] == full else "@" + ",".join(map(str, place[u][0]))

    runs = sorted(_runs(units, known, starts, depths, lone), key=lambda r: rank[r[0]])
    run_at = {start: (p, k) for start, p, k in runs}
    firsts: list[int] = []
    u = 0
    while u < len(units):
        firsts.append(u)
        u += run_at[u][0] * run_at[u][1] if u in run_at else 1
    segments: list[Segment] = []
    occurrences: dict[str, int] = defaultdict(int)
    for u in sorted(firsts, key=rank.__getitem__):
        p, k = run_at.get(u, (1, 1))
        block = units[u:u + p]
        sig = ("S" + _hash(tuple(x.sig for x in block))) if u in run_at else ("U" + _hash(units[u].sig))
        tagged = sig + group(u)  # the prefix of its template keys, counted as they are below
        segments.append(Segment("stage" if u in run_at else "layer", sig, k,
                                [gs.slots[i].role or "" for x in block for i in x.slots],
                                f"{tagged}#{occurrences[tagged]}", [_hash(x.sig) for x in block],
                                [_hash(x.coarse) for x in block],
                                [u + j in starts or u + j in dense or (u in run_at and j == 0) for j in range(p)],
                                [units[u + j].anchor in shortcut for j in range(p)]))
        occurrences[tagged] += 1
    for n_stage, (start, p, k) in enumerate(runs):
        block_sig = tuple(u.sig for u in units[start:start + p])
        h = _hash(block_sig) + group(start)
        stage = f"S{h}#{seen_stage[h]}"
        seen_stage[h] += 1
        stages[stage] = [f"stage{n_stage}.block{b}" for b in range(k)]  # labels for people
        for j in range(p):
            first = units[start + j]
            per_block = [_by_role(gs, units[start + b * p + j]) for b in range(k)]
            single = " (one block: a source's stage has this block)" if k == 1 else ""
            for (role, occ), slot in _by_role(gs, first).items():
                key = f"{stage}/u{j}:{role}" + (f"#{occ}" if (role, 1) in per_block[0] else "")
                if any((role, occ) not in blk for blk in per_block) or \
                        len({_layout_of(gs, blk[(role, occ)]) for blk in per_block}) > 1:
                    for blk in per_block:
                        if (role, occ) in blk:
                            unplaced[blk[(role, occ)]] = ("a bias only some blocks of its stage have, or whose layout "
                                                          "differs between them")
                    continue
                blocks = [[blk[(role, occ)]] for blk in per_block]
                templates[key] = Template(key, stage, role, blocks,
                                          f"topology: unit {j} of a {p}-unit block repeated {k}x{single}",
                                          ends_branch=all(start + b * p + j in ends for b in range(k)),
                                          output_norm=j == p - 1 and role.startswith("norm.")
                                          and all(start + b * p + j in after | ends for b in range(k)))
        in_run.update(range(start, start + p * k))
    seen_unit: dict[str, int] = defaultdict(int)
    for u_idx in sorted(range(len(units)), key=rank.__getitem__):
        if u_idx in in_run:
            continue
        h = _hash(units[u_idx].sig) + group(u_idx)
        occ = seen_unit[h]
        seen_unit[h] += 1
        roles = _by_role(gs, units[u_idx])
        for (role, n), slot in roles.items():
            key = f"U{h}#{occ}:{role}" + (f"#{n}" if (role, 1) in roles else "")
            templates[key] = Template(key, "", role, [[slot]],
                                      f"topology: loose layer, occurrence {occ} of its kind in the dataflow"
                                      + (f" to graph outputs {group(u_idx)[1:]}" if group(u_idx) else ""))
    return Structure(templates, unplaced, stages, segments)
