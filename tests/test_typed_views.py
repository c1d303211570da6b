"""A parameter's view that a node reads only for its type: timm's ConvNeXt V2 computes its GRN
as ``addcmul(bias.view(...), weight.view(...), x * nx)``, which the dynamo exporter writes with
a CastLike that reads the weight's view only for its type (to cast addcmul's constant factor).
That use made the view end there, and the weight was "a parameter read by Reshape", left:
identity off by 1.4e-4 (99.3% written). A use that reads only the type or shape (CastLike's
second input, Shape, Size) reads no values: the view goes on to the Mul that scales."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("onnxscript")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _convnextv2(width: int):
    return timm.create_model("convnextv2_atto", pretrained=False, num_classes=10, depths=(1, 1, 1, 1),
                             dims=(width, 2 * width, 3 * width, 4 * width)).eval()


def test_a_grn_weight_read_through_a_typed_view_is_transferred():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    src = _convnextv2(16)
    perturb(src)
    torch.manual_seed(1)
    module, plan = transfer_module(src, _convnextv2(16), x)
    assert plan.summary()["written_fraction"] == 1.0
    with torch.no_grad():
        want, got = src(x), module(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
    # half the width, as Weight Selection: each stage's GRN scale is its own stage's, every other unit
    torch.manual_seed(1)
    small, plan = transfer_module(src, _convnextv2(8), x, method="select", align="none")
    assert plan.summary()["written_fraction"] == 1.0
    a, b = small.state_dict(), src.state_dict()
    for k in range(4):
        name = f"stages.{k}.blocks.0.mlp.grn.weight"
        np.testing.assert_array_equal(a[name].reshape(-1).numpy(), b[name].reshape(-1).numpy()[::2])


def test_a_group_norm_affine_cast_like_its_input_is_transferred():
    """HF Wav2Vec2's feature encoder normalizes its first convolution with a GroupNorm of one
    group per channel; the unoptimized dynamo export (transfer_module's) reads its scale and
    bias as Unsqueeze -> CastLike(like the activation) -> Mul / Add. The CastLike ended the
    view, so both were "a parameter read by Unsqueeze", left (identity off by 1.5e-3). A
    CastLike's input 0 passes values unchanged: the view goes on, for tensors named as
    parameters (the exporter also casts a constant zero like the input to build a convolution's
    bias, which stays a constant: the target module loads strictly, with no bias added)."""
    transformers = pytest.importorskip("transformers")

    def make():
        return transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, feat_extract_norm="group", mask_time_prob=0.0)).eval()

    x = {"input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(5))}
    torch.manual_seed(0)
    src = make()
    perturb(src)
    torch.manual_seed(1)
    module, plan = transfer_module(src, make(), x)
    assert plan.summary()["written_fraction"] == 1.0
    with torch.no_grad():
        want, got = src(**x).last_hidden_state, module(**x).last_hidden_state
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
