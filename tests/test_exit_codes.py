"""The CLI's exit codes say whose fault a failure is: the package's error types are the
user's input (3, 4, 5); anything else is a bug of ours (1, "internal error")."""
from __future__ import annotations

import pytest

from front_onnx import cli
from front_onnx.cli import EXIT_INPUT, EXIT_INTERNAL
from front_onnx.method import pipeline  # the transfer steps api.transfer runs


def _transfer(pair, out, *extra):
    src, tgt = pair
    return cli.main([*extra, "transfer", str(src), str(tgt), "-o", str(out), "--no-validate", "-q"])


@pytest.mark.parametrize("where", ["slot_values", "make_plan", "write_initialized"])
def test_internal_value_error_is_an_internal_error(pair, tmp_path, monkeypatch, capsys, where):
    def boom(*a, **k):
        raise ValueError("injected bug")

    monkeypatch.setattr(pipeline, where, boom)
    out = tmp_path / "out.onnx"
    assert _transfer(pair, out) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: ValueError: injected bug" in err[0]
    assert not out.exists()


def test_debug_prints_the_traceback(pair, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise KeyError("injected")

    monkeypatch.setattr(pipeline, "slot_values", boom)
    assert _transfer(pair, tmp_path / "out.onnx", "--debug") == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal error: KeyError" in err


def test_bad_input_is_exit_3(pair, tmp_path, capsys):
    src, _ = pair
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert cli.main(["transfer", str(src), str(bad), "-o", str(tmp_path / "o.onnx"), "-q"]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.onnx" in err[0] and "internal" not in err[0]
