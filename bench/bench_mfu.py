#!/usr/bin/env python3
"""Training throughput and MFU of one model shape, per optimizer, micro-batch and compile mode.

Each combination trains a fresh model (same initial weights) on a fixed random batch with the
trainer's own step (`src.training.step.train_step`: bf16 autocast, grad clipping at 1.0) and
optimizer (`build_optimizer`), under torch.compile in the given mode. After `--warmup` untimed
steps (the compile), the median of `--steps` timed steps is reported:

    tokens/s = batch * context / median step time
    MFU      = 6 * parameters * tokens/s / peak

where the peak is this machine's bf16 matmul FLOP/s, measured in the same run (the best of
~0.25 s windows of large square matmuls, before and after the models).

    python -m bench.bench_mfu                                   # reference shape, adamw and muon, batch 32/64/128
    python -m bench.bench_mfu --optimizers muon --batch-sizes 64 --compile-modes default,max-autotune-no-cudagraphs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.bench_train_step import matmul_peak, model_config, sync
from src.device import cpu_name, resolve_device
from src.model.transformer_block import WikiMiniModel
from src.training.config import OptimizerConfig
from src.training.optimizer import build_optimizer
from src.training.precision import Precision
from src.training.step import train_step

LEARNING_RATES = {"adamw": 5e-4, "muon": 8e-3}  # the reference config's and the demo recipe's


def time_steps(config, optimizer_name: str, batch_size: int, compile_mode: str | None, device: torch.device,
               warmup: int, steps: int) -> float:
    """Median seconds per optimizer step."""
    torch.manual_seed(0)
    model = WikiMiniModel(config).to(device).train()
    optimizer = build_optimizer(model, OptimizerConfig(name=optimizer_name, lr=LEARNING_RATES[optimizer_name]),
                                device)
    module = model if compile_mode is None else torch.compile(model, mode=None if compile_mode == "default"
                                                              else compile_mode)
    window = torch.randint(0, config.vocab_size, (batch_size, config.max_seq_len + 1), device=device)
    batch = (window[:, :-1].contiguous(), window[:, 1:].contiguous())
    precision = Precision("bf16", device.type)
    times = []
    for index in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        loss, _ = train_step(module, optimizer, lambda: batch, 1, precision, device, max_grad_norm=1.0)
        float(loss)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="reference", help="demo or reference (the 24.5M shape, context 512)")
    parser.add_argument("--optimizers", default="adamw,muon")
    parser.add_argument("--batch-sizes", default="32,64,128", help="windows per micro-batch")
    parser.add_argument("--compile-modes", default="default", help="comma-separated: eager, default, "
                        "reduce-overhead, max-autotune-no-cudagraphs, max-autotune")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    config = model_config(args.config)
    params = WikiMiniModel(config).num_parameters()
    matmul_size = 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(torch.bfloat16, matmul_size, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{name} | torch {torch.__version__} | {args.config}: {params:,} parameters, context {config.max_seq_len}")
    rows = []
    for mode in args.compile_modes.split(","):
        for optimizer_name in args.optimizers.split(","):
            for batch_size in map(int, args.batch_sizes.split(",")):
                seconds = time_steps(config, optimizer_name, batch_size, None if mode == "eager" else mode, device,
                                     args.warmup, args.steps)
                tokens_per_s = batch_size * config.max_seq_len / seconds
                rows.append({"compile": mode, "optimizer": optimizer_name, "batch": batch_size,
                             "step_ms": round(seconds * 1000, 2), "tokens_per_s": round(tokens_per_s),
                             "mfu_raw": 6 * params * tokens_per_s})
                print(f"  {mode} {optimizer_name} batch {batch_size}: {seconds * 1000:.1f} ms/step", flush=True)
    peak = max(peak, matmul_peak(torch.bfloat16, matmul_size, device))
    print(f"measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s")
    print("| compile | optimizer | micro-batch | ms/step | tokens/s | MFU |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["mfu"] = round(row.pop("mfu_raw") / peak, 4)
        print(f"| {row['compile']} | {row['optimizer']} | {row['batch']} | {row['step_ms']} | "
              f"{row['tokens_per_s']:,} | {row['mfu']:.1%} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "peak_flops": peak, "params": params, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
