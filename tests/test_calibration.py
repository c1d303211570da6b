"""``scale="calibrated"``: each written projection's output std matched to its source layer's
(``validation.calibration``), checked against an independent measurement: both models run with
onnxruntime directly, every MatMul/Gemm/Conv output exposed, stds compared layer by layer.
An identity transfer is left exactly as the plain transfer writes it; a learngene alone (no
source to measure) is refused with one clear line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.cli import EXIT_INPUT, main  # noqa: E402
from front_onnx.torch import transfer_module  # noqa: E402
from samples.models import FAMILIES, GPTConfig, perturb  # noqa: E402

CORPUS = Path(__file__).parent / "corpus" / "models"
_LAYERS = {"MatMul", "Gemm", "Conv"}


def _layer_stds(path: Path, feeds: dict[str, np.ndarray]) -> list[float]:
    """The response of every MatMul/Gemm/Conv reading an initializer, in graph order: the
    output's std about each channel's mean."""
    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    names = [n.output[0] for n in m.graph.node if n.op_type in _LAYERS and any(i in inits for i in n.input)]
    have = {o.name for o in m.graph.output}
    for v in names:
        if v not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=v))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # data loaded inline
    out = dict(zip([o.name for o in m.graph.output], sess.run(None, feeds)))
    stds = []
    for n, v in zip((n for n in m.graph.node if n.output and n.output[0] in names), names):
        a = np.moveaxis(out[v].astype(np.float64), 1 if n.op_type == "Conv" else -1, -1)
        a = a.reshape(-1, a.shape[-1])
        stds.append(float((a - a.mean(axis=0)).std()))  # about each channel's mean: a bias does not count
    return stds


def _chain(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 4))


def test_calibrated_layers_have_the_source_layers_output_scale(tmp_path):
    from samples.export import export

    src = perturb(_chain(32, 0), seed=0)
    export(src, torch.zeros(2, 8), tmp_path / "s.onnx")
    export(_chain(16, 1), torch.zeros(2, 8), tmp_path / "t.onnx")
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", pixels=x)
    plain = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "plain.onnx")
    cal = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "cal.onnx", scale="calibrated",
                              calibration_inputs=tmp_path / "x.npz")
    feeds = {"pixels": x}
    want = _layer_stds(tmp_path / "s.onnx", feeds)
    before = _layer_stds(tmp_path / "plain.onnx", feeds)
    after = _layer_stds(tmp_path / "cal.onnx", feeds)
    assert len(want) == len(after) == 3
    assert max(abs(np.log(b / w)) for b, w in zip(before, want)) > 0.05  # there was something to calibrate
    for w, a in zip(want, after):
        assert a == pytest.approx(w, rel=0.01)
    assert plain.plan.summary()["written"] == cal.plan.summary()["written"]
    assert any(n.startswith("calibrated: 3 layer outputs") for n in cal.plan.notes), cal.plan.notes
    assert any(op.startswith("calibrated x") for sp in cal.plan.slots for op in sp.operations)


def test_calibration_matches_layers_at_the_same_relative_depth_on_a_bert_shrink(tmp_path):
    """The corpus BERT (2 layers, width 32) -> its shrink (1 layer, width 16), both HF exports:
    every calibrated layer's response is that of the source's layer of the same role, on the
    corpus's inputs given for the calibration."""
    d = CORPUS / "bert" / "dynamo"
    feeds = {k: np.load(CORPUS / "bert" / "inputs" / f"{k}.npy") for k in ("input_ids", "attention_mask")}
    res = front_onnx.transfer(d / "source.onnx", d / "shrink.onnx", tmp_path / "o.onnx", scale="calibrated",
                              calibration_inputs=feeds)
    note = next(n for n in res.plan.notes if n.startswith("calibrated"))
    assert "worst remaining ratio 1.0" in note, note
    src, out = _layer_stds(d / "source.onnx", feeds), _layer_stds(tmp_path / "o.onnx", feeds)
    # the shrink's one layer (q, k, v, o, fc1, fc2), then the pooler and classifier; a stage of
    # one block takes the source's first (spectral.resample_layers, 'nearest')
    ratios = np.array(out[:6]) / np.array(src[:6])
    assert np.all(np.abs(np.log(ratios)) < 0.01), ratios
    assert np.all(np.abs(np.log(np.array(out[6:]) / np.array(src[12:]))) < 0.01)


