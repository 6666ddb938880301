"""The training loop: `train(config, resume)` runs a whole run and returns how it ended.

Read top to bottom: `Trainer.__init__` sets everything up (device, precision, tokenizer, model,
data, optimizer, schedule, resume state, compile / DDP), `fit` loops over optimizer steps,
logging, evaluating and checkpointing; the methods below it do one job each. What the run
reports lives in `reporting.py`, how it is saved and resumed in `checkpointing.py`.

Exact resume: checkpoint_latest.pth holds the model and the state of every component (the
counters below, optimizer, GradScaler, data position, early stopping, best files) and every
rank's RNG states, and metrics.jsonl is cut back to the checkpoint's step, so a run killed at
any point (even `kill -9`) and resumed with `--resume auto` logs the same losses as one that
never stopped.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from src.atomic_files import remove_stale_temps
from src.config_utils import ConfigError
from src.data.tokenizer import EOS_TOKEN, load_tokenizer, tokenizer_sha256
from src.model.checkpoint import checkpoint_tokenizer, load_checkpoint
from src.model.config import ModelConfig
from src.model.transformer_block import WikiMiniModel
from src.training.averaging import WeightAverage
from src.training.checkpointing import LATEST_NAME, CheckpointManager, EarlyStopping, resolve_resume
from src.training.compile import compile_wanted, try_compile
from src.training.config import TrainConfig
from src.training.data import load_run_data
from src.training.distributed import DistInfo, all_reduce_sum, any_rank, setup_distributed, teardown_distributed
from src.training.evaluation import evaluate
from src.training.optimizer import build_optimizer, set_learning_rate
from src.training.precision import choose_precision, enable_tf32
from src.training.reporting import RunReport
from src.training.rng import capture_rng_state, restore_rng_state
from src.training.schedule import BUDGET_WARMUP_SHARE, LRSchedule
from src.training.signals import GracefulStop
from src.training.step import train_step

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


@dataclass
class RunProgress:
    """A run's counters: the "progress" component of its training state."""

    step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time spent in optimizer steps
    compile_seconds: float = 0.0  # the first compiled step, left out of the budget
    eval_seconds: float = 0.0  # evaluations (scoring, sample stories, best saves)
    last_train_loss: float | None = None

    @property
    def budget_seconds_spent(self) -> float:
        """What a wall-clock budget counts: training steps and evaluations, which are not free."""
        return self.train_seconds + self.eval_seconds

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_seconds, self.compile_seconds = float(state["train_seconds"]), float(state["compile_seconds"])
        self.eval_seconds = float(state.get("eval_seconds", 0.0))  # absent from runs saved before it was counted
        self.last_train_loss = state["last_train_loss"]


