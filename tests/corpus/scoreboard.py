"""The scoreboard: front_onnx.transfer on every pair of the corpus, measured against the acceptance criteria.

Pairs (``tests/corpus/models``, built by ``tests/corpus/build.py``), per family:

- ``identity-<exp>``: source -> ``same`` target, one exporter, keep 1.0;
- ``cross-<a>-<b>``: source exported by ``a`` -> ``same`` target exported by ``b`` (keep 1.0);
- ``shrink-<exp>`` / ``grow-<exp>``: source -> narrower and shallower / wider and deeper target.

Criteria (a failed transfer fails every criterion of its pair):

- ``reproduces`` (identity, cross): onnxruntime outputs of the output equal the source's on
  the example inputs, relative L2 error <= 1e-5 (worst output);
- ``constants_kept`` (all): every target initializer that the builder classified as a
  *constant* (not a parameter of the torch module nor computed from one) is byte-identical
  at each of its uses in the output;
- ``checker`` (shrink, grow): ``onnx.checker.check_model(output, full_check=True)`` passes;
- ``finite`` (shrink, grow): onnxruntime outputs of the output are finite;
- ``nodes_unchanged`` (all): the output's nodes are the target's (op, attributes, outputs,
  non-initializer inputs), except an optional bias input restored on Conv / Gemm /
  LayerNormalization (a Constant node's value is an attribute: it must not change either);
- ``written`` (shrink, grow): >= 95% of the target's parameter elements (the builder's
  classification) have other bytes in the output than in the target; a growth the transfer
  kept expanded (``--method expand``: new units keep the target's own values, and what it
  writes may equal them) must instead reproduce the source (as ``reproduces``): that is what
  it claims;
- ``plan_agrees`` (all): ``front_onnx.plan(src, tgt).summary()['written_fraction']`` equals the
  transfer's ``result.plan.summary()['written_fraction']``.

Scrambled pairs (``--scrambled``; ``tests/test_corpus_scrambled.py``): the identity and shrink
pairs of each exporter with source and target passed through ``tests/scramble.py`` first, so
every name and metadata entry is gone and only the topology and the values are left. The
manifest's classification is mapped onto the scrambled names (the scrambler returns its name
map). Criteria: those above without ``written`` (a lower written share is allowed there; the
scoreboard reports it beside the unscrambled pair's, column ``unscr.``).

    python -m tests.corpus.scoreboard                 # the table and the summary
    python -m tests.corpus.scoreboard vit resnet      # some families only
    python -m tests.corpus.scoreboard --json out.json # also every number, as JSON
    python -m tests.corpus.scoreboard --xfail-table   # print the XFAIL dict of tests/test_corpus.py
    python -m tests.corpus.scoreboard --write-xfail   # ... and write it into tests/test_corpus.py
    python -m tests.corpus.scoreboard --scrambled     # the scrambled pairs (--write-xfail: tests/test_corpus_scrambled.py)
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.corpus.build import EXPORTERS, MODELS, load_manifest

IDENTITY_TOL = 1e-5
# the tolerance of each reproduction criterion (reproduces_int4: the deployment corpus's int4
# models, measured against the source's own outputs; 1e-5 until a test justifies another)
TOLERANCE = {"reproduces": IDENTITY_TOL, "reproduces_int4": 1e-5}
WRITTEN_MIN = 0.95
RESTORABLE = {("Conv", 2), ("ConvTranspose", 2), ("Gemm", 2), ("LayerNormalization", 2)}
CRITERIA = {
    "identity": ("reproduces", "nodes_unchanged", "constants_kept", "plan_agrees"),
    "cross": ("reproduces", "nodes_unchanged", "constants_kept", "plan_agrees"),
    "shrink": ("checker", "finite", "nodes_unchanged", "written", "constants_kept", "plan_agrees"),
    "grow": ("checker", "finite", "nodes_unchanged", "written", "constants_kept", "plan_agrees"),
}
# names and metadata scrambled: no ``written`` threshold (the share is reported instead)
SCRAMBLED_KINDS = ("identity", "shrink")
CRITERIA_SCRAMBLED = {k: tuple(c for c in CRITERIA[k] if c != "written") for k in SCRAMBLED_KINDS}


def criteria(pair: Pair) -> tuple[str, ...]:
    """The criteria a pair is measured against (its own, where it names them: the deployment
    corpus, tests/corpus/deploy_scoreboard.py)."""
    if pair.criteria:
        return pair.criteria
    return (CRITERIA_SCRAMBLED if pair.scrambled else CRITERIA)[pair.kind]


# ----------------------------------------------------------------------------- the corpus

class Corpus:
    """The committed models and their manifest."""

    def __init__(self, root: Path = MODELS) -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self._by = {(e["family"], e["exporter"], e["role"]): e for e in self.manifest["models"]}

    @property
    def families(self) -> list[str]:
        return list(self.manifest["families"])

    def entry(self, family: str, exporter: str, role: str) -> dict:
        return self._by[(family, exporter, role)]

    def path(self, entry: dict) -> Path:
        return self.root / entry["path"]

    def feeds(self, family: str, names: list[str], shapes: dict[str, list] | None = None) -> dict[str, np.ndarray]:
        """The family's example inputs ``names``; ``shapes`` (the model's declared input shapes,
        by the same names) is for a corpus whose inputs depend on the model (deploy_scoreboard)."""
        files = self.manifest["families"][family]["inputs"]
        return {n: np.load(self.root / files[n]) for n in names}

    def pairs(self, families: list[str] | None = None, scrambled: bool = False) -> list["Pair"]:
        out = []
        if scrambled:
            for fam in families or self.families:
                for kind in SCRAMBLED_KINDS:
                    for exp in EXPORTERS:
                        tgt = self.entry(fam, exp, "same" if kind == "identity" else kind)
                        out.append(Pair(f"{fam}-scrambled-{kind}-{exp}", fam, kind, self.entry(fam, exp, "source"),
                                        tgt, scrambled=True))
            return out
        for fam in families or self.families:
            for exp in EXPORTERS:
                src = self.entry(fam, exp, "source")
                out.append(Pair(f"{fam}-identity-{exp}", fam, "identity", src, self.entry(fam, exp, "same")))
            for a, b in ((EXPORTERS[0], EXPORTERS[1]), (EXPORTERS[1], EXPORTERS[0])):
                out.append(Pair(f"{fam}-cross-{a}-{b}", fam, "cross", self.entry(fam, a, "source"),
                                self.entry(fam, b, "same")))
            for kind in ("shrink", "grow"):
                for exp in EXPORTERS:
                    out.append(Pair(f"{fam}-{kind}-{exp}", fam, kind, self.entry(fam, exp, "source"),
                                    self.entry(fam, exp, kind)))
        return out


@dataclass
class Pair:
    id: str
    family: str
    kind: str            # identity, cross, shrink, grow
    source: dict         # manifest entries
    target: dict
    scrambled: bool = False   # source and target pass through tests/scramble.py first
    criteria: tuple[str, ...] = ()   # the pair's own criteria (else by kind)
    reference: Callable[[Path, Path], Path] | None = None  # (source, workdir) -> the model to reproduce, else the source

    @property
    def exporters(self) -> str:
        a, b = self.source["exporter"], self.target["exporter"]
        return a if a == b else f"{a}>{b}"


@dataclass
class PairResult:
    id: str
    family: str
    kind: str
    exporters: str
    status: str = "right"                 # right / wrong / refused / internal error
    error: str = ""
    criteria: dict[str, list] = field(default_factory=dict)   # name -> [ok, detail]
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def failed(self) -> dict[str, str]:
        return {k: d for k, (ok, d) in self.criteria.items() if not ok}

    @property
    def reason(self) -> str:
        f = self.failed()
        return self.error or (f"{next(iter(f))}: {next(iter(f.values()))}" if f else "")


# ----------------------------------------------------------------------------- measuring

def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(corpus: Corpus, family: str, path: Path, original: dict[str, str] | None = None) -> list[np.ndarray]:
    """The model's outputs on its family's example inputs; ``original`` maps a scrambled
    input name back to the name the inputs are filed under."""
    sess = _session(path)
    names = [i.name for i in sess.get_inputs()]
    original = original or {}
    feeds = corpus.feeds(family, [original.get(n, n) for n in names],
                         shapes={original.get(i.name, i.name): i.shape for i in sess.get_inputs()})
    return sess.run(None, {n: feeds[original.get(n, n)] for n in names})


_SCRAMBLED: dict[tuple[Path, Path], tuple[Path, dict[str, str]]] = {}


def scrambled(corpus: Corpus, entry: dict, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A model of the corpus with every name and metadata entry scrambled (once per workdir),
    and the name map (old -> new)."""
    from tests.scramble import scramble_file

    src = corpus.path(entry)
    key = (Path(workdir), src)
    if key not in _SCRAMBLED:
        dst = Path(workdir) / "scrambled" / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}
        scramble_file(src, dst, names)
        _SCRAMBLED[key] = (dst, names)
    return _SCRAMBLED[key]


