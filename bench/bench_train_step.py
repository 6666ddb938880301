#!/usr/bin/env python3
"""Training throughput of the reference model on this machine: tokens/s and MFU.

MFU = 6 * parameters * tokens/s / peak, where the peak is this machine's bf16 matmul FLOP/s
measured in the same run (a large square matmul), so the figure says how much of what the
hardware can do the training step actually uses. 6 * N per token counts forward (2N) and
backward (4N) matmuls and leaves attention scores out, as is conventional.

    python bench/bench_train_step.py                       # reference config, batch 8 x 512
    python bench/bench_train_step.py --batch-size 4 --steps 3 --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.model.config import ModelConfig  # noqa: E402
from src.model.transformer_block import WikiMiniModel  # noqa: E402
from src.training.config import OptimizerConfig  # noqa: E402
from src.training.optimizer import build_optimizer  # noqa: E402
from src.training.precision import Precision  # noqa: E402
from src.training.step import train_step  # noqa: E402


def matmul_peak(dtype: torch.dtype, size: int, seconds: float = 3.0) -> float:
    """FLOP/s of repeated size x size matmuls in `dtype` (after a warm-up)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def step_throughput(precision: str, batch_size: int, steps: int, warmup: int) -> tuple[float, float, int]:
    """(tokens/s, seconds/step, parameters) of full training steps of the reference model."""
    torch.manual_seed(0)
    config = ModelConfig()  # the reference shape: 24.5M parameters, context 512
    device = torch.device("cpu")
    model = WikiMiniModel(config).train()
    optimizer = build_optimizer(model, OptimizerConfig(), device)
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.max_seq_len + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    prec = Precision(precision, "cpu")
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, _ = train_step(model, optimizer, lambda: batch, 1, prec, device, max_grad_norm=1.0)
        float(loss)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    per_step = sorted(times)[len(times) // 2]  # median
    return batch_size * config.max_seq_len / per_step, per_step, model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32", "both"], default="both")
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    peaks = {"bf16": matmul_peak(torch.bfloat16, args.matmul_size), "fp32": matmul_peak(torch.float32, args.matmul_size)}
    for name, peak in peaks.items():
        print(f"{name} matmul peak ({args.matmul_size}^3): {peak / 1e9:,.1f} GFLOP/s")
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    print(f"\nreference model, batch {args.batch_size} x 512, AdamW, median of {args.steps} steps")
    print("| precision | s/step | tokens/s | model GFLOP/s | MFU (vs bf16 peak) |")
    print("|---|---|---|---|---|")
    for precision in precisions:
        tokens_per_s, per_step, params = step_throughput(precision, args.batch_size, args.steps, args.warmup)
        flops = 6 * params * tokens_per_s
        print(f"| {precision} | {per_step:.2f} | {tokens_per_s:,.0f} | {flops / 1e9:,.1f} | {flops / peaks['bf16']:.1%} |")
    print(f"\nparameters: {params:,}")


if __name__ == "__main__":
    main()
