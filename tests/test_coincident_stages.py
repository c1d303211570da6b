"""Layers whose shapes agree by chance in one model are not a stage. A narrow MobileNetV3's
first block squeezes 8 channels to 8 and back (its squeeze-excite rounds up to 8) and then
projects 8 to 8: three 1x1 convolutions of one shape, which the source (16 channels: 16 ->
8 -> 16, then 16 -> 16) does not repeat. Read as a stage of three blocks, all three were
drawn from one source layer (bitwise equal), and a Weight Selection was refused ("the
structures share nothing"). A square MLP (OPT with as many MLP units as residual ones)
likewise: its second projection was drawn from the source's first. Each layer must come
from its own source layer."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from front_onnx.torch import transfer_module  # noqa: E402
from tests.corpus.build import perturb  # noqa: E402


def _mobilenet(stem: int, chs: tuple[int, ...]):
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3
    arch = [[f"ds_r1_k3_s2_e1_c{chs[0]}_se0.25_nre"], [f"ir_r1_k3_s2_e4_c{chs[1]}_nre"], [f"cn_r1_k1_s1_c{chs[2]}"]]
    se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=torch.nn.ReLU, rd_round_fn=round_channels)
    return MobileNetV3(decode_arch_def(arch), num_classes=10, stem_size=stem, num_features=4 * chs[2],
                       act_layer=get_act_layer("hard_swish"), se_layer=se, se_from_exp=True).eval()


def _within(target: np.ndarray, source: np.ndarray) -> bool:
    """Every value of ``target`` is one of ``source``'s (a selection; perturbed values are distinct)."""
    return bool(np.isin(target, source).all())


def test_a_narrow_squeeze_excite_is_not_a_stage():
    torch.manual_seed(0)
    src = _mobilenet(16, (16, 24, 32))
    perturb(src)
    torch.manual_seed(1)
    tgt, plan = transfer_module(src, _mobilenet(8, (8, 16, 16)), torch.randn(2, 3, 32, 32),
                                method="select", align="none")
    s, t = src.state_dict(), tgt.state_dict()
    for name in ("blocks.0.0.se.conv_reduce.weight", "blocks.0.0.se.conv_expand.weight", "blocks.0.0.conv_pw.weight"):
        assert tuple(t[name].shape) == (8, 8, 1, 1)
        assert _within(t[name].numpy(), s[name].numpy()), name


def test_a_square_mlps_two_projections_are_two_layers():
    def opt(ffn: int):
        return transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=1, ffn_dim=ffn,
            max_position_embeddings=16, use_cache=False)).eval()
    torch.manual_seed(0)
    src = opt(64)
    perturb(src)
    torch.manual_seed(1)
    text = {"input_ids": torch.tensor([[5, 9, 2, 33, 7, 1, 60, 12]]), "attention_mask": torch.ones(1, 8, dtype=torch.int64)}
    tgt, _ = transfer_module(src, opt(32), text, method="select", align="none")
    s, t = src.state_dict(), tgt.state_dict()
    for name in ("model.decoder.layers.0.fc1.weight", "model.decoder.layers.0.fc2.weight"):
        assert _within(t[name].numpy(), s[name].numpy()), name
