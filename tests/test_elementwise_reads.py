"""A parameter the graph reads through elementwise ops before it scales an activation: HF Swin
V2's per-head logit scale, ``clamp(logit_scale, max=log(100)).exp()`` multiplying the attention
scores (Clip -> Exp -> Mul). It was "a parameter read by Clip", left (identity off by 2.6e-3
at 99.9% written). Each element of Clip's and Exp's output is a function of the same element of
the parameter, so its axes are the parameter's: the stored values are transferred, per head,
and the graph applies the ops, in the target as in the source.

Clip's bounds are cast like the parameter (a CastLike reading it for its type only): that use
reads no values, and must not keep a copy of the target's own values (it did: the writer split
the tensor, and ``transfer_module`` loaded the target's fresh scale back under its name).
A target stage of one head has a (1, 1, 1) scale where the source's has (heads, 1, 1): its
first axis meets the scores' heads axis of length 1, a channel axis, not a broadcast one."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402
from tests.test_fused_cut import _rows_from  # noqa: E402

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _swinv2(small: bool):
    return transformers.Swinv2Model(transformers.Swinv2Config(
        image_size=32, patch_size=2, embed_dim=8 if small else 16, depths=[1, 1] if small else [2, 2],
        num_heads=[1, 2] if small else [2, 4], window_size=4)).eval()


def _source():
    torch.manual_seed(0)
    src = _swinv2(False)
    perturb(src)
    return src


def test_a_logit_scale_read_through_clip_and_exp_is_transferred():
    src = _source()
    torch.manual_seed(1)
    module, plan = transfer_module(src, _swinv2(False), X)
    assert plan.summary()["written_fraction"] == 1.0
    with torch.no_grad():
        want, got = src(X)[0], module(X)[0]
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
    scales = [s for s in plan.slots if s.initializer.endswith("logit_scale") and s.status == "written"]
    assert len(scales) == 4 and all(any("read through Clip -> Exp" in e for e in s.evidence) for s in scales)
    typed = [s for s in plan.slots if s.initializer.endswith("logit_scale") and s.status != "written"]
    assert typed and all("only its type is read" in s.reason for s in typed)


def test_each_target_head_gets_the_scale_of_its_source_head():
    """Heads [2, 4] into [1, 2] (a one-head stage), at the defaults (heads in order of
    importance): every weight written, and each target head's logit scale is the one of the
    source head its query rows come from."""
    src = _source()
    torch.manual_seed(1)
    module, plan = transfer_module(src, _swinv2(True), X)
    assert plan.summary()["written_fraction"] == 1.0
    a, b = ({k: v.detach().numpy() for k, v in m.state_dict().items()} for m in (module, src))
    for stage in (0, 1):
        p = f"encoder.layers.{stage}.blocks.0.attention.self."
        heads = [r // 8 for r in _rows_from(a[p + "query.weight"], b[p + "query.weight"])][::8]
        np.testing.assert_array_equal(a[p + "logit_scale"].ravel(), b[p + "logit_scale"].ravel()[heads])
