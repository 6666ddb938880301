#!/usr/bin/env python3
"""Training-step throughput: our WikiMiniModel against transformers' LlamaForCausalLM, one process.

Both models have the same shapes and start from the same weights (`to_hf_model(model)`), and
both run the same step (`src.training.step.train_step`): zero_grad, forward under bf16
autocast (`Precision('bf16', device).autocast()`), backward, grad-norm clipping at 1.0, AdamW
from `build_optimizer` (same lr, betas, eps and weight-decay split: matrices decayed, norm
gains not) built over each model's own parameters. Same batch, same sequence length.

Loss, identically for both: the batch is x = window[:, :-1], y = window[:, 1:] (B, T each);
ours is `model(x, y)`; HF is `hf(input_ids=x, use_cache=False).logits`, then
`F.cross_entropy(logits.float().flatten(0, 1), y.flatten())` outside the model, which is what
our model computes inside. So both predict B*T tokens from T-token inputs (HF's `labels=`
would shift internally and predict only T-1 per row). HF runs with its default attention
implementation (sdpa, printed in the header), no cache during training.

Measurements alternate: after `--warmup` untimed steps per model, each model's `--steps` timed
steps are split into `--rounds` chunks run ours, HF, ours, HF, ...; the median of a model's
timed steps is reported, so drift in machine load hits both models alike.

MFU = 6 * parameters * tokens/s / peak, where the peak is this machine's bf16 matmul FLOP/s
measured in the same run (a large square matmul; the best 0.25 s window, measured before and
after the models, the higher kept). 6 * N per token counts forward (2N) and
backward (4N) matmuls and leaves attention scores out, as is conventional; parameters are
unique parameters (the tied embedding counts once, and the same for both models).

    python -m bench.bench_train_step                          # demo and reference configs
    python -m bench.bench_train_step --configs reference --batch-size 4 --steps 3
    python -m bench.bench_train_step --with-fp32              # also time ours without autocast
    python -m bench.bench_train_step --no-compile             # skip ours under torch.compile

Ours runs twice: eager, and under torch.compile (a separate copy with the same initial weights;
train.py compiles on CUDA and in the CPU configs). HF runs eager, as a user would run it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

from src.device import cpu_name
from src.model.config import ModelConfig
from src.model.hf_convert import to_hf_model
from src.model.transformer_block import WikiMiniModel
from src.training.config import OptimizerConfig
from src.training.optimizer import build_optimizer
from src.training.precision import Precision
from src.training.step import train_step

DEMO_CONFIG = ROOT / "config" / "train_config_tinystories_demo.yaml"
DEFAULT_BATCH = {"demo": 32, "reference": 8}


def model_config(name: str) -> ModelConfig:
    if name == "demo":
        return ModelConfig.from_dict(yaml.safe_load(DEMO_CONFIG.read_text())["model"])
    if name == "reference":
        return ModelConfig()  # 24.5M parameters, context 512
    raise SystemExit(f"unknown config {name!r} (choose demo, reference)")


class HFLoss(nn.Module):
    """LlamaForCausalLM behind our model's `(x, y) -> (logits, loss)` interface, for train_step."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.hf(input_ids=x, use_cache=False).logits
        return logits, F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, size: int, device: torch.device, seconds: float = 3.0) -> float:
    """FLOP/s of repeated size x size matmuls in `dtype`: the best of ~0.25 s windows over `seconds`
    (after a warm-up), so a burst of load from elsewhere on a shared machine does not lower it."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.25:
            for _ in range(10 if device.type == "cuda" else 1):
                a @ b
                count += 1
            sync(device)
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start))
    return best


class Runner:
    """One model + optimizer + fixed batch; `run(n)` returns the wall time of each of n steps."""

    def __init__(self, module: nn.Module, batch, precision: Precision, device: torch.device) -> None:
        self.module = module.train()
        self.optimizer = build_optimizer(module, OptimizerConfig(), device)
        self.batch, self.precision, self.device = batch, precision, device
        self.first_loss: float | None = None  # same weights + batch: should match between the models

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            sync(self.device)
            start = time.perf_counter()
            loss, _ = train_step(
                self.module, self.optimizer, lambda: self.batch, 1, self.precision, self.device, max_grad_norm=1.0
            )
            value = float(loss)  # waits for the step on CUDA
            times.append(time.perf_counter() - start)
            if self.first_loss is None:
                self.first_loss = value
        return times


def build_pair(config: ModelConfig, batch_size: int, device: torch.device, precision: Precision):
    torch.manual_seed(0)
    ours = WikiMiniModel(config)
    hf = to_hf_model(ours)  # copies the weights before either model trains
    twin = copy.deepcopy(ours).to(device)  # the same weights again, for the torch.compile run
    ours, hf = ours.to(device), hf.to(device)
    window = torch.randint(0, config.vocab_size, (batch_size, config.max_seq_len + 1), device=device)
    batch = (window[:, :-1].contiguous(), window[:, 1:].contiguous())
    params = ours.num_parameters()
    hf_params = sum(p.numel() for p in hf.parameters())
    assert hf_params == params, (hf_params, params)
    return (Runner(ours, batch, precision, device), Runner(HFLoss(hf), batch, precision, device), params, hf,
            Runner(torch.compile(twin), batch, precision, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="demo,reference", help="comma-separated: demo, reference")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 for demo, 8 for reference")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model (median reported)")
    parser.add_argument("--rounds", type=int, default=4, help="alternate ours/HF this many times")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before timing")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--matmul-size", type=int, default=None, help="default: 2048 on CPU, 8192 on CUDA")
    parser.add_argument("--with-fp32", action="store_true", help="also time ours without autocast (fp32)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip ours under torch.compile (what train.py uses on CUDA and in the CPU configs)")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    precision = Precision("bf16", device.type)
    import transformers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {cpu_name()}, device {device} ({where})")
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak_before = matmul_peak(torch.bfloat16, size, device)
    print(f"bf16 autocast; AdamW + clip 1.0; median of {args.steps} timed steps per model after {args.warmup} warm-up, "
          f"alternating ours/HF in {args.rounds} rounds")

    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        config = model_config(name)
        batch_size = args.batch_size or DEFAULT_BATCH[name]
        ours, hf, params, hf_model, compiled = build_pair(config, batch_size, device, precision)
        runners = {"ours": ours, "hf": hf} if args.no_compile else {"ours": ours, "ours_compiled": compiled, "hf": hf}
        attn = getattr(hf_model.config, "_attn_implementation", "?")
        compile_s = None
        for key, runner in runners.items():
            first = runner.run(1)[0]
            if key == "ours_compiled":
                compile_s = first  # the first compiled step includes compilation
            runner.run(max(0, args.warmup - 1))
        times = {key: [] for key in runners}
        rounds = max(1, min(args.rounds, args.steps))
        for i in range(rounds):
            chunk = args.steps * (i + 1) // rounds - args.steps * i // rounds
            for key, runner in runners.items():
                times[key] += runner.run(chunk)
        tokens = batch_size * config.max_seq_len
        row = {"config": name, "params": params, "batch": batch_size, "seq": config.max_seq_len,
               "hf_attn_implementation": attn}
        if compile_s is not None:
            row["first_compiled_step_s"] = round(compile_s, 1)
        for key in runners:
            per_step = statistics.median(times[key])
            row[f"{key}_s_per_step"] = round(per_step, 4)
            row[f"{key}_tok_s"] = round(tokens / per_step, 1)
            row[f"{key}_step_times"] = [round(t, 4) for t in times[key]]
        if "ours_compiled_tok_s" in row:
            row["ours_compiled_over_hf"] = round(row["ours_compiled_tok_s"] / row["hf_tok_s"], 3)
            row["first_loss_ours_compiled"] = round(compiled.first_loss, 5)
        row["ours_over_hf"] = round(row["ours_tok_s"] / row["hf_tok_s"], 3)
        row["first_loss_ours"], row["first_loss_hf"] = round(ours.first_loss, 5), round(hf.first_loss, 5)
        if args.with_fp32:
            fp32 = Runner(ours.module, ours.batch, Precision("fp32", device.type), device)
            fp32.run(1)
            per_step = statistics.median(fp32.run(args.steps))
            row["ours_fp32_tok_s"] = round(tokens / per_step, 1)
        rows.append(row)
        del ours, hf, hf_model, compiled, runners

    # MFU divides by the best of two peak measurements, before and after the models, so the
    # figure does not depend on whether the machine happened to be busy at the start.
    peak_after = matmul_peak(torch.bfloat16, size, device)
    peak = max(peak_before, peak_after)
    for r in rows:
        for key in ("ours", "ours_compiled", "hf", "ours_fp32"):
            if f"{key}_tok_s" in r:
                r[f"{key}_mfu"] = round(6 * r["params"] * r[f"{key}_tok_s"] / peak, 4)
    print(f"bf16 matmul peak ({size}^3): {peak / 1e9:,.1f} GFLOP/s "
          f"(best of {peak_before / 1e9:,.1f} before, {peak_after / 1e9:,.1f} after)")
    print(f"\nHF attention implementation: {', '.join(sorted({r['hf_attn_implementation'] for r in rows}))}")
    def cell(r, key, fmt, suffix=""):
        return format(r[key], fmt) + suffix if key in r else "-"

    print("\n| config | params | batch x seq | ours eager tok/s | ours compiled tok/s | HF eager tok/s "
          "| eager/HF | compiled/HF | MFU eager | MFU compiled | MFU HF |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['batch']} x {r['seq']} | {r['ours_tok_s']:,.0f} "
              f"| {cell(r, 'ours_compiled_tok_s', ',.0f')} | {r['hf_tok_s']:,.0f} | {r['ours_over_hf']:.2f}x "
              f"| {cell(r, 'ours_compiled_over_hf', '.2f', 'x')} | {r['ours_mfu']:.1%} | {cell(r, 'ours_compiled_mfu', '.1%')} "
              f"| {r['hf_mfu']:.1%} |")
    for r in rows:
        if "first_compiled_step_s" in r:
            print(f"{r['config']}: first compiled step (includes compilation) {r['first_compiled_step_s']} s")
    if args.with_fp32:
        for r in rows:
            print(f"ours fp32 ({r['config']}): {r['ours_fp32_tok_s']:,.0f} tok/s, MFU {r['ours_fp32_mfu']:.1%}")
    print()
    print(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_name(), "device": str(device), "bf16_peak_flops": round(peak),
        "bf16_peak_flops_before": round(peak_before), "bf16_peak_flops_after": round(peak_after), "matmul_size": size,
        "precision": "bf16-autocast", "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