def rel_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Worst relative L2 error over the outputs (inf when shapes or counts differ)."""
    if len(ref) != len(got):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, got):
        if a.shape != b.shape:
            return float("inf")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        worst = max(worst, float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30)))
    return worst


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _inits(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _uses(model, names) -> dict[str, list[tuple[int, int]]]:
    """(node index, input index) of every use of each name in the main graph."""
    out: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for i, n in enumerate(model.graph.node):
        for j, x in enumerate(n.input):
            if x in names:
                out[x].append((i, j))
    return out


def _at(model, inits, slot: tuple[int, int]) -> np.ndarray | None:
    i, j = slot
    nodes = model.graph.node
    if i >= len(nodes) or j >= len(nodes[i].input):
        return None
    return inits.get(nodes[i].input[j])


def _same_bytes(a: np.ndarray | None, b: np.ndarray) -> bool:
    return a is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _changed(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """Per element of ``b``: do its bytes differ in ``a`` (all True when ``a`` is missing or reshaped)."""
    if a is None or a.shape != b.shape or a.dtype != b.dtype:
        return np.ones(b.shape, bool)
    if b.dtype.itemsize in (1, 2, 4, 8):
        kind = f"u{b.dtype.itemsize}"
        return a.reshape(-1).view(kind) != b.reshape(-1).view(kind)
    return (a != b).reshape(-1)


def _kept(target, out, t_inits, o_inits, names) -> list[str]:
    """Which of ``names`` (target initializers) are not byte-identical at every use in the output."""
    uses = _uses(target, set(names))
    bad = []
    for name in names:
        want = t_inits[name]
        slots = uses.get(name, [])
        if slots:
            ok = all(_same_bytes(_at(out, o_inits, s), want) for s in slots)
        else:
            ok = _same_bytes(o_inits.get(name), want)
        if not ok:
            bad.append(name)
    return bad


def _written(target, out, t_inits, o_inits, names) -> tuple[int, int]:
    """(elements whose bytes changed, elements) over the target initializers ``names``."""
    uses = _uses(target, set(names))
    done = total = 0
    for name in names:
        want = t_inits[name]
        slots = uses.get(name, [])
        got = [_at(out, o_inits, s) for s in slots] if slots else [o_inits.get(name)]
        mask = np.zeros(want.size, bool)
        for g in got:
            mask |= _changed(g, want).reshape(-1)
        done += int(mask.sum())
        total += want.size
    return done, total


def _node_diffs(target, out, t_inits, o_inits) -> tuple[list[str], int]:
    """How the output's nodes differ from the target's, apart from restored optional bias inputs;
    and how many bias inputs were restored."""
    tn, on = list(target.graph.node), list(out.graph.node)
    if len(tn) != len(on):
        return [f"{len(tn)} nodes in the target, {len(on)} in the output"], 0
    diffs, restored = [], 0
    for i, (a, b) in enumerate(zip(tn, on)):
        where = f"node {i} {a.op_type} {a.name!r}"
        if (a.op_type, a.domain, list(a.output)) != (b.op_type, b.domain, list(b.output)):
            diffs.append(f"{where}: op or outputs changed")
            continue
        if [x.SerializeToString() for x in a.attribute] != [x.SerializeToString() for x in b.attribute]:
            diffs.append(f"{where}: attributes changed")
        for j, x in enumerate(b.input):
            if j >= len(a.input):
                if (a.op_type, j) in RESTORABLE and x in o_inits:
                    restored += 1
                else:
                    diffs.append(f"{where}: input {j} added ({x})")
                continue
            y = a.input[j]
            if y in t_inits:
                if x not in o_inits:
                    diffs.append(f"{where}: input {j} is no longer an initializer")
            elif x != y:
                diffs.append(f"{where}: input {j} {y!r} -> {x!r}")
        if len(b.input) < len(a.input):
            diffs.append(f"{where}: inputs removed")
    for what in ("input", "output"):
        if [v.name for v in getattr(target.graph, what)] != [v.name for v in getattr(out.graph, what)]:
            diffs.append(f"graph {what}s changed")
    return diffs, restored


def _short(e: BaseException, names: dict[Path, str]) -> str:
    """The exception's first line, with the pair's paths replaced by short names."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    for p, name in names.items():
        msg = msg.replace(str(p), name)
    return f"{type(e).__name__}: {msg}"[:300]


