"""The training config: six typed sections read from YAML, overridable with `--set section.key=value`.

    model      ModelConfig (src/model/config.py): the network's shape
    data       tokenizer, train / validation text sources, token cache
    training   batch, accumulation, length of the run, device, precision, eval / save cadence
    optimizer  AdamW, or Muon for the hidden matrices
    scheduler  linear warmup, then cosine (or warmup-stable-decay) to min_lr
    logging    log cadence, metrics file, progress bar, loss-curve plot

Every section goes through `dataclass_from_dict`, so an unknown or misspelled key is an error
that names it and lists the valid ones, and YAML's "5e-4" (a string to YAML 1.1) loads as a
float. `--set` values are parsed as YAML scalars and validated the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.config_utils import ConfigError, dataclass_from_dict
from src.model.config import ModelConfig, format_bytes, physical_memory_bytes
from src.training.schedule import SHAPES

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_BATCH = 65_536  # windows per micro-batch, or micro-batches per step


@dataclass
class DataConfig:
    tokenizer: str = "tokenizer/tinystories_10k"  # a tokenizer directory or tokenizer.json
    train: str = "roneneldan/TinyStories"  # any text source spec (src/data/sources.py)
    val: str | None = "roneneldan/TinyStories:validation"  # None: carve it out of train (val_fraction)
    val_fraction: float | None = None  # share of train stories held out by hash when val is None
    max_train_stories: int | None = None  # first N stories only (quick runs)
    max_val_stories: int | None = None
    cache_dir: str = "data/cache"  # tokenized memmaps, keyed by tokenizer + source

    def __post_init__(self) -> None:
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val is not None and self.val_fraction is not None:
            raise ConfigError("set data.val or data.val_fraction, not both")
        for name in ("max_train_stories", "max_val_stories"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class TrainingConfig:
    output_dir: str = "checkpoints"
    batch_size: int = 64  # windows per micro-batch, per process
    grad_accum_steps: int = 4  # micro-batches per optimizer step
    epochs: float = 5.0  # length of the run, unless max_steps is set
    max_steps: int | None = None  # optimizer steps; overrides epochs
    max_minutes: float | None = None  # wall-clock budget of training and validation; the lr schedule spans it (the first, compiling step excluded)
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (train.py --init-from)
    max_grad_norm: float = 1.0  # 0 disables clipping
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto: bf16 on CUDA sm80+ and CPU, fp16 + GradScaler on older GPUs, else fp32
    compile: bool | str = "auto"  # auto: on for CUDA on Linux
    seed: int = 1337
    eval_interval: int = 500  # optimizer steps between validation runs (and at the end)
    eval_batches: int | None = 100  # cap on validation batches per evaluation (per process); None = all
    eval_batch_size: int | None = None  # None = batch_size
    save_interval: int = 1000  # optimizer steps between checkpoint_latest.pth saves
    keep_best: int = 1  # checkpoint_best_ppl_*.pth files kept
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_min_delta: float = 0.0  # val_loss must drop by more than this to count
    ema_decay: float | None = None  # e.g. 0.999: evaluate and keep as best an average of the weights

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum_steps", "eval_interval", "save_interval", "keep_best")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_batches", "eval_batch_size", "early_stopping_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1 (or null), got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "grad_accum_steps"):
            if (getattr(self, name) or 0) > MAX_BATCH:
                raise ConfigError(f"training.{name} is {getattr(self, name):,}; the limit is {MAX_BATCH:,}")
        if self.epochs <= 0:
            raise ConfigError(f"training.epochs must be positive, got {self.epochs}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ConfigError(f"training.max_minutes must be a positive number of minutes, got {self.max_minutes}")
        if self.max_grad_norm < 0 or self.early_stopping_min_delta < 0:
            raise ConfigError("training.max_grad_norm and training.early_stopping_min_delta must be >= 0")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"training.ema_decay must be between 0 and 1 (or null), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"training.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(f"training.compile must be true, false or auto, got {self.compile!r}")


OPTIMIZERS = ("adamw", "muon")


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | muon (Muon for hidden matrices, AdamW for embeddings, norms, head)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only (not norms)
    fused: bool | None = None  # None: fused kernel on CUDA
    muon_lr: float | None = None  # None: optimizer.lr (Muon's update is scaled to AdamW's RMS)
    muon_momentum: float = 0.95

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        for name in ("lr", "eps", "muon_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"optimizer.{name} must be a positive number, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"optimizer.weight_decay must be a number >= 0, got {self.weight_decay}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"optimizer.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        self.betas = tuple(self.betas)


@dataclass
class SchedulerConfig:
    warmup_steps: int = 2000  # linear warmup from ~0 to optimizer.lr
    min_lr: float = 5e-5  # the decay ends here at the last step (or the end of the budget)
    shape: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    decay_fraction: float = 0.2  # wsd: share of the run spent decaying

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ConfigError(f"scheduler.min_lr must be a number >= 0, got {self.min_lr}")
        if self.shape not in SHAPES:
            raise ConfigError(f"scheduler.shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"scheduler.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class LoggingConfig:
    log_interval: int = 10  # optimizer steps per metrics.jsonl record / progress update
    metrics_file: str = "metrics.jsonl"  # inside training.output_dir
    plot: bool = True  # loss_curve.png in output_dir at the end
    progress_bar: bool | None = None  # None: only when stderr is a terminal (else plain log lines)
    tensorboard: bool = False  # event files in training.output_dir (pip install tensorboard)
    wandb_project: str | None = None  # a Weights & Biases run (pip install wandb); WANDB_MODE=offline honoured
    sample_prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "The little dog"])
    sample_max_tokens: int = 80  # per sample story at each evaluation; 0 turns samples off
    sample_seed: int = 1234

    def __post_init__(self) -> None:
        if self.log_interval < 1:
            raise ConfigError(f"logging.log_interval must be at least 1, got {self.log_interval}")
        if self.sample_max_tokens < 0:
            raise ConfigError(f"logging.sample_max_tokens must be >= 0, got {self.sample_max_tokens}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        self.check_batch_fits_memory()
        if self.scheduler.min_lr > self.optimizer.lr:
            raise ConfigError(
                f"scheduler.min_lr ({self.scheduler.min_lr}) must not exceed optimizer.lr ({self.optimizer.lr})"
            )

    def check_batch_fits_memory(self, memory: int | None = None) -> None:
        """Refuse a micro-batch whose float32 logits and their gradient alone exceed this machine's RAM."""
        memory = physical_memory_bytes() if memory is None else memory
        rows = max(self.training.batch_size, self.training.eval_batch_size or 0)
        needed = 2 * 4 * rows * self.model.max_seq_len * self.model.vocab_size
        if memory is not None and needed > memory:
            raise ConfigError(
                f"training.batch_size={rows:,} windows of model.max_seq_len={self.model.max_seq_len:,} tokens need "
                f"{format_bytes(needed)} for their logits alone; this machine has {format_bytes(memory)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a training config is a mapping of sections, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(unknown)}; valid sections: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            value = data.get(name) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"config section {name} must be a mapping, got {value!r}")
            if section_cls is ModelConfig:
                sections[name] = ModelConfig.from_dict(value)
            else:
                sections[name] = dataclass_from_dict(section_cls, value, section=name)
        return cls(**sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain dicts (tuples as lists): what checkpoints store and YAML round-trips."""
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, name)).items()}
            for name in SECTIONS
        }


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "logging": LoggingConfig,
}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw config dict (values parsed as YAML scalars)."""
    data = {name: dict(section or {}) for name, section in data.items()}
    for item in overrides:
        target, sep, raw = item.partition("=")
        section, dot, key = target.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        if section not in SECTIONS:
            raise ConfigError(f"--set {item}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML: keep the text and let the field's type decide
        data.setdefault(section, {})[key] = value
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if data is None:  # silently training the 24.5M defaults instead would surprise anyone
            raise ConfigError(f"{path} is empty; start from one of the configs in config/")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return TrainConfig.from_dict(apply_overrides(data, list(overrides or [])))
