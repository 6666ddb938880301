"""The training loop: `train(config, resume)` runs a whole run and returns how it ended.

Read top to bottom: `Trainer.__init__` sets everything up (device, precision, tokenizer, model,
data, optimizer, schedule, resume state, compile / DDP), `fit` loops over optimizer steps,
logging, evaluating and checkpointing; the methods below it do one job each.

Exact resume: checkpoint_latest.pth holds the model, optimizer, GradScaler, step, the data
position (src.data.batches.TrainBatches.state_dict) and every rank's RNG states, and
metrics.jsonl is cut back to the checkpoint's step, so a run killed at any point (even
`kill -9`) and resumed with `--resume auto` logs the same losses as one that never stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from src.config_utils import ConfigError
from src.atomic_files import remove_stale_temps
from src.data.tokenizer import EOS_TOKEN, load_tokenizer, tokenizer_sha256
from src.model.checkpoint import CheckpointError, checkpoint_tokenizer, load_checkpoint, save_checkpoint
from src.model.config import ModelConfig
from src.model.transformer_block import WikiMiniModel
from src.training.checkpointing import LATEST_NAME, BestCheckpoints, EarlyStopping
from src.training.compile import compile_wanted, try_compile
from src.training.config import TrainConfig
from src.training.data import load_run_data
from src.training.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from src.training.evaluation import evaluate
from src.training.metrics import MetricsLog, plot_loss_curve
from src.training.observers import RunLoggers, SampleLog, sample_stories
from src.training.optimizer import build_optimizer
from src.training.precision import choose_precision, enable_tf32
from src.training.rng import capture_rng_state, restore_rng_state
from src.training.schedule import BUDGET_WARMUP_SHARE, LRSchedule
from src.training.signals import GracefulStop
from src.training.step import train_step

PLOT_NAME = "loss_curve.png"
TRAINING_STATE_FORMAT = 2  # 2: one entry per resumable component (Trainer.resumable)
SAMPLES_NAME = "samples.jsonl"

clock = time.perf_counter  # the trainer's time source (a budget is in seconds of it); tests pass their own


@dataclass
class TrainResult:
    step: int
    total_steps: int | None  # None: a run measured by its wall-clock budget
    stop_reason: str  # "completed", "early_stopping", "interrupted" or "already_complete"
    exit_code: int
    output_dir: Path
    best_val_ppl: float | None
    last_train_loss: float | None


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Run (or resume: "auto" or a checkpoint path) a training run; torchrun-aware."""
    info, device = setup_distributed(config.training.device)
    try:
        return Trainer(config, info, device, resume).fit()
    finally:
        teardown_distributed()


class RankState:
    """What differs between ranks: RNG streams and the loss summed since the last log record."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_state(), "loss_sum": float(self.trainer.loss_sum),
                "loss_steps": self.trainer.loss_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng_state(state["rng"])
        self.trainer.loss_sum.fill_(state["loss_sum"])
        self.trainer.loss_steps = int(state["loss_steps"])


@dataclass
class InitCheckpoint:
    tokenizer: Any
    weights: dict[str, torch.Tensor]


def load_init_checkpoint(config: TrainConfig) -> InitCheckpoint:
    """`training.init_from`: the weights, model shape and tokenizer a fine-tune starts from.

    The rule for the tokenizer: the checkpoint's own is always used, because its weights mean
    nothing with another. `data.tokenizer` must therefore be that same tokenizer (same sha256)
    or the word `checkpoint`; anything else is an error rather than a silent swap. The model
    section is replaced by the checkpoint's (a fine-tune cannot change the architecture).
    """
    path = Path(config.training.init_from)
    checkpoint = load_checkpoint(path)
    start_token = checkpoint.get("story_start_token", EOS_TOKEN)
    if start_token != EOS_TOKEN:  # e.g. an imported llama2.c model: BOS before each story
        raise ConfigError(f"{path} starts its stories after {start_token!r}; the trainer lays stories out as "
                          f"story + {EOS_TOKEN}, so it can fine-tune only checkpoints that do the same")
    tokenizer = checkpoint_tokenizer(checkpoint)
    if config.data.tokenizer != "checkpoint":
        named = load_tokenizer(config.data.tokenizer)
        if tokenizer_sha256(named) != tokenizer_sha256(tokenizer):
            raise ConfigError(
                f"data.tokenizer {config.data.tokenizer} is not the tokenizer of {path}; a fine-tune keeps the "
                "checkpoint's own tokenizer: set data.tokenizer to checkpoint (or to that tokenizer's directory)"
            )
    model = dict(checkpoint["config"]["model"])
    model["dropout"] = config.model.dropout  # the one setting that belongs to the new run
    config.model = ModelConfig.from_dict(model)
    return InitCheckpoint(tokenizer, checkpoint["model_state_dict"])


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from. A fresh run never silently overwrites an earlier one."""
    latest = output_dir / LATEST_NAME
    if resume is None:
        if latest.exists():
            raise ConfigError(
                f"{latest} already exists: pass --resume auto to continue that run, or choose another "
                "training.output_dir (or delete it) to start a new one"
            )
        return None
    if resume == "auto":
        return latest if latest.exists() else None
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path


