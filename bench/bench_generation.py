#!/usr/bin/env python3
"""Batch-1 generation speed: our engine vs transformers' generate() vs a loop without KV cache.

Same weights everywhere (random init of the chosen shapes: speed does not depend on training;
HF gets them through our export). Every engine makes exactly --new-tokens tokens (no EOS stop).
Our engine runs at each weight precision it supports here (fp32, bf16, and int8 weights with
bf16 activations on CPU), then with its compiled decode step (generate.py --compile) at the
precision `auto` picks, after the one-off compile (reported as compile_s); HF generate() runs in fp32 (its CPU default) and bf16; the no-cache
loop re-runs the whole context each token at the precision `auto` picks. Prints a Markdown
table and JSON.

    python -m bench.bench_generation                       # 24.5M reference shapes, 256 tokens
    python -m bench.bench_generation --config demo --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch


from src.data.tokenizer import train_bpe_tokenizer
from src.device import cpu_name, inference_precision, resolve_device
from src.generation import Generator, SamplingParams
from src.generation.sampling import RowSettings, sample_tokens
from src.model import ModelConfig, WikiMiniModel
from src.model.hf_convert import to_hf_model
from src.model.quantize import quantize_int8

PROMPT = "Once upon a time there was a little girl named Lily. She"
CONFIGS = {
    "reference": ModelConfig(),
    "demo": ModelConfig(vocab_size=4096, d_model=192, n_layers=4, n_heads=6, d_ffn=512, max_seq_len=256),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16}


def build_model(config: ModelConfig, precision: str, device: torch.device) -> WikiMiniModel:
    torch.manual_seed(0)
    model = WikiMiniModel(config).to(device=device, dtype=DTYPES[precision]).eval()
    return quantize_int8(model) if precision == "int8" else model


@torch.inference_mode()
def no_cache_loop(model, prompt_ids, params, n_new, seed, ttft):
    """The naive loop: re-run the whole context for every new token."""
    device = model.tok_embeddings.weight.device
    rows, rngs = RowSettings.of([params], device), [torch.Generator().manual_seed(seed)]
    ids = torch.tensor([prompt_ids], device=device)
    seen = torch.zeros(ids.size(0), model.config.vocab_size, dtype=torch.bool).scatter_(1, ids[:, 1:], True)
    start = time.perf_counter()
    for i in range(n_new):
        logits = model(ids[:, -model.config.max_seq_len:], last_logits_only=True)[:, -1]
        token = sample_tokens(logits, rows, rngs, seen)
        seen[0, token] = True
        ids = torch.cat((ids, token[:, None]), dim=1)
        if i == 0:
            ttft.append(time.perf_counter() - start)
    return ids


class FirstTokenTimer:
    """A generate() streamer that notes when the first new token arrives (its first put is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.start, self.first = 0, time.perf_counter(), None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def timed(fn, repeats, sync) -> float:
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
    parser.add_argument("--config", choices=sorted(CONFIGS), default="reference")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for ours and HF")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-no-cache", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-compile", action="store_true", help="leave out our compiled decode step (--compile)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = CONFIGS[args.config]
    auto = inference_precision(device, "auto")
    ours_precisions = ["fp32", "bf16"] + (["int8"] if device.type == "cpu" else [])
    tokenizer = train_bpe_tokenizer([PROMPT] * 10, vocab_size=300, min_frequency=1)
    n = args.new_tokens
    modes = {
        "greedy": SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=n, stop_at_eos=False, seed=0),
        "balanced": SamplingParams(max_new_tokens=n, stop_at_eos=False, seed=0),
    }
    rows = []

    runs = [(precision, False) for precision in ours_precisions] + ([] if args.skip_compile else [(auto, True)])
    for precision, compiled in runs:
        generator = Generator(build_model(config, precision, device), tokenizer, decode="compile" if compiled else "auto")
        start = time.perf_counter()
        generator.generate(PROMPT, modes["greedy"].replace(max_new_tokens=8))  # warm-up (and compile)
        warm_up_s = time.perf_counter() - start
        for mode, params in modes.items():
            generator.generate(PROMPT, params.replace(max_new_tokens=8))
            ttft = []

            def ours():
                ttft.append(generator.generate(PROMPT, params).time_to_first_token)

            rows.append({"mode": mode, "engine": "ours, compiled" if compiled else "ours", "precision": precision,
                         "tok_s": n / timed(ours, args.repeats, sync), "ttft_ms": 1000 * min(ttft),
                         **({"compile_s": round(warm_up_s, 1)} if compiled else {})})
    full_prompt = generator.story_prefix + generator.encode_prompt(PROMPT)

    if not args.skip_hf:
        for precision in ("fp32", "bf16"):
            hf = to_hf_model(build_model(config, precision, device), tokenizer).to(DTYPES[precision]).eval()
            hf.generation_config.pad_token_id = 1
            ids = torch.tensor([full_prompt], device=device)
            for mode, params in modes.items():
                kwargs = dict(max_new_tokens=n, min_new_tokens=n, attention_mask=torch.ones_like(ids))
                if mode == "greedy":
                    kwargs.update(do_sample=False)
                else:
                    kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k,
                                  top_p=params.top_p, repetition_penalty=params.repetition_penalty)
                ttft = []

                def theirs():
                    timer = FirstTokenTimer()
                    hf.generate(ids, streamer=timer, **kwargs)
                    ttft.append(timer.first)

                with torch.inference_mode():
                    hf.generate(ids, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
                    seconds = timed(theirs, args.repeats, sync)
                rows.append({"mode": mode, "engine": "hf_generate", "precision": precision, "tok_s": n / seconds,
                             "ttft_ms": 1000 * min(ttft)})

    if not args.skip_no_cache:
        model = build_model(config, auto, device)
        for mode, params in modes.items():
            ttft = []
            no_cache_loop(model, full_prompt, params, 4, 0, [])  # warm-up
            seconds = timed(lambda: no_cache_loop(model, full_prompt, params, n, 0, ttft), 1, sync)
            rows.append({"mode": mode, "engine": "no_cache_loop", "precision": auto, "tok_s": n / seconds,
                         "ttft_ms": 1000 * min(ttft)})

    def find(mode, engine, precision):
        return next((r["tok_s"] for r in rows if (r["mode"], r["engine"], r["precision"]) == (mode, engine, precision)), None)

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    print(f"\nGeneration, batch 1, {n} new tokens, {args.config} config ({build_model(config, 'fp32', 'cpu').num_parameters():,} params), "
          f"{device}, torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads; auto precision here: {auto}\n")
    print("| mode | engine | precision | tok/s | TTFT ms | vs HF fp32 | vs HF same precision | vs no-cache loop |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = find(r["mode"], "hf_generate", "bf16" if r["precision"] == "int8" else r["precision"])
        print(f"| {r['mode']} | {r['engine']} | {r['precision']} | {r['tok_s']:.1f} | {r['ttft_ms']:.1f} "
              f"| {ratio(r['tok_s'], find(r['mode'], 'hf_generate', 'fp32'))} | {ratio(r['tok_s'], same)} "
              f"| {ratio(r['tok_s'], find(r['mode'], 'no_cache_loop', auto))} |")
    print("\n(int8 is compared with HF bf16 in the 'same precision' column: both run bf16 activations.)")
    for r in rows:
        if "compile_s" in r:
            print(f"(compiled decode: one-off compile and warm-up {r['compile_s']} s, before timing)")
            break
    print("\n" + json.dumps({"config": args.config, "device": str(device), "auto_precision": auto, "new_tokens": n,
                             "cpu": cpu_name(), "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
