"""Growing a trained model: blocks found whole, and deeper targets that start from the
source's function. Checked against independent expectations:

- a ResNet's basic block is two conv+norm pairs of one shape: each stage template holds one
  torch layer (``conv1`` with ``conv1``), never a block's second convolution with another's
  first (a period of one pair would pair them);
- an attention mask every block adds to its scores is not a residual: GPT-2's blocks form
  one stage, under both exporters;
- depth mode 'identity': a target deeper than the source (same widths) computes the
  source's outputs in onnxruntime (ResNet with BatchNorm, pre-LN ViT); 'nearest', which
  repeats blocks, does not;
- method 'expand' (the default): a wider and deeper ResNet computes the source's outputs,
  its new units hold the target's own values and are read with zeros, and ``plan`` agrees;
  a ViT, whose LayerNorm reads the grown width, gets the 'hybrid' bytes instead, from
  ``transfer`` and from ``init`` alike;
- a shallower post-norm target selected by 'hybrid' ends with the source's last output norm
  (what the head reads); 'select' keeps Weight Selection's "first N".
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import front_onnx  # noqa: E402
from front_onnx.analysis import analyze  # noqa: E402
from front_onnx.analysis.naming import named_weights  # noqa: E402
from front_onnx.onnxio import load_model  # noqa: E402
from front_onnx.torch.modules import export_module  # noqa: E402
from samples.export import export  # noqa: E402
from samples.models import FAMILIES, ResNetConfig, perturb  # noqa: E402
from tests.conftest import small_vit  # noqa: E402

CORPUS = Path(__file__).parent / "corpus" / "models"


def _resnet(depths: tuple[int, ...], seed: int, trained: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = FAMILIES["resnet"][0](ResNetConfig(widths=(8, 16, 32), depths=depths)).eval()
    if trained:
        perturb(m, seed=seed)
        with torch.no_grad():  # running statistics as after training
            for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
    return m


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def resnets(tmp_path_factory):
    d = tmp_path_factory.mktemp("growth")
    x = (torch.zeros(2, 1, 8, 8),)
    export_module(_resnet((2, 2, 2), 0, trained=True), x, d / "s.onnx")
    export_module(_resnet((3, 3, 3), 1), x, d / "deeper.onnx")
    return d


def test_a_resnet_stage_template_holds_one_torch_layer(resnets):
    _, st = analyze(load_model(resnets / "s.onnx"))
    gs, st = analyze(load_model(resnets / "deeper.onnx"))
    stages = [t for t in st.templates.values() if t.stage]
    assert stages
    for t in stages:
        layers = {re.sub(r"^layers\.\d+\.\d+\.", "", gs.slots[b[0]].initializer) for b in t.blocks}
        assert len(layers) == 1, (t.key, layers)   # conv1 with conv1, bn2 with bn2
    ends = {re.sub(r"^layers\.\d+\.\d+\.", "", gs.slots[b[0]].initializer)
            for t in stages if t.ends_branch for b in t.blocks}
    assert ends == {"bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_attention_mask_is_no_residual(exporter):
    _, st = analyze(load_model(CORPUS / "gpt2" / exporter / "source.onnx"))
    assert [len(blocks) for blocks in st.stages.values()] == [2]


@pytest.mark.parametrize("depth,same", [("identity", True), ("nearest", False)])
def test_a_deeper_resnet_starts_from_the_source_function(resnets, tmp_path, depth, same):
    out = tmp_path / "o.onnx"
    r = front_onnx.transfer(resnets / "s.onnx", resnets / "deeper.onnx", out, depth=depth)
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    want, got = _outputs(resnets / "s.onnx", x), _outputs(out, x)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert (err < 1e-5) == same, err
    zeroed = [s.initializer for s in r.plan.written if any(op.startswith("identity block") for op in s.operations)]
    # a 2-block stage grown to 3 and 1-block stages grown to 2: one new block each
    assert sorted(zeroed) == (sorted(f"layers.{i}.{b}.bn2.{p}" for i, b in ((0, 1), (1, 2), (2, 2))
                                     for p in ("weight", "bias")) if same else [])


def test_a_deeper_vit_starts_from_the_source_function(tmp_path):
    x = torch.zeros(2, 1, 8, 8)
    export(small_vit(32, 2, 0, trained=True), x, tmp_path / "s.onnx")
    export(small_vit(32, 5, 1), x, tmp_path / "t.onnx")
    front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", depth="identity")
    xs = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    want, got = _outputs(tmp_path / "s.onnx", xs), _outputs(tmp_path / "o.onnx", xs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))


def test_expand_places_the_source_and_marks_new_units():
    """The numeric core of an expansion against a direct construction."""
    from front_onnx.method.expansion import expand

    rng = np.random.default_rng(0)
    src = rng.normal(size=(2, 3, 4, 3, 3))              # 2 blocks of conv [out 3, in 4, 3, 3]
    stack, fresh = expand(src, 3, (5, 6, 3, 3), "conv.weight")
    assert stack.shape == (3, 5, 6, 3, 3) and fresh.shape == (5, 6, 3, 3)
    for b, s in enumerate((0, 0, 1)):                   # blocks by nearest relative depth
        np.testing.assert_array_equal(stack[b, :3, :4], src[s])
        assert not stack[b, :3, 4:].any()               # a source unit reads a new one with zeros
    assert fresh[3:].all() and not fresh[:3].any()      # new out units: the target's own values


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    d = tmp_path_factory.mktemp("wider")
    x = (torch.zeros(2, 1, 8, 8),)
    export_module(_resnet((2, 2, 2), 0, trained=True), x, d / "s.onnx")
    torch.manual_seed(3)
    target = FAMILIES["resnet"][0](ResNetConfig(widths=(12, 24, 48), depths=(3, 3, 3))).eval()
    export_module(target, x, d / "t.onnx")
    return d, target


def test_a_wider_deeper_resnet_computes_the_source_function(wider, tmp_path):
    d, target = wider
    r = front_onnx.transfer(d / "s.onnx", d / "t.onnx", tmp_path / "o.onnx")   # the defaults
    assert r.plan.expanded and any("computes the source's outputs" in n for n in r.plan.notes)
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    want, got = _outputs(d / "s.onnx", x), _outputs(tmp_path / "o.onnx", x)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < 1e-5
    out = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    fresh = target.layers[0][0].conv1.weight.detach().numpy()
    np.testing.assert_array_equal(out["layers.0.0.conv1.weight"][8:], fresh[8:])   # new units: the target's own
    assert not out["layers.0.0.conv1.weight"][:8, 8:].any()                          # read with zeros
    sm = r.plan.summary()
    assert 0 < sm["own_elements"] < sm["weight_elements"]
    assert front_onnx.plan(d / "s.onnx", d / "t.onnx").summary() == sm


def test_an_expansion_that_changes_the_function_is_transformed(tmp_path):
    """A ViT's LayerNorm reads the grown residual width: the expansion would change the
    outputs, so the growth is written as 'hybrid' writes it, and the plan says why."""
    x = torch.zeros(2, 1, 8, 8)
    export(small_vit(32, 2, 0, trained=True), x, tmp_path / "s.onnx")
    export(small_vit(48, 3, 1), x, tmp_path / "t.onnx")
    e, h, i = (tmp_path / k / "o.onnx" for k in "ehi")  # one file name: the bytes can be compared
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", e)
    front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", h, method="hybrid")
    assert not r.plan.expanded and any("the growth is transformed" in n for n in r.plan.notes)
    assert e.read_bytes() == h.read_bytes()
    assert front_onnx.plan(tmp_path / "s.onnx", tmp_path / "t.onnx").summary() == r.plan.summary()
    gene = front_onnx.extract(tmp_path / "s.onnx")
    done = front_onnx.initialize(tmp_path / "t.onnx", gene, i)   # no source to check against: transformed
    assert any(n.startswith("expand: from a learngene") for n in done.plan.notes)
    assert i.read_bytes() == h.read_bytes()


class _PostNorm(torch.nn.Module):
    """x -> blocks of LayerNorm(x + fc2(relu(fc1(x)))) (post-norm, as BERT) -> head."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.ModuleList(torch.nn.Linear(width, 2 * width) for _ in range(depth))
        self.fc2 = torch.nn.ModuleList(torch.nn.Linear(2 * width, width) for _ in range(depth))
        self.norm = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f1, f2, n in zip(self.fc1, self.fc2, self.norm):
            x = n(x + f2(torch.relu(f1(x))))
        return self.head(x)