def evaluate(corpus: Corpus, pair: Pair, workdir: Path, compare: bool = False) -> PairResult:
    """Transfer and measure one pair; ``compare``: a scrambled pair also plans its unscrambled
    pair too, to report what scrambling costs (``written_bytes_unscrambled``, ``rel_error_unscrambled``)."""
    import onnx

    import front_onnx

    t0 = time.perf_counter()
    res = PairResult(pair.id, pair.family, pair.kind, pair.exporters)
    src, tgt = corpus.path(pair.source), corpus.path(pair.target)
    rename = {}            # target name in the manifest -> its name in the files used
    original = {}          # input name in the files used -> the name the inputs are filed under
    if pair.scrambled:
        src, s_names = scrambled(corpus, pair.source, workdir)
        tgt, rename = scrambled(corpus, pair.target, workdir)
        original = {new: old for old, new in {**s_names, **rename}.items()}
    out_dir = Path(workdir) / pair.id
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "output.onnx"
    wanted = criteria(pair)
    names = {out: "<output>", src: "<source>", tgt: "<target>", out_dir: "<workdir>", corpus.root: "<corpus>"}
    try:
        result = front_onnx.transfer(src, tgt, out, keep=1.0)
    except front_onnx.FrontError as e:
        res.status, res.error = "refused", "refused: " + _short(e, names)
    except Exception as e:  # noqa: BLE001 - an internal error is a result to record
        res.status, res.error = "internal error", "internal error: " + _short(e, names)
        res.numbers["traceback"] = traceback.format_exc(limit=-3)
    if res.error:
        res.criteria = {c: [False, res.error] for c in wanted}
        res.seconds = time.perf_counter() - t0
        return res

    num = res.numbers
    crit = res.criteria
    tm, om = _load(tgt), _load(out)
    t_inits, o_inits = _inits(tm), _inits(om)
    classes = {rename.get(n, n): v["class"] for n, v in pair.target["initializers"].items()}
    constants = [n for n, c in classes.items() if c == "constant" and n in t_inits]
    params = [n for n, c in classes.items() if c == "parameter" and n in t_inits]
    derived = [n for n, c in classes.items() if c == "derived" and n in t_inits]

    for name in (c for c in wanted if c in TOLERANCE):
        tol = TOLERANCE[name]
        try:
            ref = pair.reference(src, Path(workdir)) if pair.reference is not None else src
            err = rel_error(run(corpus, pair.family, ref, original), run(corpus, pair.family, out, original))
            num["rel_error"] = err
            crit[name] = [err <= tol, f"relative error {err:.2e} (tolerance {tol:.0e})"]
        except Exception as e:  # noqa: BLE001
            crit[name] = [False, "onnxruntime: " + _short(e, names)]
    if "checker" in wanted:
        try:
            onnx.checker.check_model(str(out), full_check=True)
            crit["checker"] = [True, ""]
        except Exception as e:  # noqa: BLE001
            crit["checker"] = [False, _short(e, names)]
    if "finite" in wanted:
        try:
            outs = run(corpus, pair.family, out, original)
            bad = sum(int((~np.isfinite(o)).sum()) for o in outs if o.dtype.kind == "f")
            crit["finite"] = [bad == 0, f"{bad} non-finite output values" if bad else ""]
        except Exception as e:  # noqa: BLE001
            crit["finite"] = [False, "onnxruntime: " + _short(e, names)]
    if "nodes_unchanged" in wanted:
        diffs, restored = _node_diffs(tm, om, t_inits, o_inits)
        num["restored_biases"] = restored
        crit["nodes_unchanged"] = [not diffs, f"{len(diffs)} node differences, first: {diffs[0]}" if diffs else ""]

    changed = _kept(tm, om, t_inits, o_inits, constants)
    num["constants"] = len(constants)
    num["constants_changed"] = len(changed)
    crit["constants_kept"] = [not changed, f"{len(changed)} of {len(constants)} constants rewritten: "
                              + ", ".join(f"{n}{list(t_inits[n].shape)}" for n in changed[:3]) if changed else ""]
    num["derived"] = len(derived)
    num["derived_changed"] = len(_kept(tm, om, t_inits, o_inits, derived))

    done, total = _written(tm, om, t_inits, o_inits, params)
    num["parameter_elements"] = total
    num["written_bytes"] = done / total if total else 0.0
    num["written_plan"] = result.plan.summary()["written_fraction"]
    if "written" in wanted and result.plan.expanded:  # a growth kept expanded: it claims the source's function
        num["expanded"] = len(result.plan.expanded)
        try:
            err = rel_error(run(corpus, pair.family, src, original), run(corpus, pair.family, out, original))
            num["rel_error"] = err
            crit["written"] = [err <= TOLERANCE["reproduces"],
                               f"expanded: {num['written_bytes']:.1%} of {total} parameter elements written, the "
                               f"rest the target's own; reproduces the source with relative error {err:.2e}"]
        except Exception as e:  # noqa: BLE001
            crit["written"] = [False, "expanded, onnxruntime: " + _short(e, names)]
    elif "written" in wanted:
        ok = num["written_bytes"] >= WRITTEN_MIN
        crit["written"] = [ok, f"{num['written_bytes']:.1%} of {total} parameter elements written "
                               f"(plan: {num['written_plan']:.1%}; needs {WRITTEN_MIN:.0%})"]
    try:
        planned = front_onnx.plan(src, tgt, keep=1.0).summary()["written_fraction"]
        num["plan_fraction"] = planned
        crit["plan_agrees"] = [planned == num["written_plan"],
                               f"plan() {planned:.4f} vs transfer {num['written_plan']:.4f}"]
    except Exception as e:  # noqa: BLE001
        crit["plan_agrees"] = [False, "plan() failed: " + _short(e, names)]
    if pair.scrambled and compare:
        plain = evaluate(corpus, dataclasses.replace(pair, id=pair.id + "-plain", scrambled=False), workdir)
        for k in ("written_bytes", "rel_error"):
            if k in plain.numbers:
                num[k + "_unscrambled"] = plain.numbers[k]

    res.status = "right" if all(ok for ok, _ in crit.values()) else "wrong"
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- for the tests

