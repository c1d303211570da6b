"""Hostile and broken inputs: every case exits with a documented code and ONE stderr line
naming the file and the problem (docs/cli.md, "Exit codes and refused inputs")."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from front_onnx.cli import EXIT_INPUT, main
from tests.graphs import IR_VERSION




def one_line(capsys, rc: int, code: int, *needles: str) -> str:
    """Assert exit ``code`` and a single stderr line holding every needle; return it."""
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("front-onnx: error: "), err
    for n in needles:
        assert n in lines[0], (n, err)
    return lines[0]


def _commands(bad: Path, other: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads ``bad`` as a model (as source or target where both exist)."""
    gene = out.parent / "g.safetensors"
    return {
        "transfer-source": ["transfer", str(bad), str(other), "-o", str(out)],
        "transfer-target": ["transfer", str(other), str(bad), "-o", str(out)],
        "extract": ["extract", str(bad), "-o", str(gene)],
        "plan": ["plan", str(bad), str(other)],
        "inspect": ["inspect", str(bad)],
        "validate": ["validate", str(bad)],
    }


COMMANDS = ["transfer-source", "transfer-target", "extract", "plan", "inspect", "validate"]


def _run_all(capsys, bad: Path, other: Path, tmp_path: Path, *needles: str) -> None:
    out = tmp_path / "out" / "o.onnx"
    for name, argv in _commands(bad, other, out).items():
        rc = main(argv)
        one_line(capsys, rc, EXIT_INPUT, str(bad), *needles)
        assert not out.exists(), name


# ----------------------------------------------------------------- not ONNX, corrupted protobuf

