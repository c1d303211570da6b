"""FRONT+ refinement (front_onnx.torch.refine, `front-onnx refine`) on a trained sample ViT.

A real measurement, not fixed numbers: a ViT (d32, 4 blocks) trained 10 epochs on digits
(about 0.96 held-out accuracy), refined for 100 steps. Bounds: the mean out-of-band energy
share at keep 0.5 drops by at least 0.05; held-out accuracy drops by at most 0.05 (task
loss); self-distillation keeps the outputs within a relative L2 drift of 0.1 and the
argmax of 98% of the rows. About 40 s on 2 shared cores."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxscript")

from conftest import file_digests, run_onnx  # noqa: E402
from front_onnx import cli  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402
from front_onnx.torch.executor import OnnxModule  # noqa: E402
from front_onnx.torch.refine import MATCH_TOL, RefineResult, graph_unchanged, refine_module  # noqa: E402
from samples.export import export  # noqa: E402
from samples.models import ViT, ViTConfig  # noqa: E402
from samples.train import accuracy, digits_data, onnx_accuracy, train_classifier  # noqa: E402

STEPS = 100
SHARE_DROP = 0.05      # the mean out-of-band share must fall at least this much
ACCURACY_DROP = 0.05   # held-out accuracy may fall at most this much
CFG = ViTConfig(dim=32, depth=4, heads=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained ViT, its dynamo export, and the digits split as .npz / .npy files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x_tr, y_tr, x_te, y_te = digits_data(0)
        torch.manual_seed(0)
        model = ViT(CFG)
        train_classifier(model, x_tr, y_tr, epochs=10, lr=2e-3, seed=0, batch_size=16)
        d = tmp_path_factory.mktemp("refine")
        path = export(model, x_te[:2], d / "vit.onnx", "dynamo")
    finally:
        torch.set_num_threads(threads)
    np.savez(d / "train.npz", pixels=x_tr.numpy())
    np.save(d / "labels.npy", y_tr.numpy())
    return {"dir": d, "onnx": path, "state": {k: v.clone() for k, v in model.state_dict().items()},
            "x_tr": x_tr, "y_tr": y_tr, "x_te": x_te, "y_te": y_te, "acc": accuracy(model, x_te, y_te)}


def test_cli_refine_lowers_out_of_band_share_and_keeps_accuracy(trained, capsys):
    d, src = trained["dir"], trained["onnx"]
    inputs = file_digests(src, d / "train.npz", d / "labels.npy")
    out = d / "out" / "vit-refined.onnx"
    out.parent.mkdir()
    rc = cli.main(["refine", str(src), "--data", str(d / "train.npz"), "--labels", str(d / "labels.npy"),
                   "--steps", str(STEPS), "-o", str(out), "--report", str(d / "report.json"), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out == ""                       # -q
    assert file_digests(src, d / "train.npz", d / "labels.npy") == inputs   # inputs untouched
    rep = json.loads((d / "report.json").read_text())
    assert rep["objective"] == "cross-entropy" and rep["steps"] == STEPS
    assert rep["share_after"] <= rep["share_before"] - SHARE_DROP, rep
    assert rep["weighted_after"] < rep["weighted_before"], rep
    assert len(rep["templates"]) >= 10 and all(0.0 <= t["after"] <= 1.0 for t in rep["templates"])
    assert rep["ort_error"] <= MATCH_TOL

    # held-out accuracy through onnxruntime stays within the bound
    before = onnx_accuracy(src, trained["x_te"], trained["y_te"])
    after = onnx_accuracy(out, trained["x_te"], trained["y_te"])
    assert after >= before - ACCURACY_DROP, (before, after)

    # only initializer values changed, and they did change
    a, b = load_model(src), load_model(out)
    assert graph_unchanged(a.proto, b.proto) == ""
    changed = [n for n in a.initializer_names() if not np.array_equal(a.array(n), b.array(n))]
    assert len(changed) >= 20

    # an independent check: onnxruntime on the refined file against the torch executor on it
    x = trained["x_te"][:32].numpy()
    ours = OnnxModule(b)(torch.from_numpy(x)).detach().numpy()
    theirs = run_onnx(out, {"pixels": x})[0]
    assert np.linalg.norm(ours - theirs) <= MATCH_TOL * np.linalg.norm(theirs)


def test_refine_module_self_distillation(trained, tmp_path):
    model = ViT(CFG)
    model.load_state_dict(trained["state"])
    model.eval()
    res = refine_module(model, trained["x_tr"], steps=STEPS, output=tmp_path / "m.onnx", progress=False)
    assert isinstance(res, RefineResult) and res.onnx_path == tmp_path / "m.onnx"
    assert (tmp_path / "m.onnx.data").is_file()
    rep = res.report
    assert rep.objective.startswith("self-distillation")
    assert rep.share_after <= rep.share_before - SHARE_DROP, rep.table()
    assert rep.drift <= 0.1 and rep.agreement >= 0.98, rep.table()
    # the module was refined in place; its export runs in onnxruntime and matches it
    x = trained["x_te"][:40]
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = run_onnx(res, {"input": x.numpy()})[0]         # path-like
    assert np.linalg.norm(ours - theirs) <= MATCH_TOL * np.linalg.norm(theirs)
    acc = onnx_accuracy(res.onnx_path, trained["x_te"], trained["y_te"])
    assert acc >= trained["acc"] - ACCURACY_DROP
    assert "out-of-band energy share at keep 0.5" in rep.table()


@pytest.mark.parametrize("case", ["missing input", "labels length", "no file"])
def test_bad_inputs_exit_3_with_one_line(trained, tmp_path, capsys, case):
    d = trained["dir"]
    data, labels = d / "train.npz", d / "labels.npy"
    if case == "missing input":
        data = tmp_path / "bad.npz"
        np.savez(data, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros((4, 1, 8, 8), np.float32))
        named = data
    elif case == "labels length":
        labels = tmp_path / "short.npy"
        np.save(labels, np.zeros(5, np.int64))
        named = labels
    else:
        data = named = tmp_path / "absent.npz"
    out = tmp_path / "r.onnx"
    rc = cli.main(["refine", str(trained["onnx"]), "--data", str(data), "--labels", str(labels), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == cli.EXIT_INPUT and len(err) == 1 and str(named) in err[0], err
    assert not out.exists()


def test_refuses_to_overwrite_the_source(trained, capsys):
    src = trained["onnx"]
    before = file_digests(src)
    rc = cli.main(["refine", str(src), "--data", str(trained["dir"] / "train.npz"), "-o", str(src), "-q"])
    assert rc == cli.EXIT_INPUT and "overwrite" in capsys.readouterr().err
    assert file_digests(src) == before
