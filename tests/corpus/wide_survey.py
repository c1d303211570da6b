"""A wide identity survey: 52 tiny Hugging Face and timm families, each transferred three ways.

A source (its parameters perturbed, as a trained model's are) is transferred into a fresh model
of its own architecture, which must then compute the source's function: through
``front_onnx.torch.transfer_module``, and file to file through ``front_onnx.transfer`` after
the legacy exporter (``torch.onnx.export(dynamo=False)``) and after the dynamo exporter at its
defaults. Each cell gives the largest error of the first output relative to the source's
largest value, and the share of weight elements written (``written_fraction``). ``export
fails``: torch.onnx.export could not export the family that way; ``ERR <type>``: front-onnx
(or running its output) raised, the message on stderr.

    PYTHONPATH=. .venv/bin/python -m tests.corpus.wide_survey              # every family (about 15 minutes on 2 cores)
    PYTHONPATH=. .venv/bin/python -m tests.corpus.wide_survey roberta yolos
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from tests.corpus.identity_survey import TEXT_IDS, _first
from tests.corpus.identity_survey import _inputs as _corpus_inputs


def families() -> dict[str, tuple[Callable[[], object], str]]:
    """name -> (a fresh model, its input kind: text, ids, s2s, wave, image or image<size>)."""
    import timm
    import transformers as H

    tiny = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                max_position_embeddings=32)
    s2s = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
               use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8)
    wave = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
                conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                mask_time_prob=0.0)
    beit = dict(**vit, use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1)
    convs = dict(num_classes=10, pretrained=False)
    stages4 = dict(dims=(16, 32, 48, 64), depths=(2, 2, 2, 2))
    return {
        "bart": (lambda: H.BartModel(H.BartConfig(**s2s)), "text"),
        "marian": (lambda: H.MarianModel(H.MarianConfig(**s2s)), "s2s"),
        "pegasus": (lambda: H.PegasusModel(H.PegasusConfig(**s2s)), "s2s"),
        "roberta": (lambda: H.RobertaModel(H.RobertaConfig(**tiny, pad_token_id=1)), "text"),
        "xlm_roberta": (lambda: H.XLMRobertaModel(H.XLMRobertaConfig(**tiny, pad_token_id=1)), "text"),
        "gpt_neo": (lambda: H.GPTNeoModel(H.GPTNeoConfig(
            vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=32,
            attention_types=[[["global", "local"], 1]], window_size=4, use_cache=False)), "text"),
        "mobilebert": (lambda: H.MobileBertModel(H.MobileBertConfig(
            **tiny, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2)),
            "text"),
        "squeezebert": (lambda: H.SqueezeBertModel(H.SqueezeBertConfig(
            **tiny, embedding_size=32, q_groups=2, k_groups=2, v_groups=2, post_attention_groups=2,
            intermediate_groups=4, output_groups=4)), "text"),
        "convbert": (lambda: H.ConvBertModel(H.ConvBertConfig(**tiny, embedding_size=32, head_ratio=2,
                                                              conv_kernel_size=3, num_groups=1)), "text"),
        "funnel": (lambda: H.FunnelModel(H.FunnelConfig(vocab_size=64, block_sizes=[1, 1], num_decoder_layers=1,
                                                        d_model=32, n_head=4, d_head=8, d_inner=64)), "text"),
        "mamba": (lambda: H.MambaModel(H.MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=2,
                                                     expand=2, conv_kernel=4, use_cache=False, use_mambapy=False)),
                  "ids"),
        "recurrent_gemma": (lambda: H.RecurrentGemmaModel(H.RecurrentGemmaConfig(
            num_hidden_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=1, head_dim=8, lru_width=32, attention_window_size=8,
            block_types=["recurrent", "attention"], use_cache=False)), "ids"),
        "segformer": (lambda: H.SegformerModel(H.SegformerConfig(
            num_encoder_blocks=2, depths=[2, 2], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
            strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2])), "image"),
        "mobilevit_hf": (lambda: H.MobileViTModel(H.MobileViTConfig(
            image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            num_attention_heads=4, expand_ratio=2.0)), "image64"),
        "swinv2": (lambda: H.Swinv2Model(H.Swinv2Config(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2],
                                                        num_heads=[2, 4], window_size=4)), "image"),
        "dinov2": (lambda: H.Dinov2Model(H.Dinov2Config(**vit)), "image"),
        "convnextv2_hf": (lambda: H.ConvNextV2Model(H.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32],
                                                                       depths=[2, 2, 2, 2])), "image"),
        "regnet_hf": (lambda: H.RegNetModel(H.RegNetConfig(embedding_size=16, hidden_sizes=[16, 16, 32, 32],
                                                           depths=[2, 1, 1, 1], groups_width=8, layer_type="y")),
                      "image"),
        "resnet_hf": (lambda: H.ResNetModel(H.ResNetConfig(embedding_size=16, hidden_sizes=[8, 16, 24, 32],
                                                           depths=[2, 1, 1, 1], layer_type="bottleneck")), "image"),
        "beit": (lambda: H.BeitModel(H.BeitConfig(**beit, vocab_size=64)), "image"),
        "data2vec_vision": (lambda: H.Data2VecVisionModel(H.Data2VecVisionConfig(**beit)), "image"),
        "wav2vec2": (lambda: H.Wav2Vec2Model(H.Wav2Vec2Config(**wave, feat_extract_norm="group")), "wave"),
        "hubert": (lambda: H.HubertModel(H.HubertConfig(**wave, feat_extract_norm="layer", do_stable_layer_norm=True)),
                   "wave"),
        "deit_hf": (lambda: H.DeiTModel(H.DeiTConfig(**vit)), "image"),
        "yolos": (lambda: H.YolosModel(H.YolosConfig(**{**vit, "image_size": [32, 32]}, num_detection_tokens=4)),
                  "image"),
        "levit_hf": (lambda: H.LevitModel(H.LevitConfig(
            image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[4, 4, 4], depths=[2, 2, 2],
            key_dim=[8, 8, 8], attention_ratio=[2, 2, 2], mlp_ratio=[2, 2, 2],
            down_ops=[["Subsample", 8, 4, 4, 2, 2], ["Subsample", 8, 6, 4, 2, 2]])), "image64"),
        "pvt": (lambda: H.PvtModel(H.PvtConfig(
            image_size=32, num_encoder_blocks=2, depths=[2, 2], sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
            patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2])), "image"),
        "nfnet": (lambda: _nfnet(stem_type="deep_quad", stem_chs=16, group_size=8, bottle_ratio=0.5, extra_conv=True,
                                 attn_layer="se", attn_kwargs=dict(rd_ratio=0.5), num_features=64, act_layer="gelu"),
                  "image"),
        "nf_resnet": (lambda: _nfnet(stem_type="7x7_pool", stem_chs=16, bottle_ratio=0.25, extra_conv=False,
                                     gamma_in_act=True, same_padding=True, skipinit=True, act_layer="relu",
                                     num_features=0), "image"),
        "regnetx": (lambda: _regnet(0.0), "image"),
        "regnety_se": (lambda: _regnet(0.25), "image"),
        "efficientnetv2": (lambda: timm.models.efficientnet._gen_efficientnetv2_s(
            "efficientnetv2_rw_t", channel_multiplier=0.25, depth_multiplier=0.2, num_classes=10), "image"),
        "repvgg": (lambda: _byob("repvgg_a0", lambda b: dataclasses.replace(b, d=min(b.d, 2), c=max(8, int(b.c / 4)))),
                   "image"),
        "fastvit": (lambda: timm.create_model("fastvit_t8", **convs, layers=(2, 1, 1, 1), embed_dims=(16, 32, 64, 128)),
                    "image"),
        "mobilevit_timm": (lambda: _byob("mobilevit_xxs", _mobilevit_block, num_features=64), "image64"),
        "coatnet": (lambda: _maxxvit(("C", "T")), "image"),
        "maxvit": (lambda: _maxxvit(("M", "M")), "image"),
        "pit": (lambda: timm.create_model("pit_ti_224", **convs, img_size=32, patch_size=4, stride=2, base_dims=[8, 8],
                                          depth=[2, 2], heads=[2, 4]), "image"),
        "xcit": (lambda: timm.create_model("xcit_nano_12_p8_224", **convs, img_size=32, embed_dim=32, depth=2,
                                           num_heads=4, cls_attn_layers=2), "image"),
        "twins_pcpvt": (lambda: timm.create_model("twins_pcpvt_small", **convs, img_size=32, embed_dims=[16, 32],
                                                  num_heads=[1, 2], mlp_ratios=[2, 2], depths=[2, 2], sr_ratios=[2, 1]),
                        "image"),
        "twins_svt": (lambda: timm.create_model("twins_svt_small", **convs, img_size=32, embed_dims=[16, 32],
                                                num_heads=[2, 4], mlp_ratios=[2, 2], depths=[2, 2], wss=[2, 2],
                                                sr_ratios=[2, 1]), "image"),
        "tiny_vit": (lambda: timm.create_model("tiny_vit_5m_224", **convs, embed_dims=[16, 32, 32, 32],
                                               depths=[1, 2, 1, 1], num_heads=[2, 4, 4, 4], window_sizes=[2, 2, 2, 2]),
                     "image64"),
        "edgenext": (lambda: timm.create_model("edgenext_xx_small", **convs, **stages4, heads=(4, 4, 4, 4)), "image"),
        "res2net": (lambda: _resnet(timm.models.res2net.Bottle2neck, base_width=16, block_args=dict(scale=4)), "image"),
        "resnest": (lambda: _resnet(timm.models.resnest.ResNestBottleneck, base_width=32, stem_type="deep",
                                    avg_down=True, block_args=dict(radix=2, avd=True, avd_first=False)), "image"),
        "dla": (lambda: timm.models.dla.DLA(levels=[1, 1, 1, 2, 1, 1], channels=[8, 16, 16, 32, 32, 64],
                                            block=timm.models.dla.DlaBasic, num_classes=10), "image"),
        "convnextv2_timm": (lambda: timm.create_model("convnextv2_atto", **convs, **stages4), "image"),
        "efficientformer": (lambda: timm.create_model("efficientformer_l1", **convs, embed_dims=stages4["dims"],
                                                      depths=stages4["depths"]), "image224"),
        "hgnet": (lambda: timm.models.hgnet.HighPerfGpuNet(
            {"stem_type": "v2", "stem_chs": [16, 16], "stage1": [16, 16, 32, 1, False, False, 3, 2],
             "stage2": [32, 16, 48, 1, True, True, 5, 2], "stage3": [48, 16, 48, 1, True, True, 5, 2],
             "stage4": [48, 16, 64, 1, True, True, 5, 2]}, num_classes=10, head_hidden_size=64), "image"),
        "ghostnetv2": (lambda: timm.models.ghostnet._create_ghostnet("ghostnetv2_100", width=0.25, version="v2",
                                                                     num_classes=10), "image64"),
        "inception_v3": (lambda: timm.create_model("inception_v3", **convs), "image75"),
        "vgg": (_vgg, "image"),
    }


def _byob(name: str, block: Callable, **cfg):
    """A timm ByobNet from a named configuration, each block (nested: stage tuples) made tiny by ``block``."""
    from timm.models import byobnet, mobilevit
    base = {**byobnet.model_cfgs, **mobilevit.model_cfgs}[name]

    def shrink(blocks: tuple) -> tuple:
        return tuple(shrink(b) if isinstance(b, tuple) else block(b) for b in blocks)
    cfg = {"stem_chs": 16, "num_features": 0, **cfg}
    return byobnet.ByobNet(dataclasses.replace(base, blocks=shrink(base.blocks), **cfg), num_classes=10)


def _mobilevit_block(b):
    kw = dict(b.block_kwargs or {})
    if "transformer_dim" in kw:
        kw.update(transformer_dim=32, transformer_depth=2, num_heads=4)
    return dataclasses.replace(b, d=1, block_kwargs=kw or b.block_kwargs)


def _maxxvit(block_type: tuple[str, str]):
    from timm.models import maxxvit as mx
    return mx.MaxxVit(mx.MaxxVitCfg(
        embed_dim=(16, 32), depths=(2, 2), block_type=block_type, stem_width=16,
        transformer_cfg=mx.MaxxVitTransformerCfg(dim_head=8, window_size=(2, 2), grid_size=(2, 2)),
        conv_cfg=mx.MaxxVitConvCfg(expand_ratio=2.0)), img_size=32, num_classes=10)


def _nfnet(**cfg):
    from timm.models import nfnet
    return nfnet.NormFreeNet(nfnet.NfCfg(depths=(2, 2, 1, 1), channels=(16, 32, 48, 64), **cfg), num_classes=10)


def _regnet(se_ratio: float):
    from timm.models import regnet
    return regnet.RegNet(regnet.RegNetCfg(depth=4, w0=16, wa=60, wm=2.0, group_size=8, stem_width=16,
                                          se_ratio=se_ratio), num_classes=10)


def _resnet(block, **kw):
    from timm.models import resnet
    return resnet.ResNet(block, layers=[2, 1, 1, 1], channels=(16, 32, 48, 64), stem_width=16, num_classes=10, **kw)


def _vgg():
    """A VGG whose 4096-wide 7x7 pre-logits (100M weights) is replaced by a small one of the same kind."""
    from timm.layers import ClassifierHead
    from timm.models import vgg
    m = vgg.VGG([16, "M", 32, "M", 64, 64, "M"], num_classes=10)
    m.pre_logits = vgg.ConvMlp(64, 64, kernel_size=7, mlp_ratio=1.0)
    m.num_features, m.head = 64, ClassifierHead(64, 10)
    return m


def _inputs(kind: str):
    """The example inputs of a kind; ``identity_survey``'s for text and 32x32 images."""
    import torch
    g = torch.Generator().manual_seed(5)
    if kind == "ids":
        return {"input_ids": torch.tensor(TEXT_IDS)}
    if kind == "s2s":
        return {**_corpus_inputs("text"), "decoder_input_ids": torch.tensor([[1, 4, 9, 2], [1, 7, 7, 3]])}
    if kind == "wave":
        return {"input_values": torch.randn(2, 400, generator=g)}
    if kind.startswith("image") and kind != "image":
        size = int(kind[len("image"):])
        return torch.randn(2, 3, size, size, generator=g)
    return _corpus_inputs(kind)