@pytest.mark.parametrize("content", [b"hello, this is text\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b""],
                         ids=["text", "png", "empty"])
def test_not_onnx(pair, tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    _run_all(capsys, bad, pair[1], tmp_path, "not an ONNX model")


@pytest.mark.parametrize("how", ["truncated", "bitflips"])
def test_corrupted_protobuf(pair, tmp_path, capsys, how):
    raw = bytearray(pair[0].read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        for i in range(100, len(raw), 97):
            raw[i] ^= 0xFF
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(raw))
    _run_all(capsys, bad, pair[1], tmp_path, "not an ONNX model")


# ----------------------------------------------------------------- external data

@pytest.fixture
def ext_src(pair, tmp_path):
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(onnx.load(pair[0]), d / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    return d / "m.onnx"


def test_external_data_missing(pair, ext_src, tmp_path, capsys):
    (ext_src.parent / "m.onnx.data").unlink()
    _run_all(capsys, ext_src, pair[1], tmp_path, "external data file", "not found")


def test_external_data_short(pair, ext_src, tmp_path, capsys):
    data = ext_src.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    _run_all(capsys, ext_src, pair[1], tmp_path, "external data file", "too short")


def _set_location(model: Path, location: str) -> None:
    m = onnx.load(model, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, model)


@pytest.mark.parametrize("location,needle", [
    ("/etc/passwd", "is absolute"),
    ("../outside.data", "points outside the model's directory"),
    ("sub/../../outside.data", "points outside the model's directory"),
    ("link.data", "resolves outside the model's directory"),
])
def test_external_location_escapes(pair, ext_src, tmp_path, capsys, monkeypatch, location, needle):
    outside = tmp_path / "outside.data"
    shutil.copy(ext_src.parent / "m.onnx.data", outside)  # a valid file: refused anyway, never followed
    if location == "link.data":
        os.symlink(outside, ext_src.parent / "link.data")
    _set_location(ext_src, location)
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(os.path.realpath(file) if isinstance(file, (str, Path)) else file)
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    _run_all(capsys, ext_src, pair[1], tmp_path, needle)
    assert str(outside) not in opened and "/etc/passwd" not in opened


# ----------------------------------------------------------------- declared shape vs data

def _edit_first(src: Path, dst: Path, edit) -> Path:
    m = onnx.load(src)
    edit(m.graph.initializer[0])
    onnx.save(m, dst)
    return dst


def _short_raw(t):
    t.raw_data = t.raw_data[:-4]


def _short_typed(t):
    a = numpy_helper.to_array(t)
    t.ClearField("raw_data")
    t.float_data.extend(a.ravel()[:-3].tolist())


def _no_data(t):
    t.ClearField("raw_data")


@pytest.mark.parametrize("edit,needle", [
    (_short_raw, "but raw_data has 60"),
    (_short_typed, "but float_data has 13"),
    (_no_data, "but float_data has 0"),
], ids=["raw_data", "typed", "no-data"])
def test_shape_and_data_disagree(pair, tmp_path, capsys, edit, needle):
    bad = _edit_first(pair[0], tmp_path / "bad.onnx", edit)
    _run_all(capsys, bad, pair[1], tmp_path, "tensor 'blocks.0.norm.weight'", "declared shape [16]", needle)


def test_external_length_disagrees(pair, ext_src, tmp_path, capsys):
    m = onnx.load(ext_src, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(int(e.value) - 4)
    onnx.save(m, ext_src)
    _run_all(capsys, ext_src, pair[1], tmp_path, "needs 64 bytes but the external data length is 60")


def _huge(t):
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20, 1 << 10])


@pytest.mark.parametrize("external", [False, True])
def test_absurd_declared_size_refused_before_allocating(pair, ext_src, tmp_path, capsys, monkeypatch, external):
    if external:
        m = onnx.load(ext_src, load_external_data=False)
        _huge(m.graph.initializer[0])
        for e in m.graph.initializer[0].external_data:
            if e.key == "length":
                e.value = str(4 << 50)
        onnx.save(m, ext_src)
        bad = ext_src
    else:
        bad = _edit_first(pair[0], tmp_path / "bad.onnx", _huge)

    def no_alloc(*a, **k):  # nothing may allocate or map the declared size
        raise AssertionError("allocation attempted")

    monkeypatch.setattr(np, "memmap", no_alloc)
    _run_all(capsys, bad, pair[1], tmp_path, "would need 4503599627370496 bytes", "over the limit")


def test_size_limit_is_configurable(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FRONT_ONNX_MAX_TENSOR_BYTES", "1000")
    rc = main(["inspect", str(pair[0])])
    one_line(capsys, rc, EXIT_INPUT, str(pair[0]), "over the limit of 1000 bytes")


# ----------------------------------------------------------------- NaN / Inf in source weights

def _poison(src: Path, dst: Path, name_start: str, value: float) -> tuple[Path, str]:
    m = onnx.load(src)
    t = next(t for t in m.graph.initializer if t.name.startswith(name_start))
    a = numpy_helper.to_array(t).copy()
    a.flat[3] = value
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, dst)
    return dst, t.name


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("command", ["transfer", "extract", "plan"])
def test_nonfinite_source_refused(pair, tmp_path, capsys, value, command):
    bad, name = _poison(pair[0], tmp_path / "bad.onnx", "onnx::MatMul", value)
    out = tmp_path / "o.onnx"
    argv = {"transfer": ["transfer", str(bad), str(pair[1]), "-o", str(out)],
            "extract": ["extract", str(bad), "-o", str(tmp_path / "g.safetensors")],
            "plan": ["plan", str(bad), str(pair[1])]}[command]
    one_line(capsys, main(argv), EXIT_INPUT, str(bad), "non-finite values (NaN/Inf)", repr(name),
             "--allow-nonfinite")
    assert not out.exists() and not (tmp_path / "g.safetensors").exists()


def test_nonfinite_allowed_is_skipped_and_reported(pair, tmp_path, capsys):
    bad, name = _poison(pair[0], tmp_path / "bad.onnx", "onnx::MatMul", np.nan)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["transfer", str(bad), str(pair[1]), "-o", str(out), "--report", str(rep),
                 "--allow-nonfinite"]) == 0
    report = json.loads(rep.read_text())
    left = [s for s in report["slots"] if s["status"] == "left"]
    assert left and all("non-finite" in s["reason"] and name in s["reason"] for s in left)
    assert report["summary"]["written"] > 0
    gene = tmp_path / "g.safetensors"
    capsys.readouterr()
    assert main(["extract", str(bad), "-o", str(gene), "--allow-nonfinite"]) == 0
    out_text = capsys.readouterr().out
    assert "1 skipped" in out_text and "non-finite" in out_text and name in out_text
    assert main(["plan", str(bad), str(pair[1]), "--allow-nonfinite"]) == 0
    assert "LEFT: non-finite values (NaN/Inf)" in capsys.readouterr().out


# ----------------------------------------------------------------- no float weights

def _int_only(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    g = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y],
                          [numpy_helper.from_array(np.array([1, 2], np.int64), "c")])
    onnx.save(helper.make_model(g, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("command", ["transfer-source", "transfer-target", "extract", "init"])
def test_no_float_weights(pair, tmp_path, capsys, command):
    bad = _int_only(tmp_path / "ints.onnx")
    out = tmp_path / "o.onnx"
    gene = tmp_path / "g.safetensors"
    if command == "init":
        assert main(["extract", str(pair[0]), "-o", str(gene), "-q"]) == 0
    argv = {"transfer-source": ["transfer", str(bad), str(pair[1]), "-o", str(out)],
            "transfer-target": ["transfer", str(pair[0]), str(bad), "-o", str(out)],
            "extract": ["extract", str(bad), "-o", str(gene)],
            "init": ["init", str(bad), "--learngene", str(gene), "-o", str(out)]}[command]
    one_line(capsys, main(argv), EXIT_INPUT, str(bad), "no float weights")
    assert not out.exists()


# ----------------------------------------------------------------- families that do not fit

@pytest.fixture(scope="module")
def families(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.conftest import SampleCache

    c = SampleCache(tmp_path_factory.mktemp("families"))
    return {"vit-src": c.get("vit", "base", "dynamo", source=True),
            "gpt-src": c.get("gpt", "base", "dynamo", source=True),
            "resnet": c.get("resnet", "narrow", "dynamo"),
            "vit": c.get("vit", "narrow", "dynamo")}


def test_different_families_refused(families, tmp_path, capsys):
    src, tgt, out = families["vit-src"], families["resnet"], tmp_path / "o.onnx"
    rc = main(["transfer", str(src), str(tgt), "-o", str(out)])
    one_line(capsys, rc, EXIT_INPUT, str(tgt), str(src), "share nothing", "first divergence: target segment 0")
    assert not out.exists()
    gene = tmp_path / "vit.safetensors"
    assert main(["extract", str(src), "-o", str(gene), "-q"]) == 0
    rc = main(["init", str(tgt), "--learngene", str(gene), "-o", str(out)])
    one_line(capsys, rc, EXIT_INPUT, str(tgt), str(gene), "share nothing", "first divergence")
    assert not out.exists()
    # plan shows what would happen, with the divergence, and gives transfer's verdict (exit 3)
    assert main(["plan", str(src), str(tgt)]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert "structures diverge" in captured.out and "share nothing" in captured.err


def test_partial_overlap_allowed(families, tmp_path, capsys):
    """A GPT source into a ViT: the transformer blocks match, the stem and head do not. Allowed,
    the divergence is reported in the plan."""
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["transfer", str(families["gpt-src"]), str(families["vit"]), "-o", str(out), "--report", str(rep),
                 "-q", "--no-validate"]) == 0
    report = json.loads(rep.read_text())
    assert report["summary"]["written"] > 0 and report["summary"]["left"] > 0 and report["divergence"]


def test_nothing_writable_refused(pair, tmp_path, capsys):
    """A learngene whose every template is of another shape family: 0 slots written."""
    from front_onnx.method.learngene import Learngene

    gene = tmp_path / "g.safetensors"
    assert main(["extract", str(pair[0]), "-o", str(gene), "-q"]) == 0
    g = Learngene.load(gene)
    g.templates = {k + "x": t for k, t in g.templates.items()}  # keys no target has
    for t in g.templates.values():
        t.key += "x"
    g.save(gene)
    out = tmp_path / "o.onnx"
    rc = main(["init", str(pair[1]), "--learngene", str(gene), "-o", str(out)])
    one_line(capsys, rc, EXIT_INPUT, str(pair[1]), str(gene), "no target parameter can be written")
    assert not out.exists()


# ----------------------------------------------------------------- learngene files

def _gene(pair, tmp_path) -> Path:
    gene = tmp_path / "g.safetensors"
    assert main(["extract", str(pair[0]), "-o", str(gene), "-q"]) == 0
    return gene


def _rewrite_meta(raw: bytes, edit) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["front_onnx"])
    edit(meta)
    header["__metadata__"]["front_onnx"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return len(new).to_bytes(8, "little") + new + raw[8 + n:]


def _flip_header(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[20] ^= 0x40
    return bytes(b)


def _flip_data(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[-10] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("corrupt,needle", [
    (lambda raw: raw[: len(raw) // 2], "not a learngene file"),
    (lambda raw: raw[:5], "not a learngene file"),
    (_flip_header, "not a learngene file"),
    (_flip_data, "do not match the stored checksum"),
    (lambda raw: _rewrite_meta(raw, lambda m: m.update(format_version=2)), "format version 2 is not supported"),
    (lambda raw: _rewrite_meta(raw, lambda m: m.update(format="other")), "not a front-onnx learngene"),
    (lambda raw: _rewrite_meta(raw, lambda m: m["templates"][0].update(kept=[9, 9])), "corrupted learngene"),
], ids=["truncated", "tiny", "header-bitflip", "data-bitflip", "version", "format", "metadata"])
@pytest.mark.parametrize("command", ["init", "plan"])
def test_bad_learngene(pair, tmp_path, capsys, corrupt, needle, command):
    gene = _gene(pair, tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corrupt(gene.read_bytes()))
    out = tmp_path / "o.onnx"
    argv = (["init", str(pair[1]), "--learngene", str(bad), "-o", str(out)] if command == "init"
            else ["plan", str(bad), str(pair[1])])
    one_line(capsys, main(argv), EXIT_INPUT, str(bad), needle)
    assert not out.exists()


def test_learngene_of_another_family(families, tmp_path, capsys):
    gene = tmp_path / "gpt.safetensors"
    assert main(["extract", str(families["gpt-src"]), "-o", str(gene), "-q"]) == 0
    out = tmp_path / "o.onnx"
    rc = main(["init", str(families["resnet"]), "--learngene", str(gene), "-o", str(out)])
    one_line(capsys, rc, EXIT_INPUT, str(families["resnet"]), str(gene), "first divergence")
    assert not out.exists()
