"""Fuzzing the CLI with mutated inputs: sample ONNX files (model and external data) and a
learngene, damaged by bit flips, truncation, overwritten bytes and field edits. Whatever the
damage, `front-onnx` must answer with a documented exit code that fits the command (0 or 3;
validate also 4; never 1, an internal error, and never an uncaught exception), one line on
stderr when it refuses, within a bounded time and memory, leave the inputs byte-identical,
and leave no output (nor temporary file) behind when it fails. An exit 0 must deliver what
the command promises: transfer/init an ONNX file that loads with its data, has the target's
graph, passes onnx.checker when the target does and runs in onnxruntime (CPU, in a separate
process) when the target does; extract a learngene that loads; inspect/plan/validate a
report on stdout (JSON with --json).

The budget is short by default (a few seconds in `make test`); `make fuzz` sets
FRONT_FUZZ_EXAMPLES (e.g. 2000) for a long run. Figures of the long run: docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis import event as _event

from front_onnx import api, cli
from front_onnx.validation.checks import structure_signature

EXAMPLES = int(os.environ.get("FRONT_FUZZ_EXAMPLES", "25"))
CASE_SECONDS = 30          # a case running longer than this is a hang
CASE_MEMORY = 3 << 30      # extra address space a case may take (beyond what the process holds)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=list(HealthCheck))


class Hang(Exception):
    pass


@pytest.fixture(scope="module")
def corpus(samples, tmp_path_factory):
    """Pristine inputs: a source (inline), a target with external data, and a learngene."""
    root = tmp_path_factory.mktemp("fuzz-corpus")
    src = samples.get("vit", "base", "legacy", source=True)
    tgt = samples.get("vit", "narrow", "dynamo")
    shutil.copy(src, root / "src.onnx")
    onnx.save(onnx.load(str(tgt)), str(root / "tgt.onnx"), save_as_external_data=True, location="tgt.onnx.data")
    api.extract(src, keep=0.5).save(root / "gene.safetensors")
    return root


def test_fuzz_corpus_is_valid(corpus, ort_worker):
    """Unmutated, the corpus passes every fuzzed command with exit 0 and the full check of its
    output (so mutations start from working inputs, and the exit-0 checks do run)."""
    assert "shapes" in ort_worker.run(corpus / "tgt.onnx", corpus / "tgt.onnx")
    for argv in (["transfer", "{c}/src.onnx", "{c}/tgt.onnx", "--keep", "0.5"],
                 ["init", "{c}/tgt.onnx", "--learngene", "{c}/gene.safetensors"],
                 ["extract", "{c}/src.onnx", "--keep", "0.5"], ["inspect", "{c}/src.onnx", "--json"],
                 ["plan", "{c}/src.onnx", "{c}/tgt.onnx"], ["validate", "{c}/tgt.onnx", "--device", "cpu", "--json"],
                 ["validate", "{c}/tgt.onnx", "--device", "cpu"]):
        case = _case_dir(corpus)
        try:
            assert _check(case, [a.format(c=case) for a in argv], ort_worker, case / "tgt.onnx") == 0, argv
        finally:
            shutil.rmtree(case)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_cli(argv: list[str], stdout: list[str] | None = None) -> tuple[int, str]:
    """The CLI in this process, with a time limit (SIGALRM) and an address-space limit:
    (exit code, stderr); stdout is appended to ``stdout`` when given."""
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise Hang(f"no answer within {CASE_SECONDS} s: {argv}")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + CASE_MEMORY
    if old_limit[1] != resource.RLIM_INFINITY:
        limit = min(limit, old_limit[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, old_limit[1]))
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)
        signal.signal(signal.SIGALRM, old_handler)
        if stdout is not None:
            stdout.append(out.getvalue())
    return rc, err.getvalue()


# --------------------------------------------------------------------------- mutations

def _bytes_mutation():
    """A byte-level damage: (kind, parameters) applied by _damage."""
    return st.one_of(
        st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                            min_size=1, max_size=8)),
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("overwrite"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16)),
    )


def _damage(data: bytes, mutation) -> bytes:
    kind = mutation[0]
    b = bytearray(data)
    if not b:
        return bytes(b)
    if kind == "flip":
        for where, bit in mutation[1]:
            b[int(where * len(b))] ^= 1 << bit
    elif kind == "truncate":
        del b[int(mutation[1] * len(b)):]
    elif kind == "overwrite":
        at = int(mutation[1] * len(b))
        b[at:at + len(mutation[2])] = mutation[2]
    return bytes(b)


_LOCATIONS = ["", "../tgt.onnx.data", "/etc/passwd", "nonexistent.data", "a\x00b", "tgt.onnx", ".",
              "sub/../tgt.onnx.data", "C:\\x.data", "tgt.onnx.data"]
_DIMS = [0, 1, 2, 3, -1, 7, 1 << 20, 1 << 31, 1 << 40, (1 << 63) - 1]


def _field_mutation():
    return st.one_of(
        st.tuples(st.just("dims"), st.integers(0, 10_000), st.integers(0, 3), st.sampled_from(_DIMS)),
        st.tuples(st.just("drop_dim"), st.integers(0, 10_000)),
        st.tuples(st.just("data_type"), st.integers(0, 10_000), st.integers(-1, 30)),
        st.tuples(st.just("location"), st.integers(0, 10_000), st.sampled_from(_LOCATIONS)),
        st.tuples(st.just("offset"), st.integers(0, 10_000), st.sampled_from(["offset", "length"]),
                  st.sampled_from(["-1", "0", "1", "x", "", "99999999999", "4096"])),
        st.tuples(st.just("inline"), st.integers(0, 10_000), st.binary(max_size=64)),
        st.tuples(st.just("rename"), st.integers(0, 10_000), st.sampled_from(["", "x", "input", "val_0"])),
        st.tuples(st.just("drop_init"), st.integers(0, 10_000)),
        st.tuples(st.just("node_input"), st.integers(0, 10_000), st.sampled_from(["", "missing", "val_1"])),
        st.tuples(st.just("attr"), st.integers(0, 10_000), st.integers(-3, 1 << 31)),
        st.tuples(st.just("opset"), st.integers(-1, 1000)),
    )


def _edit_model(path: Path, mutation) -> None:
    """A field-level damage of the .onnx through the onnx API (its external data stays references)."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    kind, *p = mutation
    inits = list(g.initializer)
    t = inits[p[0] % len(inits)] if inits and p and isinstance(p[0], int) else None
    if kind == "dims" and t is not None:
        if t.dims:
            t.dims[p[1] % len(t.dims)] = p[2]
        else:
            t.dims.append(p[2])
    elif kind == "drop_dim" and t is not None and t.dims:
        del t.dims[-1]
    elif kind == "data_type" and t is not None:
        t.data_type = p[1]
    elif kind in ("location", "offset") and t is not None:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        key = "location" if kind == "location" else p[1]
        value = p[1] if kind == "location" else p[2]
        for e in t.external_data:
            if e.key == key:
                e.value = value
                break
        else:
            t.external_data.add(key=key, value=value)
    elif kind == "inline" and t is not None:
        t.data_location = onnx.TensorProto.DEFAULT
        t.ClearField("external_data")
        t.raw_data = p[1]
    elif kind == "rename" and t is not None:
        t.name = p[1]
    elif kind == "drop_init" and t is not None:
        g.initializer.remove(t)
    elif kind == "node_input" and g.node:
        n = g.node[p[0] % len(g.node)]
        if n.input:
            n.input[len(n.input) - 1] = p[1]
    elif kind == "attr" and g.node:
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            a = nodes[p[0] % len(nodes)].attribute[0]
            if a.type == onnx.AttributeProto.INT:
                a.i = p[1]
            elif a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[0] = p[1]
    elif kind == "opset":
        m.opset_import[0].version = p[0]
    path.write_bytes(m.SerializeToString())


