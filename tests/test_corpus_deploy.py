"""Acceptance criteria on graphs written by deployment tools: optimum, onnxruntime's transformer
optimizer (fused com.microsoft ops) and the onnxruntime-genai model builder (GroupQueryAttention,
SimplifiedLayerNormalization, int4 MatMulNBits).

The corpus (tests/corpus/deploy, built by ``tests/corpus/deploy_build.py`` in two environments,
see its docstring) holds, per family, a trained-like source and fresh ``same`` / ``shrink`` /
``grow`` targets. The pairs and criteria are those of the deployment scoreboard
(``python -m tests.corpus.deploy_scoreboard``, docstring of tests/corpus/deploy_scoreboard.py):

- identity (keep 1.0): the output reproduces the source (relative L2 error <= 1e-5 on
  onnxruntime outputs; ``reproduces_int4`` for the int4 family), nodes unchanged;
- shrink / grow: finite outputs, nodes unchanged, >= 95% of the target's parameter elements written;
- every transfer pair: every constant initializer of the target byte-identical; ``plan`` and
  ``transfer`` report the same written fraction;
- every untouched export: ``front_onnx.validate`` passes, with synthesized inputs and with the
  example inputs.

Each (pair, criterion) is one test. What fails today is listed in XFAIL with the measured
reason (strict: a fixed pair turns into an error until its entry is removed). Rewrite the
table from a fresh measurement with ``python -m tests.corpus.deploy_scoreboard --write-xfail``.
Every pair is measured once per session (the ``deploy_result`` fixture).
"""
from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.corpus.deploy_build import DEPLOY, ROLES  # noqa: E402
from tests.corpus.deploy_scoreboard import DeployCorpus, measured_once  # noqa: E402
from tests.corpus.scoreboard import criteria, files_not_as_manifest, run, xfail_cases  # noqa: E402

CORPUS = DeployCorpus(DEPLOY)
PAIRS = CORPUS.pairs()

# (pair, criterion) -> the measured failure; (pair, "*"): the transfer raises (every criterion fails).
# --- XFAIL begin (written by `python -m tests.corpus.deploy_scoreboard --write-xfail`) ---
XFAIL: dict[tuple[str, str], str] = {
}
# --- XFAIL end ---


@pytest.fixture(scope="module")
def deploy_result(tmp_path_factory):
    """The scoreboard's result of a pair, measured once per session."""
    return measured_once(CORPUS, tmp_path_factory.mktemp("deploy-out"))


@pytest.mark.parametrize("pair,criterion", list(xfail_cases(PAIRS, XFAIL)))
def test_pair(deploy_result, pair, criterion):
    result = deploy_result(pair)
    ok, detail = result.criteria[criterion]
    assert ok, f"{pair.id}: {criterion}: {detail}"


# ----------------------------------------------------------------------------- the corpus itself

def test_xfail_table_names_existing_cases():
    """A stale entry (a renamed pair or criterion) would silently stop marking anything."""
    known = {(p.id, c) for p in PAIRS for c in criteria(p)} | {(p.id, "*") for p in PAIRS}
    assert sorted(set(XFAIL) - known) == []


def test_files_match_the_manifest():
    """The committed files are the ones the manifest describes (sha256 of every model,
    external data and input file)."""
    assert files_not_as_manifest(CORPUS) == []
    assert {e["family"] for e in CORPUS.manifest["models"]} == set(CORPUS.families)
    assert len(CORPUS.manifest["models"]) == len(CORPUS.families) * len(ROLES)


@pytest.mark.parametrize("family", CORPUS.families)
def test_untouched_models_run(family):
    """Every export runs in onnxruntime on its (cut) example inputs, with finite outputs named
    as the manifest says; the fresh ``same`` model computes another function than the source."""
    outs = {}
    for role in ROLES:
        entry = CORPUS.model(family, role)
        got = run(CORPUS, family, CORPUS.path(entry))
        assert len(got) == len(entry["outputs"]), entry["path"]
        assert all(np.isfinite(o).all() for o in got if o.dtype.kind == "f"), entry["path"]
        outs[role] = got[0]
    assert not np.allclose(outs["source"], outs["same"])


@pytest.mark.parametrize("family", CORPUS.families)
def test_classification(family):
    """The builder's classification found the weights and nothing but them: every model has
    parameters; the genai rotary caches are constants; every MatMulNBits weight and scale is a
    parameter; every fused Attention's packed qkv weight is one."""
    for role in ROLES:
        entry = CORPUS.model(family, role)
        classes = {n: v["class"] for n, v in entry["initializers"].items()}
        assert list(classes.values()).count("parameter") >= 4, entry["path"]
        assert entry["parameter_elements"] > 0
        assert entry["match"] == "name"
        assert entry["constant_nodes"]["parameter"] == [], entry["path"]
        if family.startswith("genai"):
            assert classes["cos_cache"] == classes["sin_cache"] == "constant"
        for q in entry.get("matmulnbits", []):
            assert classes[q["B"]["name"]] == classes[q["scales"]["name"]] == "parameter"
        for name, c in classes.items():
            if name.endswith(("qkv_weight", ".weight", "_Q4", "_scales")):
                assert c == "parameter", (entry["path"], name)
