#!/usr/bin/env python3
"""Batch-1 generation speed: our KV-cached engine vs a no-cache loop vs transformers' generate().

Same weights everywhere (random init: speed does not depend on training). Prints a Markdown
table and JSON. Example:

    python bench/bench_generation.py --new-tokens 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from src.device import resolve_device  # noqa: E402
from src.generation import Generator, SamplingParams  # noqa: E402
from src.generation.sampling import sample_next_token  # noqa: E402
from src.model import ModelConfig, WikiMiniModel  # noqa: E402
from src.model.hf_convert import to_hf_model  # noqa: E402

PROMPT = "Once upon a time there was a little girl named Lily. She"


@torch.inference_mode()
def no_cache_loop(model, prompt_ids, params, n_new, seed):
    """The naive loop: re-run the whole context for every new token."""
    rng = torch.Generator(device=model.tok_embeddings.weight.device)
    rng.manual_seed(seed)
    ids = torch.tensor([prompt_ids], device=model.tok_embeddings.weight.device)
    for _ in range(n_new):
        logits = model(ids[:, -model.config.max_seq_len:], last_logits_only=True)[:, -1]
        token = sample_next_token(logits, ids, params, rng)
        ids = torch.cat((ids, token[:, None]), dim=1)
    return ids


def timed(fn, repeats, sync):
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-no-cache", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([PROMPT] * 10, vocab_size=300, min_frequency=1)
    config = ModelConfig()  # the 24.5M reference shapes
    model = WikiMiniModel(config).to(device=device, dtype=dtype).eval()
    generator = Generator(model, tokenizer)
    prompt_ids = generator.encode_prompt(PROMPT)
    full_prompt = generator.story_prefix + prompt_ids
    n = args.new_tokens
    rows = []

    for mode, params in (
        ("greedy", SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=n, stop_at_eos=False, seed=0)),
        ("balanced", SamplingParams(max_new_tokens=n, stop_at_eos=False, seed=0)),
    ):
        generator.generate(PROMPT, params.replace(max_new_tokens=8))  # warm-up
        ttft = []

        def ours():
            result = generator.generate(PROMPT, params)
            ttft.append(result.time_to_first_token)

        row = {"mode": mode, "ours_tok_s": n / timed(ours, args.repeats, sync), "ours_ttft_ms": 1000 * min(ttft)}
        if not args.skip_no_cache:
            no_cache_loop(model, full_prompt, params, 8, 0)  # warm-up
            row["no_cache_tok_s"] = n / timed(lambda: no_cache_loop(model, full_prompt, params, n, 0), 1, sync)
        if not args.skip_hf:
            hf = to_hf_model(model, tokenizer)
            hf.generation_config.pad_token_id = 1
            kwargs = dict(max_new_tokens=n, min_new_tokens=n, attention_mask=torch.ones(1, len(full_prompt), dtype=torch.long, device=device))
            if mode == "greedy":
                kwargs.update(do_sample=False)
            else:
                kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                              repetition_penalty=params.repetition_penalty)
            ids = torch.tensor([full_prompt], device=device)
            with torch.inference_mode():
                hf.generate(ids, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
                row["hf_generate_tok_s"] = n / timed(lambda: hf.generate(ids, **kwargs), args.repeats, sync)
        rows.append(row)

    print(f"\nGeneration, batch 1, {n} new tokens, 24.5M reference config, {device} {str(dtype).split('.')[-1]}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")
    print("| mode | ours tok/s | ours TTFT ms | HF generate tok/s | no-cache tok/s | ours/HF | ours/no-cache |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        hf_ratio = r["ours_tok_s"] / r["hf_generate_tok_s"] if "hf_generate_tok_s" in r else float("nan")
        nc_ratio = r["ours_tok_s"] / r["no_cache_tok_s"] if "no_cache_tok_s" in r else float("nan")
        print(f"| {r['mode']} | {r['ours_tok_s']:.1f} | {r['ours_ttft_ms']:.1f} | {r.get('hf_generate_tok_s', float('nan')):.1f} "
              f"| {r.get('no_cache_tok_s', float('nan')):.1f} | {hf_ratio:.2f}x | {nc_ratio:.2f}x |")
    print("\n" + json.dumps({"device": str(device), "new_tokens": n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
