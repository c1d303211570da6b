"""Acceptance criteria on a corpus of real models: HF transformers and timm, exported by torch.

The corpus (tests/corpus/models, built by ``python -m tests.corpus.build``) holds, per family,
a trained-like source and fresh ``same`` / ``shrink`` / ``grow`` targets, each exported by
the dynamo and the legacy exporter. The pairs and criteria are those of the scoreboard
(``python -m tests.corpus.scoreboard``, docstring of tests/corpus/scoreboard.py):

- identity and cross-exporter identity (keep 1.0): the output reproduces the source
  (relative L2 error <= 1e-5 on onnxruntime outputs), nodes unchanged;
- shrink / grow: full onnx.checker, finite outputs, nodes unchanged apart from restored bias
  inputs, >= 95% of the target's parameter elements written (a growth kept expanded: the
  output reproduces the source instead);
- every pair: every constant initializer of the target (not a torch parameter nor computed
  from one) byte-identical; ``plan`` and ``transfer`` report the same written fraction.

Each (pair, criterion) is one test. What fails today is listed in XFAIL with the measured
reason (strict: a fixed pair turns into an error until its entry is removed). Rewrite the
table from a fresh measurement with ``python -m tests.corpus.scoreboard --write-xfail``. Every transfer runs once
per session (the ``corpus_result`` fixture), so the module takes seconds.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

from tests.corpus.build import MODELS  # noqa: E402
from tests.corpus.scoreboard import (  # noqa: E402
    Corpus,
    criteria,
    files_not_as_manifest,
    measured_once,
    rel_error,
    run,
    xfail_cases,
)

CORPUS = Corpus(MODELS)
PAIRS = CORPUS.pairs()

# (pair, criterion) -> the measured failure; (pair, "*"): the transfer raises (every criterion fails).
# --- XFAIL begin (written by `python -m tests.corpus.scoreboard --write-xfail`) ---
XFAIL: dict[tuple[str, str], str] = {
}
# --- XFAIL end ---


@pytest.fixture(scope="module")
def corpus_result(tmp_path_factory):
    """The scoreboard's result of a pair, measured once per session."""
    return measured_once(CORPUS, tmp_path_factory.mktemp("corpus-out"))


@pytest.mark.parametrize("pair,criterion", list(xfail_cases(PAIRS, XFAIL)))
def test_pair(corpus_result, pair, criterion):
    result = corpus_result(pair)
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
    assert len(CORPUS.manifest["models"]) == len(CORPUS.families) * 4 * 2


@pytest.mark.parametrize("family", CORPUS.families)
def test_exporters_agree(family):
    """The two exports of each model compute the same function (else cross-exporter pairs
    would compare different models)."""
    for role in ("source", "same", "shrink", "grow"):
        a = run(CORPUS, family, CORPUS.path(CORPUS.entry(family, "dynamo", role)))
        b = run(CORPUS, family, CORPUS.path(CORPUS.entry(family, "legacy", role)))
        assert rel_error(a, b) <= 1e-5, (family, role)


@pytest.mark.parametrize("family", CORPUS.families)
def test_every_model_has_parameters(family):
    """The builder's classification found the weights (a classifier bug would make the
    criteria vacuous)."""
    for entry in CORPUS.manifest["models"]:
        if entry["family"] == family:
            classes = [v["class"] for v in entry["initializers"].values()]
            assert classes.count("parameter") >= 4, entry["path"]


def test_builder_reproduces_the_committed_files(tmp_path):
    """Rebuilding one family gives byte-identical files (the builder is deterministic and the
    corpus is not stale); only with the library versions the corpus was built with."""
    import importlib.metadata as md

    want = CORPUS.manifest["versions"]
    for pkg in ("torch", "transformers", "timm", "onnx", "onnxscript"):
        try:
            have = md.version(pkg)
        except md.PackageNotFoundError:
            pytest.skip(f"{pkg} is not installed")
        if have != want[pkg]:
            pytest.skip(f"corpus built with {pkg} {want[pkg]}, here {have}")
    r = subprocess.run([sys.executable, "-m", "tests.corpus.build", "--check", "vit"],
                       capture_output=True, text=True, cwd=MODELS.parents[2], timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
