"""What lets a person watch a run: TensorBoard / Weights & Biases scalars, and sample stories.

`metrics.jsonl` stays the record the project's own tools read; these are views of the same
numbers for the tools people already use. Both are optional and rank 0 only. Sample stories
come from the generation engine itself (fixed prompts and seed), so what the log shows at step
N is exactly what `generate.py` would print for that checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from src.config_utils import ConfigError
from src.atomic_files import atomic_write_text
from src.training.config import LoggingConfig


class RunLoggers:
    """Scalars and text to TensorBoard (events in the output dir) and/or a W&B run."""

    def __init__(self, config: LoggingConfig, output_dir: Path, run_config: dict[str, Any]) -> None:
        self.tensorboard = None
        self.wandb_run = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("logging.tensorboard is true but the tensorboard package is not installed "
                                  "(pip install tensorboard)") from None
            self.tensorboard = SummaryWriter(log_dir=str(output_dir))
        if config.wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(f"logging.wandb_project is {config.wandb_project!r} but wandb is not installed "
                                  "(pip install wandb); WANDB_MODE=offline keeps the run local") from None
            # wandb reads WANDB_MODE itself (offline / disabled), so an offline run stays on disk.
            self.wandb_run = wandb.init(project=config.wandb_project, dir=str(output_dir), config=run_config,
                                        mode=os.environ.get("WANDB_MODE") or None)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, text, step)
        if self.wandb_run is not None:
            self.wandb_run.log({tag: text}, step=step)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def sample_stories(model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
                   seed: int) -> list[dict[str, Any]]:
    """One story per prompt from the current weights, with the balanced preset and a fixed seed."""
    from src.generation.engine import Generator
    from src.generation.presets import DEFAULT_PRESET, PRESETS

    was_training = model.training
    try:
        generator = Generator(model, tokenizer)
        params = PRESETS[DEFAULT_PRESET].replace(max_new_tokens=max_new_tokens, seed=seed)
        with torch.no_grad():
            results = [generator.generate(prompt, params) for prompt in prompts]
    finally:
        model.train(was_training)
    return [{"prompt": r.prompt, "text": r.prompt + r.text, "tokens": r.tokens, "finish_reason": r.finish_reason}
            for r in results]


class SampleLog:
    """samples.jsonl in the output dir: one line per evaluation, cut back on resume like metrics."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and resume_step is not None and json.loads(line)["step"] <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, step: int, samples: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "samples": samples}, ensure_ascii=False) + "\n")