@pytest.mark.parametrize("method,last", [("hybrid", 3), ("select", 1)])
def test_the_last_output_norm_of_a_shallower_target_is_the_source_last(tmp_path, method, last):
    """Selecting 2 of 4 post-norm blocks: the output norm of the target's last block (what the
    head reads) is the source's last block's with 'hybrid'; Weight Selection ('select') keeps
    "first N" as published."""
    torch.manual_seed(0)
    src = perturb(_PostNorm(8, 4).eval(), seed=0)
    torch.manual_seed(1)
    export(src, torch.zeros(2, 8), tmp_path / "s.onnx")
    export(_PostNorm(8, 2).eval(), torch.zeros(2, 8), tmp_path / "t.onnx")
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx", method=method,
                            align="none")  # units in their order: entries comparable by position
    out = {k: np.asarray(v) for k, v in named_weights(tmp_path / "o.onnx").tensors.items()}  # by torch name
    want = src.state_dict()
    np.testing.assert_array_equal(out["norm.0.weight"], want["norm.0.weight"].numpy())
    np.testing.assert_array_equal(out["norm.1.weight"], want[f"norm.{last}.weight"].numpy())
    np.testing.assert_array_equal(out["fc2.1.weight"], want["fc2.1.weight"].numpy())   # the rest: first N
    said = [s.operations[0] for s in r.plan.written if s.role in ("norm.scale", "norm.bias")]
    assert len(said) == 4 and all(("then the last" in op) == (method == "hybrid") for op in said)