_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 40), 1 << 40), st.floats(allow_nan=True),
                         st.text(max_size=8), st.just([]), st.just({}), st.just([1, 2, 3]),
                         st.just({"__reduce__": "os.system", "py/object": "os.system"}))


def _gene_mutation():
    return st.tuples(st.sampled_from(["set", "delete", "template_set", "template_delete", "drop_tensor"]),
                     st.integers(0, 10_000), st.integers(0, 10_000), _JSON_VALUES)


def _edit_gene(path: Path, mutation) -> None:
    """A JSON metadata edit of a learngene (the safetensors header is rewritten consistently)."""
    from safetensors.numpy import load, save

    kind, i, j, value = mutation
    raw = path.read_bytes()
    arrays = load(raw)
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["front_onnx"])
    keys = sorted(meta)
    if kind == "set":
        meta[keys[i % len(keys)]] = value
    elif kind == "delete":
        del meta[keys[i % len(keys)]]
    elif kind in ("template_set", "template_delete") and meta["templates"]:
        tm = meta["templates"][i % len(meta["templates"])]
        k = sorted(tm)[j % len(tm)]
        if kind == "template_set":
            if isinstance(tm[k], list) and tm[k] and isinstance(value, int):
                tm[k][j % len(tm[k])] = value
            else:
                tm[k] = value
        else:
            del tm[k]
    elif kind == "drop_tensor":
        names = sorted(arrays)
        del arrays[names[i % len(names)]]
    path.write_bytes(save(arrays, metadata={"front_onnx": json.dumps(meta)}))


