"""HF Mamba (the slow path torch exports): two parameters no layer reads as usual.

``A_log`` enters the selective scan as ``-exp(A_log)`` broadcast against the step sizes
(Exp -> Neg -> Unsqueeze -> Unsqueeze -> Mul): elementwise ops, then view ops, into a scale.
``dt_proj.weight`` is the left factor of a MatMul (``dt_proj.weight @ time_step^T``): its rows
are the output's units (the inner width), its columns the input's (the step rank). Both were
left ("a parameter read by Exp", "... by MatMul (input 0)": identity off by 6.3e-5 at 95.6%
written). Now both are written, the inner width's units the same in every tensor indexing it.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402
from tests.test_fused_cut import _rows_from  # noqa: E402

IDS = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12], [3, 3, 40, 8, 19, 22, 5, 6]])}


def _mamba(d: int, layers: int):
    return transformers.MambaModel(transformers.MambaConfig(
        vocab_size=64, hidden_size=d, state_size=4, num_hidden_layers=layers, expand=2, conv_kernel=4,
        time_step_rank=2, use_cache=False, use_mambapy=False)).eval()


def _source():
    torch.manual_seed(0)
    src = _mamba(32, 2)
    perturb(src)
    return src


def test_the_same_architecture_reproduces_the_source():
    src = _source()
    torch.manual_seed(1)
    module, plan = transfer_module(src, _mamba(32, 2), IDS)
    assert plan.summary()["written_fraction"] == 1.0
    with torch.no_grad():
        want, got = src(**IDS).last_hidden_state, module(**IDS).last_hidden_state
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
    a_log = [s for s in plan.slots if s.initializer.endswith("A_log")]
    assert a_log and all(any("read through Exp -> Neg" in e for e in s.evidence) for s in a_log)


def test_a_shrink_takes_the_same_inner_units_everywhere():
    """Width 32 into 16 (inner width 64 into 32), at the defaults (units in order of
    importance): ``A_log``'s rows, ``dt_proj``'s rows, ``D`` and the output projection's
    columns are the same source units."""
    src = _source()
    torch.manual_seed(1)
    module, plan = transfer_module(src, _mamba(16, 1), IDS)
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.detach().numpy() for k, v in m.state_dict().items()} for m in (module, src))
    p = "layers.0.mixer."
    units = _rows_from(a[p + "A_log"], b[p + "A_log"])
    assert _rows_from(a[p + "dt_proj.weight"], b[p + "dt_proj.weight"]) == units
    assert _rows_from(a[p + "out_proj.weight"].T, b[p + "out_proj.weight"].T) == units
    np.testing.assert_array_equal(a[p + "D"], b[p + "D"][units])


def test_a_merged_a_log_keeps_one_layers_values_and_says_so(tmp_path):
    """The legacy exporter merges a fresh target's two ``A_log`` (equal at initialization) into
    one tensor, which the target cannot tell from a parameter both layers share: it holds one
    source layer's values, never their mean (views of it given different values were
    averaged, with no note), and the plan's note names it."""
    import onnx
    from onnx import numpy_helper

    import front_onnx
    src = _source()
    torch.manual_seed(1)
    for tag, m in (("source", src), ("target", _mamba(32, 2))):
        torch.onnx.export(m, (), kwargs=dict(IDS), f=str(tmp_path / f"{tag}.onnx"), dynamo=False,
                          input_names=list(IDS))
    r = front_onnx.transfer(tmp_path / "source.onnx", tmp_path / "target.onnx", tmp_path / "out.onnx")
    out = onnx.load(tmp_path / "out.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    made = {o: n for n in out.graph.node for o in n.output}
    read = set()
    for n in out.graph.node:
        if n.op_type == "Exp" and "/mixer/" in n.name:
            x = n.input[0]
            while x not in inits:
                x = made[x].input[0]
            read.add(x)
    assert len(read) == 1                                     # one tensor, as the target has it
    got = inits[read.pop()]
    layers = [src.state_dict()[f"layers.{k}.mixer.A_log"].numpy() for k in range(2)]
    assert any(np.array_equal(got, a) for a in layers)         # one layer's values, not a mean
    assert any(n.startswith("one tensor:") for n in r.plan.notes)