def files_not_as_manifest(corpus: "Corpus") -> list[str]:
    """The committed files (models, external data, example inputs) whose sha256 is not the
    manifest's, or that are missing."""
    import hashlib

    bad = []
    for entry in corpus.manifest["models"]:
        for rel, digest in entry["files"].items():
            path = corpus.root / rel
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                bad.append(rel)
    for info in corpus.manifest["families"].values():
        for name, digest in info["input_sha256"].items():
            path = corpus.root / info["inputs"][name]
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                bad.append(str(path))
    return bad


def xfail_cases(pairs: list["Pair"], xfail: dict[tuple[str, str], str]):
    """One pytest case per (pair, criterion); those in ``xfail`` (the measured failures of
    tests/test_corpus*.py; (pair, '*'): the transfer raises) are strict expected failures."""
    import pytest

    for pair in pairs:
        for criterion in criteria(pair):
            reason = xfail.get((pair.id, criterion)) or xfail.get((pair.id, "*"))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(pair, criterion, id=f"{pair.id}-{criterion}", marks=marks)


def measured_once(corpus: "Corpus", root: Path):
    """``get(pair)``: the pair's result, evaluated the first time it is asked for."""
    done: dict[str, PairResult] = {}

    def get(pair: "Pair") -> PairResult:
        if pair.id not in done:
            done[pair.id] = evaluate(corpus, pair, root)
        return done[pair.id]
    return get


