"""What a pipeline and a person expect from the CLI: ``--json`` on every command (one
document on stdout, nothing else there), the validation result in ``--report``, no CUDA
line on a CPU machine unless asked, progress bars only on a terminal, and the README's
example runnable as written on the files ``make demo`` makes."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from front_onnx import api, progress
from front_onnx.cli import EXIT_INPUT, main
from front_onnx.validation.runtime import cuda_usable

ROOT = Path(__file__).resolve().parents[1]


def _doc(capsys) -> tuple[dict, str]:
    """stdout as exactly one JSON document (json.loads refuses anything around it), and stderr."""
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _no_bar(text: str) -> None:
    assert "\r" not in text and "it/s]" not in text and "template/s]" not in text, text


def test_transfer_json_is_one_document(pair, tmp_path, capsys):
    src, tgt = pair
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--report", str(rep), "--json"]) == 0
    data, err = _doc(capsys)
    assert data["command"] == "transfer" and data["ok"] is True
    assert data["output"] == str(out) and data["report"] == str(rep) and data["data_file"] is None
    assert data["summary"]["written_fraction"] == 1.0 and data["summary"]["written"] > 0
    assert isinstance(data["left_by_reason"], list) and isinstance(data["divergence"], list)
    assert data["timings"]["write_s"] > 0 and data["timings"]["validation_s"] > 0
    assert data["validation"]["ok"] is True and {c["name"] for c in data["validation"]["checks"]} >= {"run", "finite"}
    _no_bar(err)
    # without validation: the same document, validation null
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--json", "--no-validate"]) == 0
    data, _ = _doc(capsys)
    assert data["validation"] is None and data["timings"]["validation_s"] is None


def test_extract_and_init_json(pair, tmp_path, capsys):
    src, tgt = pair
    gene, out = tmp_path / "g.safetensors", tmp_path / "o.onnx"
    assert main(["extract", str(src), "-o", str(gene), "--json"]) == 0
    data, err = _doc(capsys)
    assert data["command"] == "extract" and data["output"] == str(gene)
    assert data["templates"] > 0 and data["coefficients"] > 0 and data["skipped"] == {}
    assert data["keep"] == 1.0 and data["convention"] == "ortho" and data["timings"]["extract_s"] >= 0
    _no_bar(err)
    assert main(["init", str(tgt), "--learngene", str(gene), "-o", str(out), "--json"]) == 0
    data, err = _doc(capsys)
    assert data["command"] == "init" and data["output"] == str(out) and data["validation"]["ok"] is True
    assert data["summary"]["written"] > 0
    _no_bar(err)


def test_weights_json(pair, tmp_path, capsys):
    src, _ = pair
    w = tmp_path / "w.safetensors"
    assert main(["weights", str(src), "-o", str(w), "--names", "onnx", "--json"]) == 0
    data, _ = _doc(capsys)
    assert data["command"] == "weights" and data["output"] == str(w) and data["tensors"] > 0
    assert isinstance(data["unnamed"], list) and isinstance(data["notes"], list)


def test_json_error_is_a_document_too(pair, tmp_path, capsys):
    src, _ = pair
    rc = main(["transfer", str(src), str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"), "--json"])
    assert rc == EXIT_INPUT
    data, err = _doc(capsys)
    assert data == {"command": "transfer", "ok": False, "exit_code": EXIT_INPUT, "error": data["error"]}
    assert "no such file" in data["error"] and err.startswith("front-onnx: error: ")


def test_report_holds_the_validation(pair, tmp_path, capsys):
    src, tgt = pair
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--report", str(rep), "-q"]) == 0
    report = json.loads(rep.read_text())
    assert report["validation"]["ok"] is True and report["validation"]["checks"]
    assert report["validation_seconds"] > 0 and report["slots"]  # the full plan is still there
    gene = tmp_path / "g.safetensors"
    assert main(["extract", str(src), "-o", str(gene), "-q"]) == 0
    assert main(["init", str(tgt), "--learngene", str(gene), "-o", str(out), "--report", str(rep), "-q"]) == 0
    assert json.loads(rep.read_text())["validation"]["ok"] is True
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "--report", str(rep), "-q", "--no-validate"]) == 0
    assert json.loads(rep.read_text())["validation"] is None
    assert capsys.readouterr().out == ""


def test_no_cuda_line_unless_asked(pair, tmp_path, capsys):
    if cuda_usable()[0]:
        pytest.skip("CUDA runs here: there is no fallback to report")
    src, tgt = pair
    out = tmp_path / "o.onnx"
    assert main(["transfer", str(src), str(tgt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "validation: valid; provider: CPUExecutionProvider" in text and "CUDA" not in text
    assert main(["validate", str(out), "--reference", str(tgt)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("provider: CPUExecutionProvider\n") and "CUDA" not in text
    # asked for: --verbose with auto says why CUDA was not used
    assert main(["transfer", str(src), str(tgt), "-o", str(out), "-v"]) == 0
    assert "CUDA not used" in capsys.readouterr().out
    assert main(["validate", str(out), "--verbose"]) == 0
    assert "CUDA not used" in capsys.readouterr().out


def test_progress_bars_only_when_turned_on(pair, tmp_path, capsys):
    src, tgt = pair
    assert main(["transfer", str(src), str(tgt), "-o", str(tmp_path / "a.onnx")]) == 0
    _no_bar(capsys.readouterr().err)  # captured stderr is no terminal: no bar
    with progress.shown():  # what the CLI turns on for a terminal
        api.transfer(src, tgt, tmp_path / "b.onnx", validate=True)
    err = capsys.readouterr().err
    for desc in ("extract", "materialize", "write", "validate"):
        assert f"{desc}:" in err, err
    assert not progress.enabled()


def _readme_example() -> tuple[list[str], list[str]]:
    """The README's example: the command (after the prompt) and the output lines shown."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(\$ [^`]*front-onnx transfer [^`]*)```", text)
    assert block, "README has no front-onnx transfer example"
    lines = block.group(1).strip().splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("$ front-onnx "))
    return shlex.split(lines[k][2:]), lines[k + 1:]


