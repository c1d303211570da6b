"""The analysis reads attention the same way whatever export settings made the graph.

``transfer_module`` exports with the dynamo exporter without its optimizer
(``front_onnx.torch.modules.EXPORT_OPTIONS``): its graphs cut a fused qkv with
SplitToSequence, give slice bounds as ``value_ints`` constants and read some parameters
through views, where the optimized export the corpus holds has Split, initializers and
folded tensors. For every corpus family, the same trained-like source exported that way
must show the same attention projections (role, canonical shape, fused parts, heads,
key/value groups) as the corpus's dynamo file: a fused projection not seen as parts, or
heads not seen, makes a shrink mix q, k and v or cut heads apart.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("transformers")
pytest.importorskip("timm")

from front_onnx.analysis import weight_slots  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402
from front_onnx.torch.modules import export_module  # noqa: E402
from tests.corpus.build import FAMILIES, MODELS, build_module, example_inputs  # noqa: E402


def _attention_reading(path) -> set[tuple]:
    """(role, canonical shape, parts, heads, groups) of every projection with parts or heads."""
    gs = weight_slots(load_model(path))
    return {(s.role, s.layout.canonical_shape(tuple(s.shape)), s.layout.parts, s.layout.heads, s.layout.groups)
            for s in gs.slots if s.layout is not None and (s.layout.parts > 1 or any(s.layout.heads))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_transfer_modules_export_reads_like_the_default_export(name, tmp_path):
    family = FAMILIES[name]
    path = tmp_path / "source.onnx"
    export_module(build_module(family, "source"), {k: torch.from_numpy(v) for k, v in example_inputs(family).items()
                                                   if k in family.args}, path)
    assert _attention_reading(path) == _attention_reading(MODELS / name / "dynamo" / "source.onnx")
