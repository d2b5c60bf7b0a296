"""Block-diffusion sampler speed: SDAR's schedule with the exact block cache against the same model decoded
without it (every pass re-encodes the canvas up to the current block), and against LLaDA's reference sampler
on a model of equal size and length, in one run. Same tokens with and without the cache (checked here).

Random-init models of equal shape (d_model, layers, heads, MLP, vocabulary); greedy; the block model decodes
blocks of ``--block`` in ``--block`` steps each (one token per step, as SDAR / TraDo's 4 / 4), LLaDA one token
per step in blocks of ``--llada_block`` (its default 32). Usage:

    python benchmarks/block_sampler_speed.py [--d_model 256 --n_layers 4 --gen_length 256 --batch 4]
    python benchmarks/block_sampler_speed.py --tiny   # the committed tiny twins (SDAR vs LLaDA), held-out prompts
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from align.models import SDARLM, LLaDAConfig, LLaDAModelLM, SDARConfig
from align.models.family import family_spec
from align.sampling import SamplerSettings, generate
from align.sampling.block import block_generate


def models(args):
    torch.manual_seed(0)
    common = dict(
        vocab_size=args.vocab, mask_token_id=args.vocab - 1, eos_token_id=1, pad_token_id=1, bos_token_id=0
    )
    sdar = SDARLM(SDARConfig(hidden_size=args.d_model, num_attention_heads=args.n_heads,
                             num_key_value_heads=args.n_heads, head_dim=args.d_model // args.n_heads,
                             num_hidden_layers=args.n_layers, intermediate_size=3 * args.d_model,
                             max_position_embeddings=4096, block_size=args.block, **common))  # fmt: skip
    llada = LLaDAModelLM(LLaDAConfig(d_model=args.d_model, n_heads=args.n_heads, n_kv_heads=args.n_heads,
                                     n_layers=args.n_layers, mlp_hidden_size=3 * args.d_model,
                                     max_sequence_length=4096, **common))  # fmt: skip
    return sdar.eval(), llada.eval()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/block_sampler_speed.py")
    for name, default in (("d_model", 256), ("n_layers", 4), ("n_heads", 4), ("vocab", 1024), ("gen_length", 256),
                          ("prompt_length", 32), ("batch", 4), ("block", 4), ("llada_block", 32)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--tiny", action="store_true", help="recipes/tiny-sdar/model vs recipes/tiny/model")
    args = parser.parse_args(argv)
    attn = None
    if args.tiny:
        from align.models import load_model, load_tokenizer

        sdar = load_model("recipes/tiny-sdar/model", dtype="float32").eval()
        llada = load_model("recipes/tiny/model", dtype="float32").eval()
        tok = load_tokenizer("recipes/tiny-sdar/model")
        tok.padding_side = "left"
        with open("recipes/tiny/data/test.jsonl") as f:
            questions = [json.loads(line)["question"] for line in f][: args.batch]
        enc = tok(questions, return_tensors="pt", padding=True)
        ids, attn = enc["input_ids"], enc["attention_mask"]
    else:
        sdar, llada = models(args)
        ids = torch.randint(2, args.vocab - 2, (args.batch, args.prompt_length),
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
    spec = family_spec(sdar, tok if args.tiny else None)
    kw = dict(spec=spec, gen_length=args.gen_length, block_length=args.block, steps_per_block=args.block)
    tokens = args.batch * args.gen_length
    with torch.no_grad():
        cached, t_cached = timed(lambda: block_generate(sdar, ids, attn, **kw))
        plain, t_plain = timed(lambda: block_generate(sdar, ids, attn, use_cache=False, **kw))
        llada_settings = SamplerSettings(
            gen_length=args.gen_length,
            steps=args.gen_length,
            block_length=min(args.llada_block, args.gen_length),
        )
        ref, t_llada = timed(lambda: generate(llada, ids, attn, llada_settings))
    assert torch.equal(cached.sequences, plain.sequences), "the block cache changed the tokens"
    result = {
        "tokens_per_s": {"block_cached": tokens / t_cached, "block_no_cache": tokens / t_plain,
                         "llada_reference": tokens / t_llada},
        "forward_calls": {"block_cached": cached.nfe, "block_no_cache": plain.nfe, "llada_reference": ref.nfe},
        "speedup_cache": t_plain / t_cached,
        "speedup_vs_llada_reference": t_llada / t_cached,
        "same_tokens_with_and_without_cache": True,
        "shape": "recipes/tiny-sdar/model vs recipes/tiny/model, held-out prompts" if args.tiny else vars(args),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
