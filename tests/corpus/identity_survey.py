"""A survey of families beyond the corpus: each tiny source (its parameters perturbed, as a
trained model's are) transferred by ``transfer_module`` into a fresh copy of its own
architecture must reproduce the source. The table gives the largest relative error of the
first output and the share of weight elements written.

    python -m tests.corpus.identity_survey                 # every family (two to three minutes)
    python -m tests.corpus.identity_survey distilbert mixer
"""
from __future__ import annotations

from typing import Callable

TEXT_IDS = [[5, 9, 2, 33, 7, 1, 60, 12], [3, 3, 40, 8, 19, 22, 5, 6]]


def families() -> dict[str, tuple[Callable[[], object], str]]:
    """name -> (a fresh model, its input kind: text, image or audio features)."""
    import timm
    import transformers as T
    from timm.models.vision_transformer import VisionTransformer

    tiny = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                max_position_embeddings=32)
    return {
        "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=64, dim=32, n_heads=4, n_layers=2,
                                                                    hidden_dim=64, max_position_embeddings=32)), "text"),
        "electra": (lambda: T.ElectraModel(T.ElectraConfig(embedding_size=16, **tiny)), "text"),
        "mpnet": (lambda: T.MPNetModel(T.MPNetConfig(**{**tiny, "max_position_embeddings": 40})), "text"),
        "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=64, hidden_size=32, num_attention_heads=4,
                                                     num_hidden_layers=2, ffn_dim=64, max_position_embeddings=32,
                                                     use_cache=False)), "text"),
        "gptj": (lambda: T.GPTJForCausalLM(T.GPTJConfig(vocab_size=64, n_embd=32, n_head=4, n_layer=2, n_positions=32,
                                                        rotary_dim=4, use_cache=False)), "text"),
        "phi": (lambda: T.PhiForCausalLM(T.PhiConfig(**tiny, use_cache=False)), "text"),
        "gemma2": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**tiny, num_key_value_heads=2, head_dim=8,
                                                              use_cache=False)), "text"),
        "clip_text": (lambda: T.CLIPTextModel(T.CLIPTextConfig(**tiny)), "text"),
        "whisper_encoder": (lambda: T.WhisperModel(T.WhisperConfig(
            vocab_size=64, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=8, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, max_source_positions=8,
            max_target_positions=16)).encoder, "audio"),
        "mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10), "image"),
        "mixer": (lambda: timm.models.mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2,
                                                         embed_dim=32), "image"),
        "convmixer": (lambda: timm.models.convmixer.ConvMixer(dim=32, depth=2, kernel_size=3, patch_size=4,
                                                              num_classes=10), "image"),
        "ghostnet": (lambda: timm.create_model("ghostnet_050", pretrained=False, num_classes=10), "image"),
        # a mask token the forward reads only with bool_masked_pos: the example inputs give it
        "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        mlp_ratio=2, image_size=32, patch_size=8)), "masked image"),
        "vit_registers": (lambda: VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                                    num_classes=10, reg_tokens=4, init_values=1e-5), "image"),
    }


def _inputs(kind: str):
    import torch
    g = torch.Generator().manual_seed(5)
    if kind == "text":
        return {"input_ids": torch.tensor(TEXT_IDS), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    if kind == "masked image":
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, 3] = True
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "bool_masked_pos": mask}
    if kind == "audio":
        return {"input_features": torch.randn(2, 8, 16, generator=g)}
    return torch.randn(2, 3, 32, 32, generator=g)


def _first(out):
    return out if hasattr(out, "abs") else out[0]


def survey(name: str, make: Callable, kind: str) -> str:
    import torch

    from front_onnx.torch import transfer_module
    from tests.corpus.build import perturb
    x = _inputs(kind)
    torch.manual_seed(0)
    src = make().eval()
    perturb(src)
    torch.manual_seed(1)
    same, plan = transfer_module(src, make().eval(), x)
    with torch.no_grad():
        want = _first(src(**x) if isinstance(x, dict) else src(x))
        got = _first(same(**x) if isinstance(x, dict) else same(x))
    err = float((got - want).abs().max() / want.abs().max())
    return f"| {name} | {err:.1e} | {plan.summary()['written_fraction']:.1%} |"


def main() -> None:
    from tests.corpus.hf_survey import print_table
    known = families()
    print_table(__doc__, "| family | identity rel. error | written |\n|---|---|---|", known,
                lambda name: survey(name, *known[name]))


if __name__ == "__main__":
    main()
