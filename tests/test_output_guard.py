"""No output may overwrite an input, or another output of the same command.

For every command and every output option (transfer -o/--report, init -o/--report,
extract -o, inspect --plot, weights -o, refine -o/--report), pointing the output at

- an input file of that command (models, the learngene, refine's --data and --labels),
- an input model's external data file ``X.onnx.data``,
- a symlink in another folder that points to an input file or to an input's ``.data``,
- another output of the same command (``--report`` equal to ``-o``, or to ``-o``'s
  external data file ``O.onnx.data``)

must exit 3 with exactly one stderr line naming the refused output and the file it would
overwrite, leave every input byte-identical and write nothing (every folder involved is
compared entry by entry, hidden temporary files and symlinks included). A positive control
per command shows that a fresh output path works (in an empty folder and next to the
inputs). ``front_onnx.weights`` must stay
callable across calls (importing the ``front_onnx.weights`` submodule once shadowed it).

The models are small hand-built MLP stacks (tests/graphs.py) saved with every tensor in
external data (``X.onnx.data``), copied into each test's own folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from front_onnx import cli
from tests.graphs import mlp_stack

SRC, TGT = "src.onnx", "tgt.onnx"
SRC_DATA, TGT_DATA = SRC + ".data", TGT + ".data"
GENE, NPZ, LABELS = "gene.safetensors", "data.npz", "labels.npy"
DIM_SRC, DIM_TGT, CLASSES, ROWS = 32, 16, 4, 64   # tgt weights of 2 KiB: its outputs use external data too

# command -> (its input files, its output options with the fresh default names, in folder out/)
COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "transfer": ((SRC, SRC_DATA, TGT, TGT_DATA), {"-o": "out.onnx", "--report": "plan.json"}),
    "init": ((TGT, TGT_DATA, GENE), {"-o": "out.onnx", "--report": "plan.json"}),
    "extract": ((SRC, SRC_DATA), {"-o": "extracted.safetensors"}),
    "inspect": ((SRC, SRC_DATA), {"--plot": "plot.png"}),
    "weights": ((SRC, SRC_DATA), {"-o": "weights.safetensors"}),
    "refine": ((SRC, SRC_DATA, NPZ, LABELS), {"-o": "refined.onnx", "--report": "refine.json"}),
}


def _link_name(name: str) -> str:
    """The symlink (in links/) to input ``name``; its name does not contain the input's."""
    return "via-" + name.replace(".", "_")


def _argv(command: str, d: Path, outs: dict[str, Path]) -> list[str]:
    i = d / "in"
    if command == "transfer":
        argv = ["transfer", str(i / SRC), str(i / TGT), "-q"]
    elif command == "init":
        argv = ["init", str(i / TGT), "--learngene", str(i / GENE), "-q"]
    elif command == "extract":
        argv = ["extract", str(i / SRC), "-q"]
    elif command == "inspect":
        argv = ["inspect", str(i / SRC)]
    elif command == "weights":
        argv = ["weights", str(i / SRC), "-q"]
    else:
        argv = ["refine", str(i / SRC), "--data", str(i / NPZ), "--labels", str(i / LABELS),
                "--steps", "1", "-q"]
    for opt, path in outs.items():
        argv += [opt, str(path)]
    return argv


