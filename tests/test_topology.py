"""Structure comes from the graph, not from names: scrambling every name gives the same result."""
from __future__ import annotations

import itertools
import re

import numpy as np
import onnx
import pytest

import front_onnx
from front_onnx.analysis import analyze
from front_onnx.onnxio import load_model
from tests.scramble import scramble, scramble_file

FAMILIES = ("vit", "resnet", "gpt")
EXPORTERS = ("dynamo", "legacy")


def _weights(path) -> list[bytes]:
    m = load_model(path)
    return [np.ascontiguousarray(m.array(n)).tobytes() for n in m.initializer_names()]


def test_scrambler_leaves_no_names(samples, tmp_path):
    src = samples.get("vit", "base", "dynamo", source=True)
    m = scramble(onnx.load(str(src)))
    text = str(m)
    for word in ("blocks", "qkv", "norm", "pos_embed", "name_scopes", "head"):
        assert word not in text
    onnx.checker.check_model(m, full_check=True)


def _unordered(ops: list[str]) -> list[str]:
    """A plan's operations without the order a selection's leading units are in."""
    return [re.sub(r"leading, (importance order|the source's own order)[^,)]*", "leading", o) for o in ops]


@pytest.mark.parametrize("family,exporter,size", list(itertools.product(FAMILIES, EXPORTERS, ("narrow", "wide", "shallow", "deep"))))
def test_scrambled_names_give_identical_weights(samples, tmp_path, family, exporter, size):
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, size, exporter)
    named, blind = tmp_path / "named.onnx", tmp_path / "blind.onnx"
    # 'hybrid': with 'expand' a growth is kept expanded only if the whole target then computes the
    # source's function, and a scrambled target whose tokens are left (no evidence) does not: one
    # decision for every slot, which would hide the per-slot comparison below
    r1 = front_onnx.transfer(src, tgt, named, method="hybrid")
    r2 = front_onnx.transfer(scramble_file(src, tmp_path / "s.onnx"), scramble_file(tgt, tmp_path / "t.onnx"), blind,
                             method="hybrid")
    # Structure and roles do not depend on names. What scrambling takes away is the exporter's
    # metadata and the names, the evidence that shows a folded tensor to be a constant or an
    # ambiguous one (added, multiplied, concatenated) to be a parameter: without it such a
    # tensor can only be judged by its role and values, so those slots (and only those) may
    # differ; without evidence the tensor is left (a constant), never rewritten, unless it
    # differs between source and target (the pair's evidence, said in the plan).
    by_marks = [i for i, s in enumerate(r1.plan.slots) if "(folded_from)" in s.reason or "exporter marks" in s.reason]
    assert all(r1.plan.slots[i].role is None for i in by_marks)
    blind_slots = analyze(load_model(tmp_path / "t.onnx"))[0].slots
    by_names = [i for i, s in enumerate(blind_slots) if "not shown to be a parameter" in s.provenance]
    assert all(r2.plan.slots[i].role is None or any("differs between the source and the target" in e
                                                    for e in r2.plan.slots[i].evidence) for i in by_names)
    same = [i for i in range(len(r1.plan.slots)) if i not in by_marks and i not in by_names]
    assert [r1.plan.slots[i].role for i in same] == [r2.plan.slots[i].role for i in same]
    # which spaces the importance order covers depends on that evidence too (a residual width
    # indexed by a token left as a constant is not ordered), and the plan says which
    assert [_unordered(r1.plan.slots[i].operations) for i in same] == \
        [_unordered(r2.plan.slots[i].operations) for i in same]
    if not by_marks and not by_names:
        assert r1.plan.summary() == r2.plan.summary()
        assert _weights(named) == _weights(blind)


def test_plan_says_where_families_diverge(samples):
    vit = samples.get("vit", "base", "dynamo", source=True)
    same = front_onnx.plan(vit, samples.get("vit", "deep", "legacy"))
    assert same.divergence == []
    other = front_onnx.plan(vit, samples.get("gpt", "base", "dynamo"))
    text = " ".join(other.divergence)
    assert "embedding" in text and "token" in text  # GPT's token table against ViT's class token
    left = [s for s in other.left if s.role]
    assert left and all("structures differ" in s.reason or "a model output's axis" in s.reason for s in left)
    # the heads match as layers (a bias is not structure) but not in their class/vocabulary axis
    assert any("index axis 0 (vocabulary, classes or a model output's axis) differs: source 10, target 64" in s.reason for s in left)


def test_plan_evidence_names_topology_and_hints(samples):
    p = front_onnx.plan(samples.get("vit", "base", "legacy", source=True), samples.get("vit", "narrow", "dynamo"))
    qkv = [s for s in p.written if any("fused projection of 3 parts" in e for e in s.evidence)]
    assert qkv and all(s.evidence[0].startswith("topology:") for s in qkv)
    assert any("module blocks." in e for s in qkv for e in s.evidence)  # names kept as a hint only