# ----------------------------------------------------------------------------- reporting

def table(results: list[PairResult]) -> str:
    rows = [("pair", "kind", "exporters", "status", "rel.err", "written", "plan", "unscr.", "const.chg",
             "first reason")]
    for r in results:
        n = r.numbers
        rows.append((r.id, r.kind, r.exporters, r.status,
                     f"{n['rel_error']:.1e}" if "rel_error" in n else "",
                     f"{n['written_bytes']:.0%}" if "written_bytes" in n else "",
                     f"{n['written_plan']:.0%}" if "written_plan" in n else "",
                     f"{n['written_bytes_unscrambled']:.0%}" if "written_bytes_unscrambled" in n else "",
                     f"{n['constants_changed']}/{n['constants']}" if "constants" in n else "",
                     r.reason[:110]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def summary(results: list[PairResult]) -> str:
    statuses = ("right", "wrong", "refused", "internal error")
    by = collections.defaultdict(collections.Counter)
    for r in results:
        by[(r.family, r.exporters)][r.status] += 1
    lines = ["family        exporters      " + "  ".join(f"{s:>14s}" for s in statuses)]
    for (fam, exp), c in sorted(by.items()):
        lines.append(f"{fam:13s} {exp:14s} " + "  ".join(f"{c[s]:14d}" for s in statuses))
    total = collections.Counter(r.status for r in results)
    lines.append(f"{'all':13s} {'':14s} " + "  ".join(f"{total[s]:14d}" for s in statuses))
    crit = collections.Counter(k for r in results for k in r.failed())
    lines.append("\nfailed criteria (pairs): " + ", ".join(f"{k} {v}" for k, v in crit.most_common()))
    reasons = collections.Counter(_generic(r.reason) for r in results if r.reason)
    lines.append("most common first reasons:")
    lines += [f"  {v:3d}  {k}" for k, v in reasons.most_common(12)]
    return "\n".join(lines)


def _generic(reason: str) -> str:
    """A reason with its numbers and names blurred, to count alike failures together."""
    import re

    r = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    r = re.sub(r"\[[0-9, ]*\]", "[…]", r)
    r = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?%?", "N", r)
    return r[:140]


def xfail_table(results: list[PairResult]) -> str:
    """The XFAIL dict of tests/test_corpus.py: (pair, criterion) -> reason, and (pair, '*') for a
    pair whose transfer raised (every criterion fails)."""
    lines = ["XFAIL = {"]
    for r in results:
        if r.error:
            lines.append(f"    ({r.id!r}, '*'): {r.error[:260]!r},")
            continue
        for crit, detail in r.failed().items():
            lines.append(f"    ({r.id!r}, {crit!r}): {detail[:160]!r},")
    lines.append("}")
    return "\n".join(lines)


XFAIL_BEGIN = "# --- XFAIL begin"
XFAIL_END = "# --- XFAIL end ---"
TEST_MODULE = Path(__file__).resolve().parents[1] / "test_corpus.py"
SCRAMBLED_MODULE = Path(__file__).resolve().parents[1] / "test_corpus_scrambled.py"


def write_xfail(results: list[PairResult], path: Path = TEST_MODULE) -> None:
    """Replace the XFAIL table of tests/test_corpus.py (between its markers) by the measured one."""
    text = path.read_text()
    a = text.index(XFAIL_BEGIN)
    a = text.index("\n", a) + 1
    b = text.index(XFAIL_END, a)
    table = xfail_table(results).replace("XFAIL = {", "XFAIL: dict[tuple[str, str], str] = {", 1)
    path.write_text(text[:a] + table + "\n" + text[b:])


def evaluate_all(corpus: Corpus, pairs: list[Pair], workdir: Path, log=None, compare: bool = False) -> list[PairResult]:
    results = []
    for p in pairs:
        r = evaluate(corpus, p, workdir, compare)
        if log:
            log(f"{r.id:40s} {r.status:15s} {r.seconds:5.1f} s  {r.reason[:90]}")
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*")
    p.add_argument("--json", metavar="PATH", help="write every result as JSON ('-' for stdout)")
    p.add_argument("--xfail-table", action="store_true", help="print the XFAIL dict for tests/test_corpus.py")
    p.add_argument("--write-xfail", action="store_true",
                   help="rewrite the XFAIL dict in tests/test_corpus.py from this measurement (all families only)")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per pair while running")
    p.add_argument("--scrambled", action="store_true",
                   help="the scrambled pairs: every name and metadata entry removed (tests/scramble.py)")
    p.add_argument("--root", type=Path, default=MODELS, help="the corpus folder (default: %(default)s)")
    args = p.parse_args(argv)
    corpus = Corpus(args.root)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="front-corpus-") as tmp:
        results = evaluate_all(corpus, corpus.pairs(args.families or None, scrambled=args.scrambled), Path(tmp),
                               log=(lambda s: print(s, file=sys.stderr)) if args.verbose else None,
                               compare=args.scrambled)
    if args.json:
        text = json.dumps([asdict(r) for r in results], indent=1, default=float)
        if args.json == "-":
            print(text)
            return 0
        Path(args.json).write_text(text + "\n")
    if args.write_xfail:
        if args.families:
            p.error("--write-xfail measures every pair: give no families")
        module = SCRAMBLED_MODULE if args.scrambled else TEST_MODULE
        write_xfail(results, module)
        print(f"{module}: XFAIL rewritten ({sum(bool(r.failed()) for r in results)} failing pairs)")
        return 0
    if args.xfail_table:
        print(xfail_table(results))
        return 0
    print(table(results))
    print()
    print(summary(results))
    print(f"\n{len(results)} pairs in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
