"""Training: config, loop, checkpoints, distributed. `train.py` calls `cli.main`.

    config.py         typed config sections (model/data/training/optimizer/scheduler/logging), --set
    trainer.py        the loop: setup, steps, evaluation; the run's counters and length
    step.py           one optimizer step: gradient accumulation, clipping, update
    schedule.py       linear warmup then cosine to min_lr
    optimizer.py      AdamW or Muon + AdamW, weight decay on matrices only, per-group LR ratios
    precision.py      bf16 / fp16 + GradScaler / fp32, TF32
    compile.py        when to torch.compile
    distributed.py    torchrun / DDP helpers (nccl on CUDA, gloo on CPU)
    data.py           training batches and validation tokens from the token cache
    evaluation.py     validation loss, perplexity, bits per byte
    checkpointing.py  CheckpointManager: latest / best files, every component's state, exact resume
    reporting.py      console, progress bar, metrics.jsonl, TensorBoard / W&B, sample stories
    metrics.py        metrics.jsonl and the loss-curve PNG
    rng.py            RNG states as checkpoint-safe values
    signals.py        Ctrl-C / SIGTERM: save and stop at a step boundary
    preflight.py      the checks test_training_setup.py runs
    cli.py            argument parsing and one-line errors
"""