# --------------------------------------------------------------------------- the check

DOCUMENTED_EXITS = {0, 2, 3, 4, 5}  # docs/cli.md, "Exit codes"; 1 is an internal error
# What each fuzzed command may answer: its arguments are valid (no 2), validation is off for
# transfer/init (no 4) and no case asks for CUDA (no 5).
EXITS = {"transfer": {0, 3}, "init": {0, 3}, "extract": {0, 3}, "inspect": {0, 3}, "plan": {0, 3},
         "validate": {0, 3, 4}}

# Runs a model in onnxruntime (CPU) on inputs synthesized from another model's graph, one
# request per line, in a separate process: a damaged graph may crash onnxruntime itself.
_ORT_WORKER = r"""
import json, os, sys
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # anything else written to stdout goes where stderr goes
import numpy as np, onnx, onnxruntime as ort
from front_onnx.validation.checks import synthesize_inputs
so = ort.SessionOptions()
so.log_severity_level = 4
so.intra_op_num_threads = so.inter_op_num_threads = 1
for line in sys.stdin:
    model, feeds_from = json.loads(line)
    try:
        feeds = synthesize_inputs(onnx.load(feeds_from, load_external_data=False))
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        reply = {"shapes": [list(np.shape(x)) for x in s.run(None, feeds)]}
    except Exception as e:
        reply = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(reply), file=replies, flush=True)
"""


class OrtWorker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        root = Path(__file__).resolve().parents[1]  # this checkout's front_onnx
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        limit = 4 << 30
        return subprocess.Popen([sys.executable, "-c", _ORT_WORKER], cwd=root, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))

    def run(self, model: Path, feeds_from: Path) -> dict:
        """{"shapes": [...]} when ``model`` ran, {"error": ...} when onnxruntime refused it,
        {"crash": ...} when the worker died or hung on it."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps([str(model), str(feeds_from)]) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], CASE_SECONDS + 30)
            line = self.proc.stdout.readline() if ready else ""
        except BrokenPipeError:
            line = ""
        if not line:
            self.close()
            return {"crash": "onnxruntime worker died or hung"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def ort_worker():
    w = OrtWorker()
    yield w
    w.close()


def event(value: str) -> None:
    """hypothesis' statistics line, when inside a hypothesis test."""
    with contextlib.suppress(Exception):
        _event(value)


def _digests(case: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in case.iterdir()}


def _checker_error(path: Path) -> str:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return f"{type(e).__name__}: {str(e).strip()[:200]}"
    return ""


def _check_model_output(out: Path, target: Path, worker: OrtWorker) -> None:
    """What transfer/init promise on exit 0: the output is the target's graph with new
    weights, as loadable, checkable and runnable as the target."""
    model = onnx.load(str(out))  # with its external data: present and complete
    original = onnx.load(str(target), load_external_data=False)
    assert structure_signature(model) == structure_signature(original), "the output's graph is not the target's"
    err = _checker_error(out)
    if err:
        assert _checker_error(target), f"onnx.checker refuses the output but not the target: {err}"
    ran = worker.run(target, target)
    event("target runs in onnxruntime" if "shapes" in ran else "target does not run in onnxruntime")
    if "shapes" in ran:
        got = worker.run(out, target)
        assert got.get("shapes") == ran["shapes"], f"the target runs, the output does not as it: {got}"