def _pair(make: Callable):
    """A perturbed source and a fresh target of the same architecture (other initial values)."""
    import torch

    from tests.corpus.build import perturb
    torch.manual_seed(0)
    src = make().eval()
    perturb(src)
    torch.manual_seed(1)
    return src, make().eval()


def _cell(want, got, plan) -> str:
    import numpy as np
    err = float(np.abs(got - want).max() / np.abs(want).max())
    return f"{err:.1e} / {plan.summary()['written_fraction']:.1%}"


def _module_cell(make: Callable, x) -> str:
    import torch

    from front_onnx.errors import FrontError
    from front_onnx.torch import transfer_module
    src, tgt = _pair(make)
    try:
        same, plan = transfer_module(src, tgt, x)
    except FrontError as e:  # transfer_module's own export of the modules: the exporter failed, not FRONT
        if str(e).startswith("torch.onnx.export of") and e.__cause__ is not None:
            return f"export fails ({type(e.__cause__).__name__})"
        raise
    with torch.no_grad():
        want, got = (_first(m(**x) if isinstance(x, dict) else m(x)).numpy() for m in (src, same))
    return _cell(want, got, plan)


def _export(model, x, path: Path, dynamo: bool) -> None:
    """As the corpus builder exports: for the legacy exporter, an HF forward bound to exactly these inputs."""
    import torch

    from tests.corpus.build import _bind_forward
    with (torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        warnings.simplefilter("ignore")
        if isinstance(x, dict) and not dynamo:
            _bind_forward(model, tuple(x))
            first = next(iter(x))
            torch.onnx.export(model, (x[first],), str(path), dynamo=False, input_names=list(x),
                              kwargs={k: v for k, v in x.items() if k != first})
        else:
            args, kwargs = ((), dict(x)) if isinstance(x, dict) else ((x,), None)
            torch.onnx.export(model, args, str(path), kwargs=kwargs, dynamo=dynamo)


def _run(path: Path, x):
    """The first output of the graph under onnxruntime (the inputs it dropped are not fed)."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {k: v.numpy() for k, v in x.items() if k in names} if isinstance(x, dict) else {names[0]: x.numpy()}
    return session.run(None, feeds)[0]


def _file_cell(make: Callable, x, dynamo: bool, folder: Path) -> str:
    import front_onnx
    folder.mkdir()
    src, tgt = _pair(make)
    source, target, output = (folder / f"{n}.onnx" for n in ("source", "target", "output"))
    try:
        _export(src, x, source, dynamo)
        _export(tgt, x, target, dynamo)
    except Exception as e:  # noqa: BLE001 - only the exporter's: front-onnx's are the survey's findings
        return f"export fails ({type(e).__name__})"
    plan = front_onnx.transfer(source, target, output).plan
    return _cell(_run(source, x), _run(output, x), plan)


def survey(name: str, make: Callable, kind: str) -> str:
    """One row: the transfer_module, legacy-export and dynamo-export identities of the family."""
    x = _inputs(kind)
    cells = []
    with tempfile.TemporaryDirectory(prefix="wide-survey-") as tmp:
        for path, check in (("module", lambda: _module_cell(make, x)),
                            ("legacy", lambda: _file_cell(make, x, False, Path(tmp) / "legacy")),
                            ("dynamo", lambda: _file_cell(make, x, True, Path(tmp) / "dynamo"))):
            try:
                cells.append(check())
            except Exception as e:  # noqa: BLE001 - reported in the row, the message on stderr
                cells.append(f"ERR {type(e).__name__}")
                print(f"{name} {path}: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr, flush=True)
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    from tests.corpus.hf_survey import print_table
    known = families()
    print_table(__doc__, "| family | transfer_module: err / written | legacy export: err / written "
                         "| dynamo export: err / written |\n|---|---|---|---|", known,
                lambda name: survey(name, *known[name]))


if __name__ == "__main__":
    main()