def _cases():
    """(command, option, kind, name): kind 'input' (the input file itself), 'link' (a symlink
    in links/ to it), 'output' (another output option's path) or 'output-data' (its .data)."""
    for command, (inputs, options) in COMMANDS.items():
        for opt in options:
            for name in inputs:
                yield pytest.param(command, opt, "input", name, id=f"{command} {opt}={name}")
            for name in inputs:
                yield pytest.param(command, opt, "link", name, id=f"{command} {opt}=link-to-{name}")
        if "--report" in options:
            yield pytest.param(command, "--report", "output", "-o", id=f"{command} --report=-o")
            yield pytest.param(command, "--report", "output-data", "-o", id=f"{command} --report=-o.data")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """The input files, made once: models with external data, a learngene, refine's data."""
    d = tmp_path_factory.mktemp("guard-originals")
    for name, model in ((SRC, mlp_stack(DIM_SRC, 4, seed=0, classes=CLASSES)),
                        (TGT, mlp_stack(DIM_TGT, 6, seed=1, classes=CLASSES))):
        onnx.save_model(model, str(d / name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=0)
        assert (d / (name + ".data")).stat().st_size > 0
    rng = np.random.default_rng(0)
    np.savez(d / NPZ, x=rng.normal(size=(ROWS, DIM_SRC)).astype(np.float32))
    np.save(d / LABELS, rng.integers(0, CLASSES, size=ROWS).astype(np.int64))
    gene_dir = d / "gene"
    gene_dir.mkdir()
    assert cli.main(["extract", str(d / SRC), "-o", str(gene_dir / GENE), "-q"]) == 0
    shutil.move(str(gene_dir / GENE), str(d / GENE))
    gene_dir.rmdir()
    return d


@pytest.fixture
def ws(originals, tmp_path) -> Path:
    """This test's own copies: in/ (every input), out/ (empty), links/ (a symlink per input)."""
    for sub in ("in", "out", "links"):
        (tmp_path / sub).mkdir()
    for f in originals.iterdir():
        shutil.copy2(f, tmp_path / "in" / f.name)
        os.symlink(tmp_path / "in" / f.name, tmp_path / "links" / _link_name(f.name))
    return tmp_path


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (hidden ones too): symlinks by target, files by sha256."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = ("symlink", os.readlink(p))
            elif p.is_file():
                state[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                state[rel] = ("dir",)
    return state


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


# ----------------------------------------------------------------------------- the refusals
@pytest.mark.parametrize("command,opt,kind,name", list(_cases()))
def test_output_onto_input_or_other_output_is_refused(ws, capsys, command, opt, kind, name):
    outs = {o: ws / "out" / fresh for o, fresh in COMMANDS[command][1].items()}
    if kind == "input":
        refused, overwritten = ws / "in" / name, name
    elif kind == "link":
        refused, overwritten = ws / "links" / _link_name(name), name
    elif kind == "output":
        refused, overwritten = outs[name], outs[name].name
    else:  # the other output's external data file
        refused = Path(str(outs[name]) + ".data")
        overwritten = refused.name
    outs[opt] = refused
    argv = _argv(command, ws, outs)
    before = _snapshot(ws)
    capsys.readouterr()

    rc = cli.main(argv)
    err = capsys.readouterr().err
    after = _snapshot(ws)

    assert rc == cli.EXIT_INPUT, f"exit {rc}, expected {cli.EXIT_INPUT}; stderr: {err!r}; {_diff(before, after)}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert refused.name in lines[0] and overwritten in lines[0], \
        f"the line must name {refused.name!r} and {overwritten!r}: {lines[0]!r}"
    assert after == before, f"something was written: {_diff(before, after)}"


# ----------------------------------------------------------------------------- positive controls
@pytest.mark.parametrize("where", ["out", "in"], ids=["fresh-folder", "next-to-inputs"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_fresh_output_path_works(ws, capsys, command, where):
    """A fresh path works, in an empty folder and next to the inputs: the refusals are specific."""
    outs = {o: ws / where / f"new-{fresh}" for o, fresh in COMMANDS[command][1].items()}
    before = _snapshot(ws)
    rc = cli.main(_argv(command, ws, outs))
    err = capsys.readouterr().err
    after = _snapshot(ws)
    assert rc == cli.EXIT_OK, err
    for path in outs.values():
        assert path.is_file() and path.stat().st_size > 0, path
    if "--report" in outs:  # the input model has external data: so has -o (--report=-o.data is a real clash)
        assert Path(str(outs["-o"]) + ".data").is_file()
    written = {str(p.relative_to(ws)) + ext for p in outs.values() for ext in ("", ".data")}
    # inputs and links untouched, nothing else written (no temporary file left)
    assert {k: v for k, v in after.items() if k not in written} == before, _diff(before, after)


# ----------------------------------------------------------------------------- the Python API
def test_weights_api_stays_callable(ws):
    """Three calls of each form in one process (the bug: the second raised TypeError)."""
    import front_onnx

    src = ws / "in" / SRC
    calls = 0
    for i in range(3):
        for out in (None, ws / "out" / f"w{i}.safetensors"):
            calls += 1
            assert callable(front_onnx.weights), f"before call {calls}: front_onnx.weights is {front_onnx.weights!r}"
            nw = front_onnx.weights(src) if out is None else front_onnx.weights(src, out)
            assert len(nw.tensors) > 0
            if out is not None:
                assert out.is_file() and out.stat().st_size > 0
