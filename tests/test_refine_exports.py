"""`front-onnx refine` on real exports with baked-in shapes.

``torch.onnx.export`` without dynamic shapes fixes every input axis: the graph declares
the export's batch (and sequence) size and Reshape constants and constant-folded tensors
(a BERT's attention mask, its token-type embeddings broadcast over the batch) bake it in.
Refinement must run such a graph on batches of exactly that size (the remainder of the
data wraps or is dropped), refuse data it cannot run on with one line, and must not learn
per-batch-slot copies of a constant broadcast over the batch. A few seconds on one core
besides the BERT export (about 3 s, once per session)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from conftest import run_onnx  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402

from front_onnx import cli  # noqa: E402
from front_onnx.torch.executor import OnnxModule  # noqa: E402
from front_onnx.torch.refine import MATCH_TOL, graph_unchanged
from front_onnx.torch.training import all_outputs  # noqa: E402

STEPS = 3
BATCH = 4   # the conv net's fixed export batch
SEQ = 6     # the BERT export's fixed sequence length (batch 2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arrays(path) -> dict[str, np.ndarray]:
    m = load_model(path)
    return {t.name: np.array(m.array(t.name)) for t in m.proto.graph.initializer}


def _refine(src, data, out, *extra) -> int:
    return cli.main(["refine", str(src), "--data", str(data), "--steps", str(STEPS), "-o", str(out), "-q", *extra])


def _fixed_batch(path) -> list[int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.type.tensor_type.shape.dim[0].dim_value for i in graph.input]


# ----------------------------------------------------------------------------- a conv net, fixed batch 4
class _ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = torch.nn.Linear(4 * 8 * 8, 16)
        self.fc2 = torch.nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x)).reshape(x.shape[0], -1)  # the batch baked into a Reshape
        return self.fc2(torch.relu(self.fc1(h)))


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixed-batch")
    torch.manual_seed(0)
    path = d / "convnet.onnx"
    torch.onnx.export(_ConvNet().eval(), (torch.randn(BATCH, 1, 8, 8),), str(path))  # no dynamic shapes
    assert _fixed_batch(path) == [BATCH]
    rng = np.random.default_rng(0)
    np.savez(d / "x10.npz", x=rng.standard_normal((10, 1, 8, 8)).astype(np.float32))  # 10 = 2 * 4 + 2
    np.save(d / "y10.npy", rng.integers(0, 5, 10))
    np.savez(d / "x3.npz", x=rng.standard_normal((3, 1, 8, 8)).astype(np.float32))
    np.savez(d / "x10-9x9.npz", x=rng.standard_normal((10, 1, 9, 9)).astype(np.float32))
    return d, path


@pytest.mark.parametrize("labels", [False, True], ids=["self-distillation", "cross-entropy"])
def test_fixed_batch_refines_on_batches_of_that_size(convnet, labels, capsys):
    d, src = convnet
    out = d / f"refined-{labels}.onnx"
    extra = ["--labels", str(d / "y10.npy")] if labels else []
    rc = _refine(src, d / "x10.npz", out, "--batch-size", "64", "--report", str(d / f"report-{labels}.json"), *extra)
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((d / f"report-{labels}.json").read_text())
    assert rep["batch_size"] == BATCH and rep["rows"] == 10
    assert rep["ort_error"] <= MATCH_TOL
    assert graph_unchanged(load_model(src).proto, load_model(out).proto) == ""
    x = np.load(d / "x10.npz")["x"][:BATCH]
    (y,) = run_onnx(out, {"x": x})
    assert y.shape == (BATCH, 5) and np.isfinite(y).all()
    before, after = _arrays(src), _arrays(out)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_outputs_on_all_rows_come_in_batches_of_the_fixed_size(convnet):
    d, src = convnet
    x = np.load(d / "x10.npz")["x"]
    (ours,) = all_outputs(OnnxModule(src), [torch.from_numpy(x)], BATCH, exact=True)
    theirs = np.concatenate([run_onnx(src, {"x": x[0:4]})[0], run_onnx(src, {"x": x[4:8]})[0],
                             run_onnx(src, {"x": x[6:10]})[0][2:]])
    assert ours.shape == (10, 5)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("data,out_name,says", [
    ("x3.npz", "few.onnx", "fixed batch of 4"),          # fewer rows than the fixed batch
    ("x10-9x9.npz", "9x9.onnx", "axis 2"),               # data that misses a fixed axis
])
def test_data_the_fixed_graph_cannot_take_is_one_clear_line(convnet, capsys, data, out_name, says):
    d, src = convnet
    out = d / out_name
    assert _refine(src, d / data, out) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert data in err and str(src) in err and says in err
    assert not out.exists()


# ----------------------------------------------------------------------------- a tiny BERT, dynamo defaults
@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """A tiny HF BertModel with perturbed parameters (non-zero biases), exported with
    torch.onnx.export's defaults (dynamo, batch 2 and sequence 6 fixed)."""
    import transformers  # a test dependency: its absence is a broken set-up, not a skip
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                  vocab_size=100, max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = d / "bert.onnx"
    torch.onnx.export(model, (torch.randint(0, 100, (2, SEQ)),), str(path))
    rng = np.random.default_rng(0)
    np.savez(d / "ids.npz", input_ids=rng.integers(0, 100, (7, SEQ)))  # odd rows: one wraps
    np.savez(d / "ids-long.npz", input_ids=rng.integers(0, 100, (8, 2 * SEQ)))
    return d, path


def test_bert_executor_agrees_with_onnxruntime(bert):
    d, src = bert
    ids = np.load(d / "ids.npz")["input_ids"][:2]
    module = OnnxModule(src)
    with torch.no_grad():
        ours = [o.numpy() for o in module(torch.from_numpy(ids))]
    theirs = run_onnx(src, {"input_ids": ids})
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert np.linalg.norm(a - b) <= MATCH_TOL * np.linalg.norm(b)


def test_bert_fixed_shapes_refine(bert, capsys):
    d, src = bert
    out = d / "bert-refined.onnx"
    rc = _refine(src, d / "ids.npz", out, "--lr", "1e-3", "--report", str(d / "bert.json"))
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((d / "bert.json").read_text())
    assert rep["batch_size"] == 2 and rep["rows"] == 7 and rep["ort_error"] <= MATCH_TOL
    assert graph_unchanged(load_model(src).proto, load_model(out).proto) == ""
    ids = np.load(d / "ids.npz")["input_ids"][:2]
    hidden, pooled = run_onnx(out, {"input_ids": ids})
    assert hidden.shape == (2, SEQ, 64) and pooled.shape == (2, 64) and np.isfinite(hidden).all()
    before, after = _arrays(src), _arrays(out)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) > 10
    # constants folded over the fixed batch (the attention mask, the token-type embeddings)
    # stay one value per row: a row's output does not depend on its slot in the batch
    copies = [k for k, a in before.items() if a.ndim >= 2 and a.shape[0] == 2 and np.array_equal(a[0], a[1])]
    assert copies and all(np.array_equal(before[k], after[k]) for k in copies)
    swapped, _ = run_onnx(out, {"input_ids": ids[::-1].copy()})
    np.testing.assert_allclose(swapped[::-1], hidden, rtol=1e-5, atol=1e-5)


def test_bert_sequence_length_mismatch_is_one_clear_line(bert, capsys):
    d, src = bert
    out = d / "long.onnx"
    assert _refine(src, d / "ids-long.npz", out) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert "ids-long.npz" in err and str(src) in err and "input_ids" in err and "axis 1" in err
    assert not out.exists()