def _check_report(stdout: str, as_json: bool, command: str, rc: int) -> None:
    assert stdout.strip(), f"{command}: exit {rc} with nothing on stdout"
    if as_json:
        data = json.loads(stdout)
        assert isinstance(data, dict) and data
        if command == "validate":
            assert data["ok"] is (rc == 0) and data["checks"]
    elif command == "validate":
        last = stdout.strip().splitlines()[-1]
        assert (last.endswith(": valid") if rc == 0 else ": INVALID: " in last), stdout


def _check(case: Path, argv: list[str], worker: OrtWorker | None = None, target: Path | None = None) -> int:
    """Run one fuzzed command in ``case`` and check its answer (see the module docstring)."""
    command = argv[0]
    as_json = "--json" in argv
    out = case / ("out.safetensors" if command == "extract" else "out.onnx")
    if command in ("transfer", "init"):
        argv = argv + ["-o", str(out), "--no-validate", "-q"]
    elif command == "extract":
        argv = argv + ["-o", str(out)]
    else:
        out = None
    before = _digests(case)
    stdout: list[str] = []
    rc, err = run_cli(argv, stdout)
    lines = err.strip().splitlines()
    event(f"{command} exit {rc}")
    assert rc != 1 and "internal error" not in err and "Traceback" not in err, f"internal error: {err}"
    assert rc in DOCUMENTED_EXITS, f"undocumented exit {rc}: {err}"
    assert rc in EXITS[command], f"{command} cannot exit {rc}: {err}"
    after = _digests(case)
    assert {k: after.get(k) for k in before} == before, f"an input changed: {argv}"
    new = set(after) - set(before)
    if rc == 3:
        assert len(lines) == 1 and lines[0].startswith("front-onnx: error: "), err
        assert not new, f"left behind: {new}"
        return rc
    assert not new - ({out.name, out.name + ".data"} if out is not None and rc == 0 else set()), \
        f"left behind: {new}"
    if command in ("transfer", "init"):
        assert out.name in new, "exit 0 without an output"
        assert worker is not None and target is not None
        _check_model_output(out, target, worker)
    elif command == "extract":
        assert out.name in new and stdout[0].strip(), "exit 0 without a learngene or a summary line"
        api.Learngene.load(out)
    else:
        assert not lines, err
        _check_report(stdout[0], as_json, command, rc)
    return rc


def _case_dir(corpus: Path) -> Path:
    case = Path(tempfile.mkdtemp(prefix="case-", dir=corpus.parent))
    for f in corpus.iterdir():
        shutil.copy(f, case / f.name)
    return case


@FUZZ
@given(which=st.sampled_from(["tgt.onnx", "tgt.onnx.data", "src.onnx"]), mutation=_bytes_mutation())
def test_fuzz_bytes(corpus, ort_worker, which, mutation):
    case = _case_dir(corpus)
    try:
        f = case / which
        f.write_bytes(_damage(f.read_bytes(), mutation))
        _check(case, ["transfer", str(case / "src.onnx"), str(case / "tgt.onnx"), "--keep", "0.5"],
               ort_worker, case / "tgt.onnx")
    finally:
        shutil.rmtree(case)


@FUZZ
@given(which=st.sampled_from(["tgt.onnx", "src.onnx"]), mutation=_field_mutation())
def test_fuzz_fields(corpus, ort_worker, which, mutation):
    case = _case_dir(corpus)
    try:
        _edit_model(case / which, mutation)
        _check(case, ["transfer", str(case / "src.onnx"), str(case / "tgt.onnx"), "--keep", "0.5"],
               ort_worker, case / "tgt.onnx")
    finally:
        shutil.rmtree(case)


@FUZZ
@given(mutation=st.one_of(st.tuples(st.just("bytes"), _bytes_mutation()), st.tuples(st.just("json"), _gene_mutation())))
def test_fuzz_learngene(corpus, ort_worker, mutation):
    case = _case_dir(corpus)
    try:
        gene = case / "gene.safetensors"
        if mutation[0] == "bytes":
            gene.write_bytes(_damage(gene.read_bytes(), mutation[1]))
        else:
            _edit_gene(gene, mutation[1])
        _check(case, ["init", str(case / "tgt.onnx"), "--learngene", str(gene)], ort_worker, case / "tgt.onnx")
    finally:
        shutil.rmtree(case)