def _timeless(line: str) -> str:
    return re.sub(r"\d+\.\d+ (m?s)", r"T \1", line)


def test_readme_example_runs_as_written(samples, tmp_path, monkeypatch, capsys):
    """The README's command on the files `make demo` writes (demo-out/source.onnx: the base
    sample ViT, dynamo; demo-out/targets/narrow.onnx: half width, legacy exporter), built as
    the other tests build them; the output is the README's but for the timings."""
    argv, shown = _readme_example()
    assert argv[0] == "front-onnx"
    demo = tmp_path / "demo-out"
    (demo / "targets").mkdir(parents=True)
    for model, dest in ((samples.get("vit", "base", "dynamo", source=True), demo / "source.onnx"),
                        (samples.get("vit", "narrow", "legacy"), demo / "targets" / "narrow.onnx")):
        shutil.copy(model, dest)
        for data in model.parent.glob(model.name + ".data"):  # external data keeps its recorded name
            shutil.copy(data, dest.parent / data.name)
    for a in argv[1:]:
        if a.startswith("demo-out/") and a != argv[argv.index("-o") + 1]:
            assert (tmp_path / a).exists(), f"the README names {a}, which make demo does not write"
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [_timeless(x) for x in out] == [_timeless(x) for x in shown]
    assert (tmp_path / argv[argv.index("-o") + 1]).exists()


def test_demo_writes_what_the_readme_names():
    """samples/demo.py writes the paths the README's example reads."""
    demo = (ROOT / "samples" / "demo.py").read_text()
    argv, _ = _readme_example()
    assert 'OUT / "source.onnx"' in demo and argv[2] == "demo-out/source.onnx"
    assert 'OUT / "targets" / f"{t.name}.onnx"' in demo and 'Target("narrow"' in demo
    assert argv[3] == "demo-out/targets/narrow.onnx" and 'ROOT / "demo-out"' in demo


def test_refine_json(pair, tmp_path, capsys):
    pytest.importorskip("torch")
    import numpy as np
    import onnx

    src, _ = pair
    inp = onnx.load(str(src)).graph.input[0]
    shape = [d.dim_value or 8 for d in inp.type.tensor_type.shape.dim]
    shape[0] = 16
    np.savez(tmp_path / "d.npz", **{inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
    out = tmp_path / "r.onnx"
    assert main(["refine", str(src), "--data", str(tmp_path / "d.npz"), "--steps", "2", "-o", str(out), "--json"]) == 0
    data, err = _doc(capsys)
    assert data["command"] == "refine" and data["ok"] is True and Path(data["output"]) == out
    assert data["steps"] == 2 and data["report"] is None
    _no_bar(err)