def test_calibrated_identity_is_the_plain_transfer(tmp_path):
    d = CORPUS / "bert" / "dynamo"
    front_onnx.transfer(d / "source.onnx", d / "same.onnx", tmp_path / "plain.onnx")
    res = front_onnx.transfer(d / "source.onnx", d / "same.onnx", tmp_path / "cal.onnx", scale="calibrated")
    assert any("already at the source's scales" in n for n in res.plan.notes), res.plan.notes
    a = {t.name: t for t in onnx.load(str(tmp_path / "plain.onnx")).graph.initializer}
    b = {t.name: t for t in onnx.load(str(tmp_path / "cal.onnx")).graph.initializer}
    assert a.keys() == b.keys()
    assert all(onnx.numpy_helper.to_array(a[k]).tobytes() == onnx.numpy_helper.to_array(b[k]).tobytes() for k in a)
    feeds = {k: np.load(CORPUS / "bert" / "inputs" / f"{k}.npy") for k in ("input_ids", "attention_mask")}
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                 for p in (d / "source.onnx", tmp_path / "cal.onnx"))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_calibrated_needs_the_source_model(tmp_path, capsys):
    d = CORPUS / "bert" / "dynamo"
    front_onnx.extract(d / "source.onnx", output=tmp_path / "g.safetensors")
    with pytest.raises(front_onnx.FrontError, match="needs the source model"):
        front_onnx.initialize(d / "shrink.onnx", tmp_path / "g.safetensors", tmp_path / "o.onnx", scale="calibrated")
    assert not (tmp_path / "o.onnx").exists()
    code = main(["init", str(d / "shrink.onnx"), "--learngene", str(tmp_path / "g.safetensors"),
                 "-o", str(tmp_path / "o.onnx"), "--scale", "calibrated"])
    assert code == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the source model" in err[0]


def test_calibration_inputs_are_never_overwritten(tmp_path):
    d = CORPUS / "bert" / "dynamo"
    np.savez(tmp_path / "x.npz", input_ids=np.zeros((2, 8), np.int64))
    before = (tmp_path / "x.npz").read_bytes()
    code = main(["transfer", str(d / "source.onnx"), str(d / "shrink.onnx"), "-o", str(tmp_path / "x.npz"),
                 "--scale", "calibrated", "--calibration-inputs", str(tmp_path / "x.npz"), "-q"])
    assert code != 0
    assert (tmp_path / "x.npz").read_bytes() == before


def test_transfer_module_calibrates_on_the_example_inputs():
    cfg = dict(vocab=64, context=8, heads=4, mlp_ratio=4)
    torch.manual_seed(0)
    src = perturb(FAMILIES["gpt"][0](GPTConfig(dim=32, depth=4, **cfg)).eval(), seed=0)
    torch.manual_seed(1)
    tgt = FAMILIES["gpt"][0](GPTConfig(dim=16, depth=2, **cfg)).eval()
    ids = torch.randint(0, 64, (4, 8))
    module, plan = transfer_module(src, tgt, (ids,), scale="calibrated")
    note = next(n for n in plan.notes if n.startswith("calibrated"))
    assert "on the given inputs" in note, note
    # the target's first block's MLP output (fc2) has the response of the source's first block's:
    # its std about each channel's mean (the calibration's measure: a bias moves only the means)
    acts = {}

    def hook(name):
        def f(_m, _i, o):
            a = o.detach().double().reshape(-1, o.shape[-1])
            acts[name] = float((a - a.mean(0)).pow(2).mean().sqrt())
        return f

    fc2 = [n for n, _ in module.named_modules() if n.endswith("fc2") or n.endswith("mlp.2")]
    assert fc2, [n for n, _ in module.named_modules()]
    module.get_submodule(fc2[0]).register_forward_hook(hook("t"))
    src.get_submodule(fc2[0]).register_forward_hook(hook("s"))
    with torch.no_grad():
        module(ids)
        src(ids)
    assert acts["t"] == pytest.approx(acts["s"], rel=0.02)


def test_a_decoder_with_past_is_calibrated_one_sequence_at_a_time(tmp_path):
    """onnxruntime-genai's Llama (GroupQueryAttention with a past refuses batch > 1): the
    calibration samples one sequence, and an identity transfer reproduces the source."""
    d = Path(__file__).parent / "corpus" / "deploy" / "genai_llama_fp32"
    src, same = next((d / "source").glob("*.onnx")), next((d / "same").glob("*.onnx"))
    res = front_onnx.transfer(src, same, tmp_path / "o.onnx", scale="calibrated", validate=True)
    assert any("already at the source's scales" in n for n in res.plan.notes), res.plan.notes
    assert res.validation.ok


def test_inputs_onnxruntime_cannot_run_are_refused_in_one_line(tmp_path, capsys):
    d = CORPUS / "bert" / "dynamo"
    np.savez(tmp_path / "x.npz", input_ids=np.full((2, 8), 10_000, np.int64))  # beyond the vocabulary
    code = main(["transfer", str(d / "source.onnx"), str(d / "shrink.onnx"), "-o", str(tmp_path / "o.onnx"),
                 "--scale", "calibrated", "--calibration-inputs", str(tmp_path / "x.npz"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_INPUT, err
    assert len(err) == 1 and "onnxruntime cannot run it" in err[0] and "source.onnx" in err[0], err
    assert not (tmp_path / "o.onnx").exists()
