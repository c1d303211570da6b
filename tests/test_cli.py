"""The front-onnx command line: the contract spellings, outputs and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from front_onnx.cli import EXIT_INPUT, EXIT_USAGE, main
from tests.conftest import file_digests




def test_transfer_and_report(pair, tmp_path, capsys):
    src, tgt = pair
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--keep", "0.5", "--report", str(rep)]) == 0
    line = capsys.readouterr().out.strip()
    assert "slots written" in line and str(out) in line
    report = json.loads(rep.read_text())
    assert report["keep"] == 0.5 and report["summary"]["written_fraction"] == 1.0
    assert {s["status"] for s in report["slots"]} == {"written"}
    from front_onnx.api import DEFAULT_DEPTH
    assert report["depth"] == DEFAULT_DEPTH  # the default
    assert any("depth: identity 4->6" in op for s in report["slots"] for op in s["operations"])
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--keep", "0.5", "--depth", "spectral",
                 "--report", str(rep), "-q"]) == 0
    assert any("depth: pad 4->6" in op for s in json.loads(rep.read_text())["slots"] for op in s["operations"])


def _same_model(a: Path, b: Path, exact: bool) -> None:
    """The same graph; weights equal (``exact``: the same bytes) or equal to the rounding of a
    float32 spectrum (selection: ``transfer`` copies the source's units, ``init`` reads them
    back from the learngene's spectrum)."""
    if exact:
        assert a.read_bytes() == b.read_bytes()
        return
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    wa = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=1e-6 * max(float(np.abs(wb[k]).max()), 1e-30))
    del ma.graph.initializer[:], mb.graph.initializer[:]
    assert ma == mb


@pytest.mark.parametrize("align,method", [(None, None), ("none", None), ("smooth", None), (None, "front")])
def test_extract_then_init_equals_transfer(pair, tmp_path, align, method):
    """The same model in one step or two, with the source's units ordered alike: the default
    transfer of this pair (narrower: something is selected) orders them by importance, which
    ``extract --align importance`` records in the learngene. The transform alone: the same bytes."""
    src, tgt = pair
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gene = tmp_path / "g.safetensors"
    flag = ([] if align is None else [f"--align={align}"]) + ([] if method is None else [f"--method={method}"])
    assert main(["transfer", str(src), str(tgt), "-o", str(tmp_path / "a" / "o.onnx"), "-q", *flag]) == 0
    order = align or ("importance" if method is None else "none")
    assert main(["extract", str(src), "-o", str(gene), "-q", f"--align={order}"]) == 0
    assert main(["init", str(tgt), "--learngene", str(gene), "-o", str(tmp_path / "b" / "o.onnx"), "-q",
                 *([] if method is None else [f"--method={method}"])]) == 0
    _same_model(tmp_path / "a" / "o.onnx", tmp_path / "b" / "o.onnx", exact=method == "front")


def test_plan_json_and_table(pair, tmp_path, capsys):
    src, tgt = pair
    assert main(["plan", str(src), str(tgt), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["weight_slots"] == len([s for s in data["slots"] if s["role"]])
    assert main(["plan", str(src), str(tgt)]) == 0
    table = capsys.readouterr().out
    assert ":linear.weight" in table and "depth: identity 4->6" in table and "weight elements written" in table
    gene = tmp_path / "g.safetensors"  # ordered as the transfer orders the source (it selects the loose layers)
    assert main(["extract", str(src), "-o", str(gene), "-q", "--align=importance"]) == 0
    assert main(["plan", str(gene), str(tgt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["slots"] == data["slots"]


@pytest.mark.parametrize("make_bad,needle", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"this is not a protobuf \xff\xfe"), "not an ONNX model"),
    (lambda p: p.write_bytes(b""), "not an ONNX model"),
])
def test_bad_source_is_one_line(pair, tmp_path, capsys, make_bad, needle):
    _, tgt = pair
    bad = tmp_path / "bad.onnx"
    make_bad(bad)
    assert main(["transfer", str(bad), str(tgt), "-o", str(tmp_path / "o.onnx")]) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and needle in err
    assert not (tmp_path / "o.onnx").exists()


def test_output_onto_input_refused(pair, capsys):
    src, tgt = pair
    before = file_digests(src, tgt)
    assert main(["transfer", str(src), str(tgt), "-o", str(tgt)]) == EXIT_INPUT
    assert "input" in capsys.readouterr().err
    assert file_digests(src, tgt) == before


def test_bad_learngene(pair, tmp_path, capsys):
    _, tgt = pair
    gene = tmp_path / "g.safetensors"
    gene.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert main(["init", str(tgt), "--learngene", str(gene), "-o", str(tmp_path / "o.onnx")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert str(gene) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("keep", ["0", "1.5", "abc"])
def test_bad_keep_is_usage_error(pair, tmp_path, keep):
    src, tgt = pair
    with pytest.raises(SystemExit) as e:
        main(["transfer", str(src), str(tgt), "-o", str(tmp_path / "o.onnx"), "--keep", keep])
    assert e.value.code == EXIT_USAGE


def test_module_entry_point(pair, tmp_path):
    src, tgt = pair
    r = subprocess.run([sys.executable, "-m", "front_onnx", "transfer", str(src), str(tgt), "-o",
                        str(tmp_path / "o.onnx")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "slots written" in r.stdout
