"""The deployment scoreboard: front_onnx on graphs written by optimum, onnxruntime's transformer
optimizer and the onnxruntime-genai model builder (``tests/corpus/deploy``, built by
``tests/corpus/deploy_build.py``), measured as ``tests/corpus/scoreboard.py`` measures the torch
corpus (its helpers and criteria; a failed transfer fails every criterion of its pair).

Pairs per family (one tool per family), and across the genai builder's precisions
(``genai_llama_int4>genai_llama_fp32-*`` and back: a quantized source into a float target,
which must reproduce the source computed in float, ``float_compute``; a float source into a
quantized target, which must reproduce the builder's own int4 export of the same checkpoint:
the requantized weights are the codes the builder's quantizer gives):

- ``<family>-identity``: source -> ``same`` target, keep 1.0: ``reproduces`` (relative L2 error
  of the onnxruntime outputs <= 1e-5 against the source's own outputs; for the int4 family
  ``reproduces_int4``, the same measurement under its own name and tolerance,
  ``scoreboard.TOLERANCE``: 1e-5 for now, the error is recorded), ``nodes_unchanged``,
  ``constants_kept``, ``plan_agrees``;
- ``<family>-shrink`` / ``<family>-grow``: source -> narrower and shallower / wider and deeper
  target: ``finite``, ``nodes_unchanged``, ``written`` (>= 95% of the target's parameter elements,
  by the builder's classification, have new bytes), ``constants_kept``, ``plan_agrees``;
- ``<family>-untouched-<role>``: each untouched export: ``validate_untouched``
  (``front_onnx.validate(model, device="cpu")``, what ``front-onnx validate MODEL --device cpu``
  runs: inputs synthesized) passes, and ``validate_inputs`` (the same with the family's example
  inputs) passes.

The example inputs are stored at the widest role's shapes (past key values of 3 layers and 3
key/value heads); each model gets them cut to the dimensions its graph declares
(``deploy_build.slice_feeds``).

    python -m tests.corpus.deploy_scoreboard                  # the table and the summary
    python -m tests.corpus.deploy_scoreboard genai_llama_int4 # some families only
    python -m tests.corpus.deploy_scoreboard --json out.json  # also every number, as JSON
    python -m tests.corpus.deploy_scoreboard --xfail-table    # print the XFAIL dict of tests/test_corpus_deploy.py
    python -m tests.corpus.deploy_scoreboard --write-xfail    # ... and write it into tests/test_corpus_deploy.py
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tests.corpus import scoreboard as sb
from tests.corpus.deploy_build import DEPLOY, ROLES, slice_feeds
from tests.corpus.scoreboard import Corpus, Pair, PairResult

IDENTITY = ("reproduces", "nodes_unchanged", "constants_kept", "plan_agrees")
IDENTITY_INT4 = ("reproduces_int4", "nodes_unchanged", "constants_kept", "plan_agrees")
RESIZE = ("finite", "nodes_unchanged", "written", "constants_kept", "plan_agrees")
UNTOUCHED = ("validate_untouched", "validate_inputs")
# a quantized source into a float target and back (one architecture, one builder)
CROSS = (("genai_llama_int4", "genai_llama_fp32"), ("genai_llama_fp32", "genai_llama_int4"))

TEST_MODULE = Path(__file__).resolve().parents[1] / "test_corpus_deploy.py"


def int4(entry: dict) -> bool:
    return "MatMulNBits" in entry.get("contrib_ops", [])


class DeployCorpus(Corpus):
    """The deployment corpus: one tool per family (the manifest's ``exporter`` is the
    environment that built it), example inputs cut to each model's declared shapes."""

    def __init__(self, root: Path = DEPLOY) -> None:
        super().__init__(root)
        self._by_role = {(e["family"], e["role"]): e for e in self.manifest["models"]}

    def model(self, family: str, role: str) -> dict:
        return self._by_role[(family, role)]

    def feeds(self, family: str, names: list[str], shapes: dict[str, list] | None = None) -> dict[str, np.ndarray]:
        stored = super().feeds(family, names)
        return slice_feeds(stored, {n: (shapes or {}).get(n) for n in names})

    def pairs(self, families: list[str] | None = None, scrambled: bool = False) -> list[Pair]:
        if scrambled:
            raise NotImplementedError("no scrambled pairs in the deployment corpus")
        out = []
        for fam in families or self.families:
            src = self.model(fam, "source")
            out.append(Pair(f"{fam}-identity", fam, "identity", src, self.model(fam, "same"),
                            criteria=IDENTITY_INT4 if int4(src) else IDENTITY))
            for kind in ("shrink", "grow"):
                out.append(Pair(f"{fam}-{kind}", fam, kind, src, self.model(fam, kind), criteria=RESIZE))
            for role in ROLES:
                e = self.model(fam, role)
                out.append(Pair(f"{fam}-untouched-{role}", fam, "untouched", e, e, criteria=UNTOUCHED))
        fams = set(families or self.families)
        for a, b in CROSS:
            if a in fams and b in fams:
                src = self.model(a, "source")
                # int4 -> fp32: the source computed in float; fp32 -> int4: the builder's own int4
                # export of the same weights (the two sources are one checkpoint)
                builder = self.path(self.model(b, "source"))
                ref = float_compute if int4(src) else (lambda _src, _work, m=builder: m)
                out.append(Pair(f"{a}>{b}-identity", a, "identity", src, self.model(b, "same"),
                                criteria=IDENTITY, reference=ref))
                out.append(Pair(f"{a}>{b}-shrink", a, "shrink", src, self.model(b, "shrink"), criteria=RESIZE))
        return out


