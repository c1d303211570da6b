"""Reliability guarantees (docs/reliability.md): outputs never overwrite inputs, are written
atomically and survive SIGKILL at any point without partial files; concurrent runs into one
directory do not interfere; outputs are byte-identical across runs, processes, hash seeds and
the target's storage (inline or external data); the learngene loader executes no code."""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import front_onnx
from front_onnx.errors import LearngeneError
from front_onnx.method.learngene import Learngene
from tests.conftest import ROOT, file_digests
from tests.graphs import mlp_stack


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "front_onnx", *args]


def _env(seed: str = "0") -> dict[str, str]:
    return dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))


def _run_all(cmds: list[tuple[list[str], dict]], timeout: float = 120) -> None:
    """Run commands in parallel; each must succeed."""
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c, e in cmds]
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _listing(d: Path) -> dict[str, str]:
    return {f.name: _sha(f) for f in sorted(d.iterdir()) if f.is_file()}


# --------------------------------------------------------------------------- determinism

def test_deterministic_across_processes_and_hash_seeds(samples, tmp_path):
    """transfer and extract in separate processes with PYTHONHASHSEED 0, 1 and random give
    byte-identical .onnx, .onnx.data and learngene files (in-process repeat: test_transfer.py)."""
    src = samples.get("vit", "base", "dynamo", source=True)
    tgt = samples.get("vit", "deep", "dynamo")
    cmds = []
    for seed in ("0", "1", "random"):
        d = tmp_path / seed
        d.mkdir()
        cmds.append((_cli("transfer", str(src), str(tgt), "-o", str(d / "o.onnx"), "--keep", "0.5",
                          "--no-validate", "-q"), _env(seed)))
        cmds.append((_cli("extract", str(src), "-o", str(d / "g.safetensors"), "--keep", "0.5", "-q"), _env(seed)))
    _run_all(cmds)
    listings = [_listing(tmp_path / seed) for seed in ("0", "1", "random")]
    assert set(listings[0]) == {"o.onnx", "o.onnx.data", "g.safetensors"}
    assert listings[0] == listings[1] == listings[2]


@pytest.mark.parametrize("external", [True, False])
def test_same_output_for_inline_and_external_target(samples, tmp_path, external):
    """The same target stored inline or with external data gives the same output bytes."""
    src = samples.get("vit", "base", "legacy", source=True)
    m = onnx.load(str(samples.get("vit", "narrow", "dynamo")))
    for name, ext in (("inline", False), ("ext", True)):
        (tmp_path / name).mkdir()
        onnx.save(m, str(tmp_path / name / "t.onnx"), save_as_external_data=ext, location="t.onnx.data")
    assert not (tmp_path / "inline" / "t.onnx.data").exists() and (tmp_path / "ext" / "t.onnx.data").exists()
    outs = []
    for name in ("inline", "ext"):
        out = tmp_path / f"out-{name}" / "o.onnx"
        front_onnx.transfer(src, tmp_path / name / "t.onnx", out, keep=0.5, external_data=external)
        outs.append(_listing(out.parent))
    assert outs[0] == outs[1]
    assert ("o.onnx.data" in outs[0]) == external


# --------------------------------------------------------------------------- output safety

