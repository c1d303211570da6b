"""Structure comes from the graph, not from names: scrambling every name gives the same result."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

import front_onnx
from front_onnx.onnx_io import load_model
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


@pytest.mark.parametrize("family,exporter,size", list(itertools.product(FAMILIES, EXPORTERS, ("narrow", "wide", "shallow", "deep"))))
def test_scrambled_names_give_identical_weights(samples, tmp_path, family, exporter, size):
    src = samples.get(family, "base", exporter, source=True)
    tgt = samples.get(family, size, exporter)
    named, blind = tmp_path / "named.onnx", tmp_path / "blind.onnx"
    r1 = front_onnx.transfer(src, tgt, named)
    r2 = front_onnx.transfer(scramble_file(src, tmp_path / "s.onnx"), scramble_file(tgt, tmp_path / "t.onnx"), blind)
    assert r1.plan.summary() == r2.plan.summary()
    assert _weights(named) == _weights(blind)
