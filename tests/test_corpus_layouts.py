"""Attention layouts on the real-model corpus: fused qkv projections and grouped-query k/v.

- timm ViT, DeiT, Swin (``attn.qkv``) and HF GPT-2 (``attn.c_attn``) fuse q, k and v into one
  projection; under both exporters every one of them is found as 3 parts, and nothing else is.
- Llama and Qwen2 use grouped-query attention (2 k/v heads for 4 query heads in the source,
  1 for 2 in the shrink target, head_dim 8 in both). A transfer that keeps heads whole maps a
  target k/v row (head h, dim i) from source rows of dim i.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import front_onnx
from front_onnx.analysis import analyze
from front_onnx.numeric.spectral import resample
from front_onnx.onnxio import load_model
from tests.corpus.build import EXPORTERS, MODELS
from tests.corpus.scoreboard import Corpus

CORPUS = Corpus(MODELS)
FUSED = {"vit": "attn.qkv.weight", "deit": "attn.qkv.weight", "swin": "attn.qkv.weight", "gpt2": "attn.c_attn.weight"}
ROLES = ("source", "same", "shrink", "grow")


def _modules(entry: dict, name: str) -> list[str]:
    """The torch parameters an initializer of the manifest is (several when deduplicated)."""
    info = entry["initializers"].get(name, {})
    return [x for x in [info.get("of"), *info.get("also", [])] if x]


def _blocks(config: dict) -> int:
    for key in ("depth", "n_layer", "num_hidden_layers"):
        if key in config:
            return int(config[key])
    return int(sum(config["depths"]))


@pytest.mark.parametrize("family", sorted(FUSED))
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("role", ROLES)
def test_fused_qkv_is_three_parts(family, exporter, role):
    entry = CORPUS.entry(family, exporter, role)
    gs, _ = analyze(load_model(CORPUS.path(entry)))
    fused, other = [], []
    for s in gs.slots:
        if s.role != "linear.weight" or s.layout is None:
            continue
        is_qkv = any(m.endswith(FUSED[family]) for m in _modules(entry, s.initializer))
        (fused if is_qkv else other).append(s)
    assert len(fused) == _blocks(entry["config"])
    assert [s.layout.parts for s in fused] == [3] * len(fused)
    assert [s.layout.parts for s in other] == [1] * len(other)


def _weight_slot(entry: dict, path, suffix: str):
    m = load_model(path)
    gs, _ = analyze(m)
    for i, s in enumerate(gs.slots):
        if s.role == "linear.weight" and any(x.endswith(suffix) for x in _modules(entry, s.initializer)):
            return m, i, s
    raise AssertionError(f"no slot of {suffix} in {path}")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_kv_keeps_whole_heads(family, tmp_path):
    """Shrink 2 k/v heads to 1 (head_dim 8 on both sides): each target row i of k_proj should draw on
    the source rows of the same in-head index (i, 8 + i), not on neighbouring rows of the flat axis.
    The transform (``method="front"``); selection takes whole heads by construction (test_dimflow)."""
    head_dim = 8
    src_e, tgt_e = CORPUS.entry(family, "dynamo", "source"), CORPUS.entry(family, "dynamo", "shrink")
    out = tmp_path / "out.onnx"
    front_onnx.transfer(CORPUS.path(src_e), CORPUS.path(tgt_e), out, keep=1.0, method="front")
    ms, _, ss = _weight_slot(src_e, CORPUS.path(src_e), "layers.0.self_attn.k_proj.weight")
    _, _, st = _weight_slot(tgt_e, CORPUS.path(tgt_e), "layers.0.self_attn.k_proj.weight")
    mo = load_model(out)
    # rows of the out axis, head-major (canonical (heads, head_dim, in) flattened)
    src = ss.layout.to_canonical(ms.array(ss.initializer)).astype(np.float64)
    src = src.reshape(-1, src.shape[-1])
    node = mo.proto.graph.node[st.node]
    got = st.layout.to_canonical(mo.array(node.input[st.input])).astype(np.float64)
    got = got.reshape(-1, got.shape[-1])
    assert src.shape[0] == 2 * head_dim and got.shape[0] == head_dim
    # the in axis is resampled the same way for both readings; compare rows after it
    src_in = resample(src, (src.shape[0], got.shape[1]), axes=[1], convention="ortho")

    def z(a):
        return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    corr = np.abs(z(got) @ z(src_in).T) / got.shape[1]
    best = corr.argmax(axis=1)
    assert all(b % head_dim == i for i, b in enumerate(best)), f"best source row per target row: {best.tolist()}"