def float_compute(model: Path, workdir: Path) -> Path:
    """A copy of a quantized model that computes in float (``MatMulNBits`` accuracy_level 0:
    the dequantized weights times float activations, where the builder's accuracy_level 4
    quantizes the activations to int8): what a float model with its dequantized weights
    must reproduce."""
    import onnx

    dst = Path(workdir) / "float-compute" / model.parent.name / model.name
    if not dst.exists():
        m = onnx.load(str(model))
        for n in m.graph.node:
            for a in n.attribute:
                if n.op_type == "MatMulNBits" and a.name == "accuracy_level":
                    a.i = 0
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(dst))
    return dst


def _validate(corpus: DeployCorpus, pair: Pair) -> PairResult:
    """The untouched export through front_onnx.validate, with synthesized and with the example inputs."""
    import onnxruntime as ort

    import front_onnx

    t0 = time.perf_counter()
    res = PairResult(pair.id, pair.family, pair.kind, pair.exporters)
    path = corpus.path(pair.target)
    names = {path: "<model>", corpus.root: "<corpus>"}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    decl = {i.name: i.shape for i in ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_inputs()}
    for crit, inputs in (("validate_untouched", None), ("validate_inputs", corpus.feeds(pair.family, list(decl), decl))):
        try:
            rep = front_onnx.validate(path, inputs=inputs, device="cpu")
            bad = [f"{c.name}: {c.figure} {c.detail}".strip() for c in rep.failed]
            res.criteria[crit] = [rep.ok, f"{len(bad)} failed checks, first: {bad[0]}"[:300] if bad else ""]
            res.numbers[crit + "_checks"] = {c.name: c.status for c in rep.checks}
        except Exception as e:  # noqa: BLE001 - a refusal or crash is the measurement
            res.criteria[crit] = [False, sb._short(e, names)]
    res.status = "right" if all(ok for ok, _ in res.criteria.values()) else "wrong"
    res.seconds = time.perf_counter() - t0
    return res


def evaluate(corpus: DeployCorpus, pair: Pair, workdir: Path) -> PairResult:
    if pair.kind == "untouched":
        return _validate(corpus, pair)
    return sb.evaluate(corpus, pair, workdir)


def measured_once(corpus: DeployCorpus, root: Path):
    """``get(pair)``: the pair's result, evaluated the first time it is asked for."""
    done: dict[str, PairResult] = {}

    def get(pair: Pair) -> PairResult:
        if pair.id not in done:
            done[pair.id] = evaluate(corpus, pair, root)
        return done[pair.id]
    return get


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*")
    p.add_argument("--json", metavar="PATH", help="write every result as JSON ('-' for stdout)")
    p.add_argument("--xfail-table", action="store_true", help="print the XFAIL dict for tests/test_corpus_deploy.py")
    p.add_argument("--write-xfail", action="store_true",
                   help="rewrite the XFAIL dict in tests/test_corpus_deploy.py from this measurement (all families only)")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per pair while running")
    p.add_argument("--root", type=Path, default=DEPLOY, help="the corpus folder (default: %(default)s)")
    args = p.parse_args(argv)
    corpus = DeployCorpus(args.root)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="front-deploy-") as tmp:
        for pair in corpus.pairs(args.families or None):
            r = evaluate(corpus, pair, Path(tmp))
            if args.verbose:
                print(f"{r.id:40s} {r.status:15s} {r.seconds:5.1f} s  {r.reason[:90]}", file=sys.stderr)
            results.append(r)
    if args.json:
        text = json.dumps([asdict(r) for r in results], indent=1, default=float)
        if args.json == "-":
            print(text)
            return 0
        Path(args.json).write_text(text + "\n")
    if args.write_xfail:
        if args.families:
            p.error("--write-xfail measures every pair: give no families")
        sb.write_xfail(results, TEST_MODULE)
        print(f"{TEST_MODULE}: XFAIL rewritten ({sum(bool(r.failed()) for r in results)} failing pairs)")
        return 0
    if args.xfail_table:
        print(sb.xfail_table(results))
        return 0
    print(sb.table(results))
    print()
    print(sb.summary(results))
    print(f"\n{len(results)} pairs in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