# (command, the file damaged): each command with the files it reads
_READERS = [("extract", "src.onnx"), ("inspect", "tgt.onnx"), ("inspect", "tgt.onnx.data"), ("inspect", "src.onnx"),
            ("plan", "tgt.onnx"), ("plan", "tgt.onnx.data"), ("plan", "src.onnx"),
            ("validate", "tgt.onnx"), ("validate", "tgt.onnx.data"), ("validate", "src.onnx")]


@FUZZ
@given(reader=st.sampled_from(_READERS), as_json=st.booleans(),
       mutation=st.one_of(st.tuples(st.just("bytes"), _bytes_mutation()),
                          st.tuples(st.just("fields"), _field_mutation())))
def test_fuzz_commands(corpus, reader, as_json, mutation):
    """extract, inspect, plan and validate on damaged models."""
    command, which = reader
    case = _case_dir(corpus)
    try:
        if mutation[0] == "bytes":
            f = case / which
            f.write_bytes(_damage(f.read_bytes(), mutation[1]))
        else:
            _edit_model(case / which.removesuffix(".data"), mutation[1])
        model = case / which.removesuffix(".data")
        argv = {"extract": ["extract", str(case / "src.onnx"), "--keep", "0.5"],
                "inspect": ["inspect", str(model)],
                "plan": ["plan", str(case / "src.onnx"), str(case / "tgt.onnx")],
                "validate": ["validate", str(model), "--device", "cpu"]}[command]
        _check(case, argv + (["--json"] if as_json and command != "extract" else []))
    finally:
        shutil.rmtree(case)


def test_fuzz_guard_catches_hangs():
    """The per-case time limit works (a hang is reported, not waited for)."""
    import time

    global CASE_SECONDS
    saved = CASE_SECONDS
    CASE_SECONDS = 1
    try:
        with pytest.raises(Hang):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(cli, "main", lambda argv: time.sleep(5))
                run_cli([])
    finally:
        CASE_SECONDS = saved


# --------------------------------------------------------------------------- findings (regressions)

def test_finding_name_not_utf8(tmp_path):
    """Fuzz finding: a bit flip inside a node name made it invalid UTF-8; protobuf handed out
    bytes and the graph analysis crashed (exit 1). Now refused at load (exit 3)."""
    from tests.graphs import mlp_stack

    good = tmp_path / "good.onnx"
    onnx.save(mlp_stack(8, 2, seed=0), str(good))
    raw = good.read_bytes()
    assert b"/blocks.0/fc1/MatMul" in raw
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(raw.replace(b"/blocks.0/fc1/MatMul", b"/blocks.0/fc1\xafMatMul"))
    rc, err = run_cli(["transfer", str(good), str(bad), "-o", str(tmp_path / "o.onnx")])
    assert rc == 3 and "not valid UTF-8" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("key,value", [("structure", None), ("skipped", [1]), ("keep", 0), ("keep", float("nan")),
                                       ("convention", None), ("convention", "fft"), ("structure", [{"sig": 1}])])
def test_finding_learngene_metadata_types(corpus, tmp_path, key, value):
    """Fuzz finding: a learngene whose 'structure' was null crashed the loader (exit 1)."""
    gene = tmp_path / "g.safetensors"
    shutil.copy(corpus / "gene.safetensors", gene)
    keys = sorted(json.loads(json.loads(gene.read_bytes()[8:8 + int.from_bytes(gene.read_bytes()[:8], "little")])
                             ["__metadata__"]["front_onnx"]))
    _edit_gene(gene, ("set", keys.index(key), 0, value))
    rc, err = run_cli(["init", str(corpus / "tgt.onnx"), "--learngene", str(gene), "-o", str(tmp_path / "o.onnx")])
    assert rc == 3 and "corrupted learngene" in err, err


def test_finding_node_without_output(tmp_path):
    """Fuzz finding: a bit flip turned a MatMul's output field into another field; the node
    had no output and the layout analysis crashed (IndexError, exit 1). Now refused at load."""
    from tests.graphs import mlp_stack

    good = tmp_path / "good.onnx"
    m = mlp_stack(8, 2, seed=0)
    onnx.save(m, str(good))
    del m.graph.node[2].output[:]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(m.SerializeToString())
    rc, err = run_cli(["transfer", str(good), str(bad), "-o", str(tmp_path / "o.onnx")])
    assert rc == 3 and "has no output" in err and len(err.strip().splitlines()) == 1, err
