"""A survey of Hugging Face decoder families beyond the corpus, through ``transfer_module``.

For each family, a 2-layer source (width 32, 4 query heads; its parameters perturbed, as a
trained model's are) is transferred into a fresh copy of its architecture and into a fresh
1-layer target (width 16, 2 query heads, key/value heads halved: grouped-query into
multi-query where the family has key/value heads). The table gives the identity's largest
relative logit error, the share of weight elements the shrink writes, and why anything was
left. A fused q|k|v cut into pieces of unequal widths is resampled piece by piece (Phi-3,
GPT-BigCode); one whose pieces are cut from a factor of its output (Falcon's heads) is left
with its reason (never resampled).

    python -m tests.corpus.hf_survey                      # every family (a minute or two)
    python -m tests.corpus.hf_survey gemma gpt_bigcode    # some families
"""
from __future__ import annotations

import argparse
from typing import Callable

TEXT_IDS = [[5, 9, 2, 33, 7, 1, 60, 12], [3, 3, 40, 8, 19, 22, 5, 6]]


def families() -> dict[str, Callable[[int, int, int, int], object]]:
    """name -> (width, query heads, key/value heads, layers) -> a fresh causal LM (head size 8)."""
    import transformers as T

    def llm(model, config, **extra):
        return lambda d, h, kv, n: model(config(vocab_size=64, hidden_size=d, intermediate_size=2 * d,
                                                num_hidden_layers=n, num_attention_heads=h,
                                                max_position_embeddings=32, use_cache=False,
                                                **{k: (v(kv) if callable(v) else v) for k, v in extra.items()}))
    return {
        "gemma": llm(T.GemmaForCausalLM, T.GemmaConfig, num_key_value_heads=lambda kv: kv, head_dim=8),
        "mistral": llm(T.MistralForCausalLM, T.MistralConfig, num_key_value_heads=lambda kv: kv, head_dim=8),
        "stablelm": llm(T.StableLmForCausalLM, T.StableLmConfig, num_key_value_heads=lambda kv: kv),
        "persimmon": llm(T.PersimmonForCausalLM, T.PersimmonConfig),
        "phi3": llm(T.Phi3ForCausalLM, T.Phi3Config, num_key_value_heads=lambda kv: kv, pad_token_id=0),
        # mixture of experts: torch exports transformers' experts only with the batched_mm implementation
        "mixtral": llm(T.MixtralForCausalLM, T.MixtralConfig, num_key_value_heads=lambda kv: kv, num_local_experts=4,
                       num_experts_per_tok=2, experts_implementation="batched_mm"),
        "qwen2_moe": llm(T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig, num_key_value_heads=lambda kv: kv, num_experts=4,
                         num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                         experts_implementation="batched_mm"),
        "gpt_bigcode": lambda d, h, kv, n: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(
            vocab_size=64, n_embd=d, n_layer=n, n_head=h, n_positions=32, multi_query=True, use_cache=False)),
        "falcon_new": lambda d, h, kv, n: T.FalconForCausalLM(T.FalconConfig(
            vocab_size=64, hidden_size=d, num_hidden_layers=n, num_attention_heads=h, num_kv_heads=kv,
            new_decoder_architecture=True, use_cache=False)),
        "falcon": lambda d, h, kv, n: T.FalconForCausalLM(T.FalconConfig(
            vocab_size=64, hidden_size=d, num_hidden_layers=n, num_attention_heads=h, multi_query=True,
            new_decoder_architecture=False, use_cache=False)),
    }


def survey(name: str, make: Callable) -> str:
    import torch

    from front_onnx.torch import transfer_module
    from tests.corpus.build import perturb
    text = {"input_ids": torch.tensor(TEXT_IDS), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}
    torch.manual_seed(0)
    src = make(32, 4, 2, 2).eval()
    perturb(src)
    torch.manual_seed(1)
    same, _ = transfer_module(src, make(32, 4, 2, 2).eval(), text)
    with torch.no_grad():
        want, got = src(**text).logits, same(**text).logits
    err = float((got - want).abs().max() / want.abs().max())
    _, plan = transfer_module(src, make(16, 2, 1, 1).eval(), text)
    left = sorted({s.reason.split(" (")[0] for s in plan.slots if s.status == "left" and s.role})
    return f"| {name} | {err:.1e} | {plan.summary()['written_fraction']:.1%} | {'; '.join(left) or '-'} |"


def print_table(doc: str, header: str, known: dict, row: Callable[[str], str]) -> None:
    """A survey's command line: the families asked for (default: all), one table row each."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("families", nargs="*", help="families to survey (default: all)")
    args = ap.parse_args()
    print(header)
    for name in args.families or list(known):
        print(row(name), flush=True)


def main() -> None:
    known = families()
    print_table(__doc__, "| family | identity rel. error | shrink written | left |\n|---|---|---|---|", known,
                lambda name: survey(name, known[name]))


if __name__ == "__main__":
    main()
