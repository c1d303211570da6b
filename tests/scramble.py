"""A name scrambler: every initializer, node and value renamed to a meaningless token, and
every piece of metadata dropped, so that only the graph's topology is left to go by."""
from __future__ import annotations

import hashlib
from pathlib import Path

import onnx


def scramble(model: onnx.ModelProto, salt: str = "x") -> onnx.ModelProto:
    return scramble_with_names(model, salt)[0]


def scramble_with_names(model: onnx.ModelProto, salt: str = "x") -> tuple[onnx.ModelProto, dict[str, str]]:
    """The scrambled model and the name map: old initializer / value name -> new name
    (node names are keyed ``node:<index>:<old name>``). The map is deterministic."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names: dict[str, str] = {}

    def token(old: str) -> str:
        if old == "":
            return old
        if old not in names:
            names[old] = "n" + hashlib.sha256(f"{salt}:{old}".encode()).hexdigest()[:10]
        return names[old]

    for t in g.initializer:
        t.name = token(t.name)
        t.ClearField("doc_string")
        del t.metadata_props[:]
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = token(vi.name)
        vi.ClearField("doc_string")
        del vi.metadata_props[:]
    for k, n in enumerate(g.node):
        n.name = token(f"node:{k}:{n.name}")
        for i, x in enumerate(n.input):
            n.input[i] = token(x)
        for i, x in enumerate(n.output):
            n.output[i] = token(x)
        n.ClearField("doc_string")
        del n.metadata_props[:]
    del m.metadata_props[:]
    m.ClearField("doc_string")
    del g.metadata_props[:]
    g.name = "g"
    g.ClearField("doc_string")
    return m, dict(names)


def scramble_file(src: Path, dst: Path, names: dict[str, str] | None = None) -> Path:
    """Scramble a model file (with its external data) into ``dst``, weights inline; the name
    map (old -> new) goes into ``names`` when one is given."""
    m, mapping = scramble_with_names(onnx.load(str(src)))
    if names is not None:
        names.update(mapping)
    onnx.save(m, str(dst))
    return dst
