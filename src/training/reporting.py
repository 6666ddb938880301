"""What a run tells people: the console (a progress bar on a terminal, else one line per log
step), metrics.jsonl, TensorBoard / W&B scalars and sample stories. Only the main process writes.

The console is usable from the start; the files open once the run knows its first step (after
a resume, metrics.jsonl and samples.jsonl are cut back to it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from src.training.config import TrainConfig
from src.training.metrics import MetricsLog, plot_loss_curve
from src.training.observers import RunLoggers, SampleLog, sample_stories

PLOT_NAME = "loss_curve.png"
SAMPLES_NAME = "samples.jsonl"


class RunReport:
    def __init__(self, config: TrainConfig, output_dir: Path, is_main: bool) -> None:
        self.config, self.output_dir, self.is_main = config, output_dir, is_main
        self.bar: tqdm | None = None
        self.metrics: MetricsLog | None = None
        self.loggers: RunLoggers | None = None
        self.samples: SampleLog | None = None

    def open(self, step: int) -> None:
        """metrics.jsonl, TensorBoard / W&B and samples.jsonl, continuing from `step`."""
        if not self.is_main:
            return
        log_cfg = self.config.logging
        self.metrics = MetricsLog(self.output_dir / log_cfg.metrics_file, resume_step=step)
        self.loggers = RunLoggers(log_cfg, self.output_dir, self.config.to_dict())
        if log_cfg.sample_max_tokens > 0 and log_cfg.sample_prompts:
            self.samples = SampleLog(self.output_dir / SAMPLES_NAME, resume_step=step)

    def log(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        self.log(f"warning: {message}")

    def start_bar(self, total_steps: int | None, step: int) -> None:
        show = self.config.logging.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if show and self.is_main:
            self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, desc="training")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def train(self, record: dict[str, Any], total_steps: int | None, remaining_s: float) -> None:
        """A log step's record (step, train_loss, lr, tokens_per_s, train_seconds, ...)."""
        if not self.is_main:
            return
        self.metrics.write(record)
        loss, lr, rate = record["train_loss"], record["lr"], record["tokens_per_s"]
        self.loggers.scalars(record["step"], {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": rate,
                                              "train/grad_norm": record["grad_norm"]})
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s")
        else:
            total = f"/{total_steps}" if total_steps is not None else ""
            self.log(f"step {record['step']}{total} | loss {loss:.4f} | lr {lr:.2e} | {rate:,.0f} tok/s | "
                     f"elapsed {format_seconds(record['train_seconds'])} | eta {format_seconds(remaining_s)}")

    def evaluation(self, step: int, loss: float, ppl: float, bpb: float, times: dict[str, float]) -> None:
        """One evaluation; `times` (train_seconds, eval_seconds so far) go into its record."""
        if not self.is_main:
            return
        self.metrics.write({"step": step, "val_loss": loss, "val_ppl": ppl, "val_bpb": bpb, **times})
        self.log(f"step {step}: val_loss {loss:.4f} | val_ppl {ppl:.2f} | val_bpb {bpb:.4f}")
        self.loggers.scalars(step, {"val/loss": loss, "val/ppl": ppl, "val/bpb": bpb})

    def stories(self, step: int, model, tokenizer) -> None:
        """A few stories from the current weights (fixed prompts and seed): log, samples.jsonl, TensorBoard."""
        if self.samples is None:
            return
        log_cfg = self.config.logging
        stories = sample_stories(model, tokenizer, list(log_cfg.sample_prompts), log_cfg.sample_max_tokens,
                                 log_cfg.sample_seed)
        self.samples.write(step, stories)
        for index, story in enumerate(stories):
            self.log(f"sample {index + 1}: {story['text']!r}")
            self.loggers.text(step, f"samples/{index + 1}", story["text"])

    def flush(self) -> None:
        if self.loggers is not None:
            self.loggers.flush()

    def close(self) -> None:
        """The loss-curve PNG (logging.plot), then TensorBoard / W&B closed."""
        if self.is_main and self.config.logging.plot:
            png = plot_loss_curve(self.metrics.path, self.output_dir / PLOT_NAME)
            if png:
                self.log(f"loss curve: {png}")
        if self.loggers is not None:
            self.loggers.close()


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