def test_cli_refuses_output_onto_an_input(samples, tmp_path):
    """-o naming an input (directly, through a symlink, or whose OUTPUT.data is an input's data) exits 3."""
    src = samples.get("vit", "base", "legacy", source=True)
    tgt = tmp_path / "t.onnx"
    onnx.save(onnx.load(str(samples.get("vit", "narrow", "dynamo"))), str(tgt), save_as_external_data=True,
              location="t.onnx.data")
    (tmp_path / "link.onnx").symlink_to(tgt)
    before = file_digests(src, tgt)
    for out in (tgt, src, tmp_path / "link.onnx"):
        r = subprocess.run(_cli("transfer", str(src), str(tgt), "-o", str(out), "--no-validate"), env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert file_digests(src, tgt) == before
    assert sorted(os.listdir(tmp_path)) == ["link.onnx", "t.onnx", "t.onnx.data"]


# --------------------------------------------------------------------------- crash safety

@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A small source and a ~160 MB target (external data): writing its output takes about a second."""
    d = tmp_path_factory.mktemp("big")
    onnx.save(mlp_stack(128, 4, seed=0), str(d / "src.onnx"))
    onnx.save(mlp_stack(1024, 10, seed=1), str(d / "tgt.onnx"), save_as_external_data=True, location="tgt.onnx.data")
    return d


def _transfer_cmd(big: Path, out: Path) -> list[str]:
    return _cli("transfer", str(big / "src.onnx"), str(big / "tgt.onnx"), "-o", str(out), "--no-validate", "-q")


def _temps(d: Path) -> list[str]:
    """The files being written: they live in hidden ``.NAME.*.tmp`` folders next to the output."""
    out = []
    for n in os.listdir(d):
        if n.endswith(".tmp"):
            try:
                out.extend(f"{n}/{f}" for f in os.listdir(d / n))
            except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
                pass
    return sorted(out)


def _kill_when(cmd: list[str], out_dir: Path, when) -> int | None:
    """Start cmd, SIGKILL it as soon as when(elapsed seconds) is true; None if it finished first."""
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while p.poll() is None:
            if when(time.monotonic() - t0):
                p.send_signal(signal.SIGKILL)
                p.wait()
                return p.returncode
            time.sleep(0.002)
        return None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _data_temp_size(d: Path) -> int:
    sizes = []
    for n in _temps(d):
        if n.endswith(".data"):
            try:
                sizes.append(os.stat(d / n).st_size)
            except FileNotFoundError:  # renamed into place meanwhile
                pass
    return max(sizes, default=-1)


KILL_POINTS = {
    "at 0.3 s": lambda d: (lambda t: t >= 0.3),
    "data temp appears": lambda d: (lambda t: _data_temp_size(d) >= 0),
    "data temp at 40 MB": lambda d: (lambda t: _data_temp_size(d) >= 40 << 20),
    "data temp at 120 MB": lambda d: (lambda t: _data_temp_size(d) >= 120 << 20),
    "onnx temp appears": lambda d: (lambda t: any(n.endswith(".onnx") for n in _temps(d))),
}


def test_sigkill_during_a_large_write(big, tmp_path):
    """SIGKILL at several points of a ~160 MB write: the inputs keep their bytes, nothing appears
    at the output path (nor OUTPUT.data), an existing output keeps its bytes, and what remains is
    only hidden `.o.onnx.*.tmp` folders, which a later run ignores (and which are safe to delete)."""
    inputs = file_digests(big / "src.onnx", big / "tgt.onnx")
    killed = 0
    for i, (name, make) in enumerate(KILL_POINTS.items()):
        d = tmp_path / f"k{i}"
        d.mkdir()
        out = d / "o.onnx"
        rc = _kill_when(_transfer_cmd(big, out), d, make(d))
        if rc is None:  # finished before the kill point (a fast machine): a complete output
            assert out.exists() and (d / "o.onnx.data").exists()
            continue
        killed += 1
        assert rc == -signal.SIGKILL, name
        assert not out.exists() and not (d / "o.onnx.data").exists(), name
        leftovers = os.listdir(d)
        assert all(n.startswith(".o.onnx.") and n.endswith(".tmp") for n in leftovers), (name, leftovers)
    assert killed >= 3
    assert file_digests(big / "src.onnx", big / "tgt.onnx") == inputs

    # A complete run next to the leftovers of a killed one: it succeeds and ignores them.
    d = tmp_path / "k2"
    leftovers = set(os.listdir(d))
    subprocess.run(_transfer_cmd(big, d / "o.onnx"), env=_env(), check=True, timeout=120)
    assert set(os.listdir(d)) == leftovers | {"o.onnx", "o.onnx.data"}
    ref = file_digests(d / "o.onnx")

    # Killed while replacing an existing output: the old output keeps its bytes.
    for name in ("data temp at 40 MB", "at 0.3 s"):
        rc = _kill_when(_transfer_cmd(big, d / "o.onnx"), d, KILL_POINTS[name](d))
        assert file_digests(d / "o.onnx") == ref, name
    assert file_digests(big / "src.onnx", big / "tgt.onnx") == inputs


def test_concurrent_runs_into_one_directory(samples, tmp_path):
    """Two runs writing different outputs into one directory at the same time both succeed and
    equal their results when run one after the other."""
    src = samples.get("vit", "base", "dynamo", source=True)
    tgt = samples.get("vit", "wide", "dynamo")
    args = lambda out: _cli("transfer", str(src), str(tgt), "-o", str(out), "--no-validate", "-q")  # noqa: E731
    for d in ("together", "apart"):
        (tmp_path / d).mkdir()
    _run_all([(args(tmp_path / "together" / n), _env()) for n in ("a.onnx", "b.onnx")])
    for n in ("a.onnx", "b.onnx"):
        _run_all([(args(tmp_path / "apart" / n), _env())])
    together, apart = _listing(tmp_path / "together"), _listing(tmp_path / "apart")
    assert set(together) == {"a.onnx", "a.onnx.data", "b.onnx", "b.onnx.data"}
    assert together == apart
    assert not [n for n in os.listdir(tmp_path / "together") if n.startswith(".")]


# --------------------------------------------------------------------------- the learngene loader

@pytest.fixture(scope="module")
def gene_file(samples, tmp_path_factory):
    p = tmp_path_factory.mktemp("gene") / "g.safetensors"
    front_onnx.extract(samples.get("vit", "base", "legacy", source=True), keep=0.5).save(p)
    return p


def _rewrite(p: Path, out: Path, edit_header) -> Path:
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit_header(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    out.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])
    return out


def test_learngene_loader_executes_no_code(gene_file, tmp_path, monkeypatch):
    """Loading runs no pickle, eval or exec: with them disabled a learngene still loads, and
    pickle-looking metadata is only data."""
    def forbidden(*a, **k):
        raise AssertionError("the learngene loader must not execute code")

    for mod, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (builtins, "eval"),
                      (builtins, "exec"), (builtins, "compile")):
        monkeypatch.setattr(mod, name, forbidden)
    try:
        gene = Learngene.load(gene_file)
    finally:
        monkeypatch.undo()
    assert gene.templates

    payload = {"__reduce__": ["os.system", ["touch pwned"]], "py/object": "os.system",
               "!!python/object/apply:os.system": ["touch pwned"]}

    def add_metadata(h):
        meta = json.loads(h["__metadata__"]["front_onnx"])
        meta["evil"] = payload
        meta["skipped"] = {"x": "__import__('os').system('touch pwned')"}
        meta["templates"][0]["extra"] = payload
        h["__metadata__"]["front_onnx"] = json.dumps(meta)
        h["__metadata__"]["pickle"] = pickle.dumps(os.system).hex()

    monkeypatch.chdir(tmp_path)
    g = Learngene.load(_rewrite(gene_file, tmp_path / "meta.safetensors", add_metadata))
    assert g.skipped == {"x": "__import__('os').system('touch pwned')"}
    assert len(g.templates) == len(gene.templates)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["pickle", "extra_header_key", "dtype_object", "torch_zip"])
def test_learngene_refuses_foreign_content(gene_file, tmp_path, kind):
    """A pickle, a torch-style zip, a header with a foreign tensor entry or an object dtype is
    refused with LearngeneError (safetensors rejects them); nothing runs."""
    p = tmp_path / "bad.safetensors"
    if kind == "pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))
        p.write_bytes(pickle.dumps(Evil()))
    elif kind == "extra_header_key":
        _rewrite(gene_file, p, lambda h: h.update({"__reduce__": {"dtype": "F32", "shape": [1],
                                                                  "data_offsets": [0, 4]}}))
    elif kind == "dtype_object":
        def obj(h):
            k = next(k for k in h if k != "__metadata__")
            h[k]["dtype"] = "O"
        _rewrite(gene_file, p, obj)
    else:
        p.write_bytes(b"PK\x03\x04" + pickle.dumps(os.system) + b"\x00" * 64)
    with pytest.raises(LearngeneError, match="not a learngene file"):
        Learngene.load(p)
    assert not (tmp_path / "pwned").exists()