class Trainer:
    def __init__(self, config: TrainConfig, info: DistInfo, device: torch.device, resume: str | None) -> None:
        self.config, self.info, self.device = config, info, device
        self.output_dir = Path(config.training.output_dir)
        self.bar: tqdm | None = None
        resume_path = resolve_resume(resume, self.output_dir)
        if resume == "auto" and resume_path is None:
            self.log(f"--resume auto: no {LATEST_NAME} in {self.output_dir}; starting a new run")
        self.precision, warning = choose_precision(config.training.precision, device)
        if warning:
            self.warn(warning)
        enable_tf32()
        self.scaler = self.precision.grad_scaler()
        self._build_model(fine_tune=resume_path is None)
        self._load_data()
        self._build_optimizer()
        self._reset_run_state()
        if resume_path is not None:
            self.load_training_state(resume_path)
        self._wrap_model()
        self._open_logs()
        self.log_setup(resume_path)

    def _build_model(self, fine_tune: bool) -> None:
        """Tokenizer and model; a fine-tune takes both from its checkpoint (a resume only its shape
        and tokenizer: the weights come from the resumed checkpoint)."""
        config, cfg = self.config, self.config.training
        start = load_init_checkpoint(config) if cfg.init_from else None
        self.tokenizer = start.tokenizer if start is not None else load_tokenizer(config.data.tokenizer)
        vocab = self.tokenizer.get_vocab_size()
        if vocab > config.model.vocab_size:
            raise ConfigError(
                f"tokenizer {config.data.tokenizer} has {vocab} tokens but model.vocab_size is "
                f"{config.model.vocab_size}; set model.vocab_size to at least {vocab}"
            )
        if vocab < config.model.vocab_size:
            self.warn(f"tokenizer has {vocab} tokens, model.vocab_size is {config.model.vocab_size} (unused rows)")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = WikiMiniModel(config.model)
        if start is not None and fine_tune:
            self.model.load_state_dict(start.weights)  # copied into fp32 parameters whatever their dtype
            self.log(f"initialized from {cfg.init_from} (fresh optimizer and schedule)")
        self.model.to(self.device)
        self.seq_len = config.model.max_seq_len

    def _load_data(self) -> None:
        """Training batches and validation tokens, and the run's length in steps or minutes."""
        cfg, info = self.config.training, self.info
        self.eval_batch_size = cfg.eval_batch_size or cfg.batch_size
        # eval_batches per process: N processes with batch B score what one process with batch N*B does
        max_val_windows = cfg.eval_batches * self.eval_batch_size * info.world_size if cfg.eval_batches else None
        self.data = load_run_data(
            self.config.data, self.tokenizer, self.seq_len, cfg.batch_size, cfg.seed, info, max_val_windows
        )
        self.batches = self.data.train
        self.tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum_steps * info.world_size
        self.budget_seconds = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        if cfg.max_steps is not None or self.budget_seconds is not None:
            self.total_steps = cfg.max_steps  # None: the budget alone ends the run
            return
        self.total_steps = int(cfg.epochs * self.batches.batches_per_epoch // cfg.grad_accum_steps)
        if self.total_steps < 1:
            raise ConfigError(
                f"{cfg.epochs} epoch(s) of {self.batches.batches_per_epoch} batches is less than one optimizer "
                f"step of {cfg.grad_accum_steps} micro-batches; add data, lower training.grad_accum_steps or "
                "set training.max_steps"
            )

    def _build_optimizer(self) -> None:
        config, sched = self.config, self.config.scheduler
        self.optimizer = build_optimizer(self.model, config.optimizer, self.device)
        self.schedule = LRSchedule(config.optimizer.lr, sched.min_lr, sched.warmup_steps,
                                   None if self.budget_seconds is not None else self.total_steps,
                                   sched.shape, sched.decay_fraction)

    def _reset_run_state(self) -> None:
        """What a run counts as it goes (restored on resume: see `resumable`)."""
        cfg, info = self.config.training, self.info
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0  # time spent in optimizer steps: what a budget counts
        self.compile_seconds = 0.0  # the first compiled step, left out of the budget
        self.last_train_loss: float | None = None
        self.loss_sum = torch.zeros((), device=self.device)  # train loss since the last log record
        self.loss_steps = 0
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
        self.best = BestCheckpoints(self.output_dir, cfg.keep_best)
        if info.is_main:
            for stale in remove_stale_temps(self.output_dir):
                self.log(f"removed {stale.name}, a partial save left by a process that was killed")
        self.rank_state = RankState(self)
        torch.manual_seed(cfg.seed + info.rank)  # dropout masks differ between ranks

    def _wrap_model(self) -> None:
        """Compile, then DDP (the compiled DDP module is what torch documents for the pair)."""
        device = self.device
        self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None) \
            if self.info.enabled else None
        self.eager_model = self.ddp or self.model
        self.train_model = self.eager_model
        self.compile_pending = False
        if compile_wanted(self.config.training.compile, device):
            compiled, warning = try_compile(self.eager_model)
            if warning:
                self.warn(warning)
            if compiled is not None:
                self.train_model, self.compile_pending = compiled, True

    def _open_logs(self) -> None:
        """metrics.jsonl, TensorBoard / W&B and samples.jsonl, on the main process only."""
        main, log_cfg = self.info.is_main, self.config.logging
        self.metrics = MetricsLog(self.output_dir / log_cfg.metrics_file, resume_step=self.step) if main else None
        self.loggers = RunLoggers(log_cfg, self.output_dir, self.config.to_dict()) if main else None
        self.samples = SampleLog(self.output_dir / SAMPLES_NAME, resume_step=self.step) \
            if main and log_cfg.sample_max_tokens > 0 and log_cfg.sample_prompts else None

    # ------------------------------------------------------------------------------------------
    # The loop

    def fit(self) -> TrainResult:
        cfg, log_cfg = self.config.training, self.config.logging
        if self.finished():
            self.log(f"run already complete at step {self.step} ({self.describe_length()})")
            return self.result("already_complete", 0)
        stop_reason, exit_code = "completed", 0
        saved_at = -1
        self.bar = self.make_progress_bar()
        # tokens/s is measured over each log interval, leaving out evaluation and checkpoint time
        self.interval_start, self.interval_paused, self.interval_step = clock(), 0.0, self.step
        with GracefulStop() as stop:
            while not self.finished():
                lr = self.schedule(self.step, self.progress())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_ratio", 1.0)
                started, compiling = clock(), self.compile_pending
                loss, grad_norm = self.run_step()
                if compiling:
                    self.compile_seconds += clock() - started
                    self.log(f"first step (compilation) took {self.compile_seconds:.1f} s"
                             + (", not counted in the budget" if self.budget_seconds else ""))
                else:
                    self.train_seconds += clock() - started
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                self.loss_sum += loss
                self.loss_steps += 1
                if self.bar is not None:
                    self.bar.update(1)
                last = self.finished()
                if self.step % log_cfg.log_interval == 0 or last:
                    self.log_train(lr, grad_norm)
                if self.step % cfg.eval_interval == 0 or last:
                    if self.run_evaluation():
                        stop_reason = "early_stopping"
                if self.step % cfg.save_interval == 0:
                    self.save_latest()
                    saved_at = self.step
                if any_rank(stop.requested is not None, self.info, self.device):
                    stop_reason, exit_code = "interrupted", stop.exit_code or 130
                if stop_reason != "completed":
                    break
            if self.bar is not None:
                self.bar.close()
            if saved_at != self.step:
                self.save_latest()
        if stop_reason == "interrupted":
            self.log(f"interrupted at step {self.step}; saved {self.output_dir / LATEST_NAME} "
                     "(continue with --resume auto)")
        elif stop_reason == "early_stopping":
            self.log(f"early stopping at step {self.step}: no val_loss improvement in "
                     f"{self.early_stopping.evals_without_improvement} evaluations")
        if self.info.is_main and log_cfg.plot:
            png = plot_loss_curve(self.metrics.path, self.output_dir / PLOT_NAME)
            if png:
                self.log(f"loss curve: {png}")
        if self.loggers is not None:
            self.loggers.close()
        return self.result(stop_reason, exit_code)

    def finished(self) -> bool:
        """The step count or the wall-clock budget (the same on every rank) is used up."""
        if self.total_steps is not None and self.step >= self.total_steps:
            return True
        if self.budget_seconds is None:
            return False
        # ranks' clocks differ a little: all stop at the same step
        return any_rank(self.train_seconds >= self.budget_seconds, self.info, self.device)

    def progress(self) -> float | None:
        """Share of the wall-clock budget spent (None for a run measured in steps)."""
        if self.budget_seconds is None:
            return None
        return min(1.0, self.train_seconds / self.budget_seconds)

    def describe_length(self) -> str:
        parts = []
        if self.total_steps is not None:
            parts.append(f"{self.total_steps:,} steps")
        if self.budget_seconds is not None:
            parts.append(f"{self.budget_seconds / 60:g} minutes of training")
        return " or ".join(parts)

    def run_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step; the first compiled step falls back to eager if compilation fails."""
        if not self.compile_pending:
            return self.step_once()
        data_state, rng_state = self.batches.state_dict(), capture_rng_state()
        try:
            return self.step_once()
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.warn(f"torch.compile failed ({type(exc).__name__}: {first_line}); falling back to eager mode")
            self.train_model = self.eager_model
            self.batches.load_state_dict(data_state)
            restore_rng_state(rng_state)
            return self.step_once()
        finally:
            self.compile_pending = False

    def step_once(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config.training
        return train_step(
            self.train_model,
            self.optimizer,
            self.batches.next_batch,
            cfg.grad_accum_steps,
            self.precision,
            self.device,
            scaler=self.scaler,
            max_grad_norm=cfg.max_grad_norm,
            no_sync=self.ddp.no_sync if self.ddp is not None else None,
        )

    # ------------------------------------------------------------------------------------------
    # Logging and evaluation

    def log_train(self, lr: float, grad_norm: torch.Tensor | None) -> None:
        sums = torch.stack([self.loss_sum, torch.tensor(float(self.loss_steps), device=self.device)]).double()
        all_reduce_sum(sums, self.info)  # every rank's losses: the global batch's mean
        train_loss = float(sums[0] / sums[1])
        self.loss_sum.zero_()
        self.loss_steps = 0
        now = clock()
        seconds = max(now - self.interval_start - self.interval_paused, 1e-9)
        tokens_per_s = (self.step - self.interval_step) * self.tokens_per_step / seconds
        self.interval_start, self.interval_paused, self.interval_step = now, 0.0, self.step
        self.last_train_loss = train_loss
        if not self.info.is_main:
            return
        epoch = self.batches.epoch + self.batches.position / self.batches.n_windows
        record = {
            "step": self.step,
            "train_loss": train_loss,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "tokens": self.tokens_seen,
            "train_seconds": round(self.train_seconds, 3),
            "epoch": round(epoch, 4),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
        }
        self.metrics.write(record)
        self.loggers.scalars(self.step, {"train/loss": train_loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s,
                                         "train/grad_norm": record["grad_norm"]})
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {train_loss:.4f} lr {lr:.2e} {tokens_per_s:,.0f} tok/s")
        else:
            total = f"/{self.total_steps}" if self.total_steps is not None else ""
            self.log(f"step {self.step}{total} | loss {train_loss:.4f} | lr {lr:.2e} | "
                     f"{tokens_per_s:,.0f} tok/s | elapsed {format_seconds(self.train_seconds)} | "
                     f"eta {format_seconds(self.remaining_seconds(tokens_per_s))}")

    def remaining_seconds(self, tokens_per_s: float) -> float:
        """Training time left: the budget's rest, or the steps' rest at the current pace."""
        left = []
        if self.total_steps is not None:
            left.append((self.total_steps - self.step) * self.tokens_per_step / max(tokens_per_s, 1e-9))
        if self.budget_seconds is not None:
            left.append(self.budget_seconds - self.train_seconds)
        return max(0.0, min(left))

    def run_evaluation(self) -> bool:
        """Evaluate, save a best checkpoint on improvement; True when early stopping triggers."""
        if self.data.val_tokens is None:
            return False
        started = clock()
        result = evaluate(self.model, self.data.val_tokens, self.data.val_bytes, self.seq_len,
                          self.eval_batch_size, self.precision, self.device, self.info)
        scores = {"val_loss": result.loss, "val_ppl": result.ppl, "val_bpb": result.bpb}
        self.early_stopping.update(scores)
        if self.info.is_main:
            self.metrics.write({"step": self.step, **scores})
            self.log(f"step {self.step}: val_loss {result.loss:.4f} | val_ppl {result.ppl:.2f} | "
                     f"val_bpb {result.bpb:.4f}")
            self.loggers.scalars(self.step, {"val/loss": result.loss, "val/ppl": result.ppl, "val/bpb": result.bpb})
            if math.isfinite(result.ppl) and self.best.qualifies(result.ppl):
                path = self.best.add(result.ppl, self.save_best)
                self.log(f"saved {path}")
            self.write_samples()
            self.loggers.flush()
        self.interval_paused += clock() - started
        return self.early_stopping.should_stop

    def write_samples(self) -> None:
        """A few stories from the current weights (fixed prompts and seed): log, samples.jsonl, TensorBoard."""
        if self.samples is None:
            return
        log_cfg = self.config.logging
        stories = sample_stories(self.model, self.tokenizer, list(log_cfg.sample_prompts), log_cfg.sample_max_tokens,
                                 log_cfg.sample_seed)
        self.samples.write(self.step, stories)
        for index, story in enumerate(stories):
            self.log(f"sample {index + 1}: {story['text']!r}")
            self.loggers.text(self.step, f"samples/{index + 1}", story["text"])

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def checkpoint_metrics(self) -> dict[str, Any]:
        return {"step": self.step, "train_loss": self.last_train_loss, **self.early_stopping.last_eval}

    def save_best(self, path: Path) -> None:
        save_checkpoint(path, self.model, self.tokenizer, config=self.config.to_dict(),
                        metrics=self.checkpoint_metrics())

    def resumable(self) -> dict[str, Any]:
        """Every component that a resume must restore, each with state_dict()/load_state_dict().
        The model's weights travel separately, as the checkpoint's `model_state_dict`."""
        return {
            "progress": self,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "data": self.batches,
            "early_stopping": self.early_stopping,
            "best_checkpoints": self.best,
        }

    def state_dict(self) -> dict[str, Any]:
        """The run's own counters (the "progress" component)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "compile_seconds": self.compile_seconds, "last_train_loss": self.last_train_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_seconds, self.compile_seconds = float(state["train_seconds"]), float(state["compile_seconds"])
        self.last_train_loss = state["last_train_loss"]

    def save_latest(self) -> None:
        """Every rank contributes its own state (RNG, loss accumulator); rank 0 writes the file."""
        started = clock()
        per_rank = gather_objects(self.rank_state.state_dict(), self.info)
        if self.info.is_main:
            state = {name: component.state_dict() for name, component in self.resumable().items()}
            state.update(format=TRAINING_STATE_FORMAT, ranks=per_rank)
            save_checkpoint(self.output_dir / LATEST_NAME, self.model, self.tokenizer,
                            config=self.config.to_dict(), metrics=self.checkpoint_metrics(), training_state=state)
        self.interval_paused += clock() - started

    def load_training_state(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        state = checkpoint.get("training_state")
        if not state:
            raise CheckpointError(f"{path} holds no training state (best checkpoints carry weights only); "
                                  f"resume from {LATEST_NAME}")
        if state.get("format") != TRAINING_STATE_FORMAT:
            raise CheckpointError(f"{path} holds training state in an older layout; start a new run from its "
                                  "weights with --init-from")
        saved = checkpoint["config"]
        ours = self.config.to_dict()
        changed = sorted(k for k in set(saved["model"]) | set(ours["model"]) if saved["model"].get(k) != ours["model"].get(k))
        if changed:
            raise ConfigError(f"cannot resume {path}: model config differs in {', '.join('model.' + k for k in changed)}")
        if checkpoint.get("tokenizer_sha256") != tokenizer_sha256(self.tokenizer):
            raise ConfigError(f"cannot resume {path}: it was trained with a different tokenizer than {self.config.data.tokenizer}")
        others = [f"{s}.{k}" for s in ours if s != "model" for k in ours[s] if saved.get(s, {}).get(k, ours[s][k]) != ours[s][k]]
        if others:
            self.warn(f"resuming with changed settings: {', '.join(others)}")
        self.model.load_state_dict(checkpoint["model_state_dict"])
        for name, component in self.resumable().items():
            try:
                component.load_state_dict(state[name])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"cannot resume {path}: the saved {name} state does not fit ({exc})") from None
        ranks = state["ranks"]
        if len(ranks) != self.info.world_size:
            self.warn(f"checkpoint was written by {len(ranks)} process(es), resuming with "
                      f"{self.info.world_size}: random streams will differ from an uninterrupted run")
        self.rank_state.load_state_dict(ranks[self.info.rank % len(ranks)])
        self.log(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------------------------------
    # Output

    def result(self, stop_reason: str, exit_code: int) -> TrainResult:
        best = min((ppl for ppl, _ in self.best.entries), default=None)
        return TrainResult(self.step, self.total_steps, stop_reason, exit_code, self.output_dir, best,
                           self.last_train_loss)

    def make_progress_bar(self) -> tqdm | None:
        show = self.config.logging.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if not (show and self.info.is_main):
            return None
        return tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True, desc="training")

    def log_setup(self, resume_path: Path | None) -> None:
        cfg = self.config.training
        compile_state = "on" if self.compile_pending else "off"
        self.log(
            f"device {self.device} | precision {self.precision.name} | compile {compile_state} | "
            f"processes {self.info.world_size}"
        )
        self.log(
            f"model {self.model.num_parameters():,} parameters | context {self.seq_len} | "
            f"vocab {self.config.model.vocab_size}"
        )
        self.log(
            f"train {self.data.train_description}: {self.data.train_tokens:,} tokens, "
            f"{self.batches.batches_per_epoch:,} batches/epoch | val {self.data.val_description or 'none'}"
        )
        self.log(
            f"batch {cfg.batch_size} x accum {cfg.grad_accum_steps} x {self.info.world_size} process(es) x "
            f"{self.seq_len} = {self.tokens_per_step:,} tokens/step | {self.describe_length()} | "
            f"output {self.output_dir}"
        )
        if self.budget_seconds is not None and self.schedule.warmup_steps:
            self.log(f"warmup: {self.schedule.warmup_steps:,} steps or the first {BUDGET_WARMUP_SHARE:.0%} of the "
                     f"budget, whichever ends first; then {self.config.scheduler.shape} to min_lr "
                     f"{self.schedule.min_lr:g} at the budget's end")

    def log(self, message: str) -> None:
        if not self.info.is_main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        self.log(f"warning: {message}")


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
