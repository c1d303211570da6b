"""The --quick convergence smoke run (benchmarks/convergence.py), ViT part: a front-onnx
initialized target must beat the random initialization after one epoch of training.

A real measurement (a trained source, exported, transferred, loaded back and trained), not a
fixed number: mean test accuracy after epoch 1 over the seeds, front-onnx with the API's
defaults against random. About 30 s on 2 cores."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import convergence  # noqa: E402

SEEDS = 3


@pytest.fixture(scope="module")
def quick_vit(tmp_path_factory):
    """The quick ViT part with the rows these tests read (random, the defaults, Weight
    Selection; ``--variants --rows``): the other rows' curves are the same whether or not they
    run beside them, and skipping them saves a third of the time."""
    threads = torch.get_num_threads()
    rows = os.environ.get(convergence.VARIANTS_ENV)
    os.environ[convergence.VARIANTS_ENV] = "default,ws"
    try:
        return convergence.run(quick=True, seeds=SEEDS, out=tmp_path_factory.mktemp("convergence"), only=["vit"],
                               jobs=1, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
        if rows is None:
            os.environ.pop(convergence.VARIANTS_ENV, None)
        else:
            os.environ[convergence.VARIANTS_ENV] = rows


def test_quick_vit_curves_are_complete_and_finite(quick_vit):
    st = quick_vit["settings"]["vit-shrink"]
    names = {i["name"] for i in st["inits"]}
    assert {"random", "front default", "weight selection"} <= names
    for seed in map(str, range(SEEDS)):
        for name in names:
            rec = st["runs"][seed][name]
            assert len(rec["curve"]) == st["epochs"] + 1
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in rec["curve"]), (name, rec["curve"])
    front = st["runs"]["0"]["front default"]
    assert front["written"] > 0 and front["not_in_graph"] == 0
    assert Path(st["png"]).is_file()


def test_front_default_beats_random_after_one_epoch(quick_vit):
    summary = quick_vit["settings"]["vit-shrink"]["summary"]
    front, random = summary["front default"]["mean"][1], summary["random"]["mean"][1]
    assert front > random, f"front-onnx {front:.3f} <= random {random:.3f} after 1 epoch (mean of {SEEDS} seeds)"


def test_weight_selection_baseline():
    """Weight Selection (benchmarks/baselines.py): evenly spaced elements, the same indices on
    every axis of one size, fused qkv selected part by part, first N blocks, no growth."""
    import baselines
    from samples.models import ViT, ViTConfig

    assert baselines.uniform_indices(8, 4).tolist() == [0, 2, 4, 6]
    w = torch.arange(24.0)[:, None] * 10 + torch.arange(8.0)       # qkv-like [3 x 8, 8]
    sel = baselines.select_tensor(w, (12, 4), parts=3)
    assert sel[:, 0].tolist() == [0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 220]
    assert sel[0].tolist() == [0, 2, 4, 6]

    torch.manual_seed(0)
    big, small = ViT(ViTConfig(dim=64, depth=4)), ViT(ViTConfig(dim=32, depth=2))
    sd = baselines.weight_selection(big.state_dict(), small.state_dict())
    small.load_state_dict(sd, strict=True)
    assert torch.equal(sd["blocks.1.mlp.fc1.weight"], big.state_dict()["blocks.1.mlp.fc1.weight"][::2, ::2])
    with pytest.raises(baselines.CannotGrow):
        baselines.weight_selection(small.state_dict(), big.state_dict())


def test_vary_source_trains_and_caches_a_source_per_seed(tmp_path, monkeypatch):
    """``--vary-source``: seed k's target starts from a source trained with seed k (its own
    cache entry); without it every seed shares seed 0's source."""
    s = next(x for x in convergence.settings(True, minilm=False) if x.name == "cnn-shrink")
    s = dataclasses.replace(s, source_epochs=1)     # what is checked is which source, not how good
    monkeypatch.delenv(convergence.VARY_SOURCE_ENV, raising=False)
    assert convergence.source_seed(3) == 0
    monkeypatch.setenv(convergence.VARY_SOURCE_ENV, "1")
    assert convergence.source_seed(3) == 3
    threads = torch.get_num_threads()
    try:
        m0, p0, meta0 = convergence.get_source(s, tmp_path, lambda *_: None, 0)
        m1, p1, meta1 = convergence.get_source(s, tmp_path, lambda *_: None, 1)
        again = convergence.get_source(s, tmp_path, lambda *_: None, 1)
    finally:
        torch.set_num_threads(threads)
    assert p0 != p1 and p0.is_file() and p1.is_file()
    assert (meta0["seed"], meta1["seed"]) == (0, 1)
    w0, w1 = (next(iter(m.state_dict().values())) for m in (m0, m1))
    assert not torch.equal(w0, w1)
    assert again[2] == meta1 and again[1] == p1      # cached, not trained again


def test_versus_counts_evaluations_and_pairs_behind():
    """The report's comparison line: the seed-mean decides "ahead"; a single seed's dip below
    the other initialization is counted as a (seed, evaluation) pair even where the mean is ahead.
    The initialization's own point (index 0) is not an evaluation after training."""
    s = next(x for x in convergence.settings(True, minilm=False) if x.name == "cnn-shrink")
    runs = {"0": {"a": {"curve": [0.9, 0.80, 0.90, 0.95]}, "b": {"curve": [0.1, 0.50, 0.95, 0.90]}},
            "1": {"a": {"curve": [0.9, 0.70, 0.96, 0.96]}, "b": {"curve": [0.1, 0.60, 0.90, 0.97]}}}
    line = convergence.versus(s, runs, "a", "b")
    # differences a-b per evaluation: seed 0 +0.30 -0.05 +0.05, seed 1 +0.10 +0.06 -0.01
    assert line.startswith("*a* vs *b*: ahead at 3 of 3 evaluations")
    assert "behind after epoch" not in line
    assert "behind at 2 of 6 (seed, evaluation) pairs" in line
    lower = dataclasses.replace(s, family="gpt")   # a loss: lower is better, so the signs turn
    assert "ahead at 0 of 3" in convergence.versus(lower, runs, "a", "b")
    assert convergence.versus(s, {"0": runs["0"]}, "a", "b") == "*a* vs *b*: ahead at 2 of 3 evaluations; " \
        "behind after epoch(s) 2 (0.050 ± 0.000) (gap ± standard error over seeds).\n"