class RankState:
    """What differs between ranks: RNG streams and the train loss summed since the last log record."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.loss_steps = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.loss_steps += 1

    def take_mean(self, info: DistInfo) -> float:
        """The mean loss over every rank's steps since the last call (the global batch's mean)."""
        sums = torch.stack([self.loss_sum, torch.tensor(float(self.loss_steps), device=self.loss_sum.device)])
        sums = sums.double()
        all_reduce_sum(sums, info)
        self.loss_sum.zero_()
        self.loss_steps = 0
        return float(sums[0] / sums[1])

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_state(), "loss_sum": float(self.loss_sum), "loss_steps": self.loss_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng_state(state["rng"])
        self.loss_sum.fill_(state["loss_sum"])
        self.loss_steps = int(state["loss_steps"])


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
    for name in ("dropout", "attention_dropout"):  # the settings that belong to the new run
        model[name] = getattr(config.model, name)
    config.model = ModelConfig.from_dict(model)
    return InitCheckpoint(tokenizer, checkpoint["model_state_dict"])


def build_model(config: TrainConfig, device: torch.device, fine_tune: bool,
                report: RunReport) -> tuple[Any, WikiMiniModel]:
    """The run's tokenizer and model; a fine-tune takes both from its checkpoint (a resume only
    its shape and tokenizer: the weights come from the resumed checkpoint)."""
    cfg = config.training
    start = load_init_checkpoint(config) if cfg.init_from else None
    tokenizer = start.tokenizer if start is not None else load_tokenizer(config.data.tokenizer)
    vocab = tokenizer.get_vocab_size()
    if vocab > config.model.vocab_size:
        raise ConfigError(
            f"tokenizer {config.data.tokenizer} has {vocab} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size to at least {vocab}"
        )
    if vocab < config.model.vocab_size:
        report.warn(f"tokenizer has {vocab} tokens, model.vocab_size is {config.model.vocab_size} (unused rows)")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = WikiMiniModel(config.model)
    if start is not None and fine_tune:
        model.load_state_dict(start.weights)  # copied into fp32 parameters whatever their dtype
        report.log(f"initialized from {cfg.init_from} (fresh optimizer and schedule)")
    return tokenizer, model.to(device)


@dataclass
class RunLength:
    """How long a run lasts: a number of steps, a wall-clock budget (training and evaluation), or both."""

    total_steps: int | None
    budget_seconds: float | None

    def reached(self, progress: RunProgress) -> bool:
        """Used up on this rank (Trainer.finished makes every rank agree)."""
        if self.total_steps is not None and progress.step >= self.total_steps:
            return True
        return self.budget_seconds is not None and progress.budget_seconds_spent >= self.budget_seconds

    def budget_share(self, progress: RunProgress) -> float | None:
        """Share of the budget spent (None for a run measured in steps)."""
        if self.budget_seconds is None:
            return None
        return min(1.0, progress.budget_seconds_spent / self.budget_seconds)

    def remaining_seconds(self, progress: RunProgress, steps_per_s: float) -> float:
        """Time left: the budget's rest, or the steps' rest at the current pace."""
        left = []
        if self.total_steps is not None:
            left.append((self.total_steps - progress.step) / max(steps_per_s, 1e-9))
        if self.budget_seconds is not None:
            left.append(self.budget_seconds - progress.budget_seconds_spent)
        return max(0.0, min(left))

    def describe(self) -> str:
        parts = []
        if self.total_steps is not None:
            parts.append(f"{self.total_steps:,} steps")
        if self.budget_seconds is not None:
            parts.append(f"{self.budget_seconds / 60:g} minutes of training and validation")
        return " or ".join(parts)


class Trainer:
    def __init__(self, config: TrainConfig, info: DistInfo, device: torch.device, resume: str | None) -> None:
        self.config, self.info, self.device = config, info, device
        self.output_dir = Path(config.training.output_dir)
        self.report = RunReport(config, self.output_dir, info.is_main)
        self.log, self.warn = self.report.log, self.report.warn
        resume_path = resolve_resume(resume, self.output_dir)
        if resume == "auto" and resume_path is None:
            self.log(f"--resume auto: no {LATEST_NAME} in {self.output_dir}; starting a new run")
        self.precision, warning = choose_precision(config.training.precision, device)
        if warning:
            self.warn(warning)
        enable_tf32()
        self.scaler = self.precision.grad_scaler()
        self.tokenizer, self.model = build_model(config, device, fine_tune=resume_path is None, report=self.report)
        self.seq_len = config.model.max_seq_len
        self._load_data()
        self._build_optimizer()
        self._build_run_state()
        if resume_path is not None:
            self.checkpoints.restore(resume_path, self.warn)
            self.log(f"resumed from {resume_path} at step {self.progress.step}")
        self._wrap_model()
        self.report.open(self.progress.step)
        self.log_setup()

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
        budget_seconds = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        if cfg.max_steps is not None or budget_seconds is not None:
            self.length = RunLength(cfg.max_steps, budget_seconds)  # no max_steps: the budget alone ends it
            return
        self.length = RunLength(int(cfg.epochs * self.batches.batches_per_epoch // cfg.grad_accum_steps), None)
        if self.length.total_steps < 1:
            raise ConfigError(
                f"{cfg.epochs} epoch(s) of {self.batches.batches_per_epoch} batches is less than one optimizer "
                f"step of {cfg.grad_accum_steps} micro-batches; add data, lower training.grad_accum_steps or "
                "set training.max_steps"
            )

    def _build_optimizer(self) -> None:
        config, sched = self.config, self.config.scheduler
        self.optimizer = build_optimizer(self.model, config.optimizer, self.device)
        self.schedule = LRSchedule(config.optimizer.lr, sched.min_lr, sched.warmup_steps,
                                   None if self.length.budget_seconds is not None else self.length.total_steps,
                                   sched.shape, sched.decay_fraction)

    def _build_run_state(self) -> None:
        """The components a resume restores, and the manager that saves them."""
        cfg, info = self.config.training, self.info
        self.progress = RunProgress()
        self.rank_state = RankState(self.device)
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        # what validation scores, samples are written with and best files hold
        self.scored_model = self.average.model if self.average is not None else self.model
        states = {"progress": self.progress, "optimizer": self.optimizer, "scaler": self.scaler,
                  "data": self.batches, "early_stopping": self.early_stopping}
        if self.average is not None:
            states["weight_average"] = self.average
        self.checkpoints = CheckpointManager(self.output_dir, self.model, self.tokenizer, self.config, info, states,
                                             rank_state=self.rank_state, keep_best=cfg.keep_best,
                                             best_model=self.scored_model)
        if info.is_main:
            for stale in remove_stale_temps(self.output_dir):
                self.log(f"removed {stale.name}, a partial save left by a process that was killed")
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

    # ------------------------------------------------------------------------------------------
    # The loop

    def fit(self) -> TrainResult:
        cfg, progress = self.config.training, self.progress
        if self.finished():
            self.log(f"run already complete at step {progress.step} ({self.length.describe()})")
            return self.result("already_complete", 0)
        stop_reason, exit_code = "completed", 0
        saved_at = -1
        self.report.start_bar(self.length.total_steps, progress.step)
        # tokens/s is measured over each log interval, leaving out evaluation and checkpoint time
        self.interval_start, self.interval_paused, self.interval_step = clock(), 0.0, progress.step
        with GracefulStop() as stop:
            while not self.finished():
                lr = self.schedule(progress.step, self.length.budget_share(progress))
                set_learning_rate(self.optimizer, lr)
                loss, grad_norm = self.timed_step()
                progress.step += 1
                progress.tokens_seen += self.tokens_per_step
                self.rank_state.add(loss)
                self.report.advance()
                last = self.finished()
                if progress.step % self.config.logging.log_interval == 0 or last:
                    self.log_train(lr, grad_norm)
                if (progress.step % cfg.eval_interval == 0 or last) and self.run_evaluation():
                    stop_reason = "early_stopping"
                if progress.step % cfg.save_interval == 0:
                    self.save_latest()
                    saved_at = progress.step
                if any_rank(stop.requested is not None, self.info, self.device):
                    stop_reason, exit_code = "interrupted", stop.exit_code or 130
                if stop_reason != "completed":
                    break
            self.report.close_bar()
            if saved_at != progress.step:
                self.save_latest()
        if stop_reason == "interrupted":
            self.log(f"interrupted at step {progress.step}; saved {self.output_dir / LATEST_NAME} "
                     "(continue with --resume auto)")
        elif stop_reason == "early_stopping":
            self.log(f"early stopping at step {progress.step}: no val_loss improvement in "
                     f"{self.early_stopping.evals_without_improvement} evaluations")
        self.report.close()
        return self.result(stop_reason, exit_code)

    def finished(self) -> bool:
        """The run's length is used up; a budget's on every rank at the same step (their clocks differ)."""
        if self.length.budget_seconds is None:
            return self.length.reached(self.progress)
        return any_rank(self.length.reached(self.progress), self.info, self.device)

    def timed_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step, its time counted in train_seconds (the first compiled one's apart)."""
        started, compiling = clock(), self.compile_pending
        loss, grad_norm = self.run_step()
        if self.average is not None:
            self.average.update(self.model)
        if compiling:
            self.progress.compile_seconds += clock() - started
            self.log(f"first step (compilation) took {self.progress.compile_seconds:.1f} s"
                     + (", not counted in the budget" if self.length.budget_seconds else ""))
        else:
            self.progress.train_seconds += clock() - started
        return loss, grad_norm

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
        return train_step(self.train_model, self.optimizer, self.batches.next_batch, cfg.grad_accum_steps,
                          self.precision, self.device, scaler=self.scaler, max_grad_norm=cfg.max_grad_norm,
                          no_sync=self.ddp.no_sync if self.ddp is not None else None)

    # ------------------------------------------------------------------------------------------
    # Logging, evaluation, checkpoints

    def log_train(self, lr: float, grad_norm: torch.Tensor | None) -> None:
        progress = self.progress
        progress.last_train_loss = self.rank_state.take_mean(self.info)
        now = clock()
        seconds = max(now - self.interval_start - self.interval_paused, 1e-9)
        tokens_per_s = (progress.step - self.interval_step) * self.tokens_per_step / seconds
        self.interval_start, self.interval_paused, self.interval_step = now, 0.0, progress.step
        epoch = self.batches.epoch + self.batches.position / self.batches.n_windows
        record = {"step": progress.step, "train_loss": progress.last_train_loss, "lr": lr,
                  "tokens_per_s": tokens_per_s, "tokens": progress.tokens_seen,
                  "train_seconds": round(progress.train_seconds, 3), "epoch": round(epoch, 4),
                  "grad_norm": float(grad_norm) if grad_norm is not None else None}
        remaining = self.length.remaining_seconds(progress, tokens_per_s / self.tokens_per_step)
        self.report.train(record, self.length.total_steps, remaining)

    def run_evaluation(self) -> bool:
        """Evaluate, save a best checkpoint on improvement; True when early stopping triggers."""
        if self.data.val_tokens is None:
            return False
        began, progress = clock(), self.progress
        result = evaluate(self.scored_model, self.data.val_tokens, self.data.val_bytes, self.seq_len,
                          self.eval_batch_size, self.precision, self.device, self.info)
        self.early_stopping.update({"val_loss": result.loss, "val_ppl": result.ppl, "val_bpb": result.bpb})
        scored = clock()
        progress.eval_seconds += scored - began
        if self.info.is_main:
            self.report.evaluation(progress.step, result.loss, result.ppl, result.bpb,
                                   {"train_seconds": round(progress.train_seconds, 3),
                                    "eval_seconds": round(progress.eval_seconds, 3)})
            path = self.checkpoints.save_best(result.ppl, self.checkpoint_metrics())
            if path is not None:
                self.log(f"saved {path}")
            self.report.stories(progress.step, self.scored_model, self.tokenizer)
            self.report.flush()
        progress.eval_seconds += clock() - scored
        self.interval_paused += clock() - began
        return self.early_stopping.should_stop

    def checkpoint_metrics(self) -> dict[str, Any]:
        return {"step": self.progress.step, "train_loss": self.progress.last_train_loss,
                **self.early_stopping.last_eval}

    def save_latest(self) -> None:
        started = clock()
        self.checkpoints.save_latest(self.checkpoint_metrics())
        self.interval_paused += clock() - started

    # ------------------------------------------------------------------------------------------
    # Output

    def result(self, stop_reason: str, exit_code: int) -> TrainResult:
        best = min((ppl for ppl, _ in self.checkpoints.best.entries), default=None)
        return TrainResult(self.progress.step, self.length.total_steps, stop_reason, exit_code, self.output_dir, best,
                           self.progress.last_train_loss)

    def log_setup(self) -> None:
        cfg, info = self.config.training, self.info
        self.log(f"device {self.device} | precision {self.precision.name} | "
                 f"compile {'on' if self.compile_pending else 'off'} | processes {info.world_size}")
        self.log(f"model {self.model.num_parameters():,} parameters | context {self.seq_len} | "
                 f"vocab {self.config.model.vocab_size}")
        self.log(f"train {self.data.train_description}: {self.data.train_tokens:,} tokens, "
                 f"{self.batches.batches_per_epoch:,} batches/epoch | val {self.data.val_description or 'none'}")
        self.log(f"batch {cfg.batch_size} x accum {cfg.grad_accum_steps} x {info.world_size} process(es) x "
                 f"{self.seq_len} = {self.tokens_per_step:,} tokens/step | {self.length.describe()} | "
                 f"output {self.output_dir}")
        if self.length.budget_seconds is not None and self.schedule.warmup_steps:
            self.log(f"warmup: {self.schedule.warmup_steps:,} steps or the first {BUDGET_WARMUP_SHARE:.0%} of the "
                     f"budget, whichever ends first; then {self.config.scheduler.shape} to min_lr "
                     f"{self.schedule.min_lr:g} at the budget's end")