def test_an_expansion_the_check_rejects_is_rewritten_as_hybrid(tmp_path):
    """Every grown template of a widened LayerNorm MLP stack can be expanded, but the
    LayerNorm averages over the new units too: the written target's outputs differ from the
    source's, and the transfer writes the 'hybrid' bytes instead, saying why."""
    from tests.graphs import mlp_stack

    onnx.save(mlp_stack(8, 2, seed=0), tmp_path / "s.onnx")
    onnx.save(mlp_stack(16, 2, seed=1), tmp_path / "t.onnx")
    e, h = tmp_path / "e" / "o.onnx", tmp_path / "h" / "o.onnx"
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", e)
    front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", h, method="hybrid")
    assert not r.plan.expanded and any("would change the source's outputs" in n for n in r.plan.notes)
    assert e.read_bytes() == h.read_bytes()
    assert sorted(p.name for p in e.parent.iterdir()) == ["o.onnx"]   # nothing of the rejected write left


def test_transfer_module_checks_an_expansion_as_transfer_does(tmp_path):
    """transfer_module wrote an expansion without the check `transfer` makes: a reader of
    concatenated channels (8 | 4 into 16 | 8) expanded with the source's 12 channels in its
    leading positions reads the target's new channels of the first branch with the source's
    second branch's weights, and nothing said so. Now it is checked, and transformed with the
    note, as `transfer` does: the two give the same weights."""
    from front_onnx.torch import transfer_module
    from tests.corpus.build import perturb
    from tests.test_concat_channels import _TwoBranches

    torch.manual_seed(0)
    src = _TwoBranches(8, 4).eval()
    perturb(src)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    tgt = _TwoBranches(16, 8).eval()
    for name, m in (("s", src), ("t", tgt)):
        torch.onnx.export(m, (x,), str(tmp_path / f"{name}.onnx"), dynamo=True, optimize=False)
    r = front_onnx.transfer(tmp_path / "s.onnx", tmp_path / "t.onnx", tmp_path / "o.onnx")
    module, plan = transfer_module(src, tgt, x)
    for notes in (r.plan.notes, plan.notes):
        assert any(n.startswith("expand: expanding the growth would change the source's outputs") for n in notes), notes
    out = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    np.testing.assert_array_equal(module.mix.weight.detach().numpy(), out["mix.weight"])
