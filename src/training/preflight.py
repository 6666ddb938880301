"""Pre-flight checks before a long run: what `python test_training_setup.py` prints.

Each check prints one line, PASS / WARN / FAIL, and the exit status is 1 if any check failed.
A missing GPU is a warning, not a failure: CPU training works, just slowly.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from src.config_utils import ConfigError
from src.device import DEVICE_CHOICES
from src.training.checkpointing import LATEST_NAME

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
ROUND_TRIP_TEXT = 'Once upon a time, Lily found a shiny "red" ball. She said: "Wow!" 123 café 🙂'
DEFAULT_CONFIG = "config/train_config_tinystories_33M_TOP10K.yaml"


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


class Preflight:
    """Runs the checks in order; later checks are skipped when what they need failed."""

    def __init__(self, config_path: str, overrides: list[str]) -> None:
        self.config_path, self.overrides = config_path, overrides
        self.checks: list[Check] = []
        self.config = self.tokenizer = self.model = self.device = None

    def run(self, out: Callable[[str], None] = print) -> int:
        steps = [self.check_config, self.check_tokenizer, self.check_vocab, self.check_model,
                 self.check_device, self.check_step, self.check_data, self.check_output_dir,
                 self.check_accelerators]
        for step in steps:
            try:
                result = step()
            except Exception as exc:  # a check that crashes is a failed check, reported in one line
                result = Check(step.__name__.removeprefix("check_"), FAIL, f"{type(exc).__name__}: {exc}")
            for check in result if isinstance(result, list) else [result]:
                if check is not None:
                    self.checks.append(check)
                    out(check.line())
        failed = [c.name for c in self.checks if c.status == FAIL]
        out(f"verdict: {'FAIL (' + ', '.join(failed) + ')' if failed else 'ready to train'}")
        return 1 if failed else 0

    # --------------------------------------------------------------------------------------------

    def check_config(self) -> Check:
        from src.training.config import load_train_config

        try:
            self.config = load_train_config(self.config_path, self.overrides)
        except ConfigError as exc:
            return Check("config", FAIL, str(exc))
        return Check("config", PASS, f"{self.config_path} is valid")

    def check_tokenizer(self) -> Check | None:
        if self.config is None:
            return None
        from src.data.tokenizer import TokenizerError, load_tokenizer

        path = self.config.data.tokenizer
        try:
            self.tokenizer = load_tokenizer(path)
        except TokenizerError as exc:
            return Check("tokenizer", FAIL, str(exc))
        ids = self.tokenizer.encode(ROUND_TRIP_TEXT).ids
        decoded = self.tokenizer.decode(ids)
        if decoded != ROUND_TRIP_TEXT:
            return Check("tokenizer", FAIL, f"{path} does not round-trip: {decoded!r}")
        return Check("tokenizer", PASS, f"{path}: {self.tokenizer.get_vocab_size():,} tokens, round-trips text exactly")

    def check_vocab(self) -> Check | None:
        if self.config is None or self.tokenizer is None:
            return None
        vocab, model_vocab = self.tokenizer.get_vocab_size(), self.config.model.vocab_size
        if vocab > model_vocab:
            return Check("vocab", FAIL, f"tokenizer has {vocab} tokens, model.vocab_size is only {model_vocab}")
        if vocab < model_vocab:
            return Check("vocab", WARN, f"tokenizer has {vocab} tokens, model.vocab_size {model_vocab} (unused rows)")
        return Check("vocab", PASS, f"model.vocab_size {model_vocab} matches the tokenizer")

    def check_model(self) -> Check | None:
        if self.config is None:
            return None
        from src.model.transformer_block import WikiMiniModel

        self.model = WikiMiniModel(self.config.model)
        m = self.config.model
        return Check("model", PASS, f"{self.model.num_parameters():,} parameters (d_model {m.d_model}, "
                                    f"{m.n_layers} layers, {m.n_heads} heads, context {m.max_seq_len})")

    def check_device(self) -> Check | None:
        if self.config is None:
            return None
        from src.device import resolve_device

        try:
            self.device = resolve_device(self.config.training.device)
        except ValueError as exc:
            return Check("device", FAIL, str(exc))
        return Check("device", PASS, str(self.device))

    def check_step(self) -> Check | None:
        if self.model is None or self.device is None:
            return None
        from src.training.optimizer import build_optimizer
        from src.training.precision import choose_precision
        from src.training.step import train_step

        cfg = self.config
        precision, _ = choose_precision(cfg.training.precision, self.device)
        model = self.model.to(self.device).train()
        optimizer = build_optimizer(model, cfg.optimizer, self.device)
        batch, seq_len = min(cfg.training.batch_size, 2), cfg.model.max_seq_len
        tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq_len + 1))
        loss, grad_norm = train_step(model, optimizer, lambda: (tokens[:, :-1], tokens[:, 1:]), 1, precision,
                                     self.device, scaler=precision.grad_scaler(), max_grad_norm=cfg.training.max_grad_norm)
        loss = float(loss)
        if not math.isfinite(loss):
            return Check("train step", FAIL, f"loss is {loss} after one step")
        self.model = None  # free the weights and optimizer state
        return Check("train step", PASS, f"forward + backward + AdamW on {self.device} in {precision.name}: "
                                         f"loss {loss:.3f} (ln V = {math.log(cfg.model.vocab_size):.3f})")

    def check_data(self) -> list[Check] | None:
        if self.config is None:
            return None
        from src.training.data import text_sources

        try:
            train, val = text_sources(self.config.data)
        except Exception as exc:
            return [Check("data", FAIL, str(exc))]
        checks = [self._source_check("train data", train)]
        if val is not None:
            checks.append(self._source_check("validation data", val))
        else:
            checks.append(Check("validation data", WARN, "none configured: no evaluation, no best checkpoints"))
        return checks

    def _source_check(self, name: str, source) -> Check:
        from src.data.cache import cache_paths
        from src.data.sources import DataSourceError, HubDataset, hub_reachable

        if self.tokenizer is not None and cache_paths(source, self.tokenizer, self.config.data.cache_dir)[0].exists():
            return Check(name, PASS, f"{source.describe()}: already tokenized in {self.config.data.cache_dir}")
        hub = [p for p in source.parts if isinstance(p, HubDataset)]
        if hub:
            reachable, why = hub_reachable()
            status = PASS if reachable else FAIL
            hint = "" if reachable else "; use local text files (--set data.train=... data.val=...) or config/smoke.yaml"
            return Check(name, status, f"{source.describe()}: Hugging Face hub {why}{hint}")
        try:
            first = next(iter(source.stories()))
        except (DataSourceError, StopIteration) as exc:
            return Check(name, FAIL, str(exc) or "no stories")
        size = source.total_bytes()
        size_text = f"{size / 1e6:.1f} MB, " if size else ""
        return Check(name, PASS, f"{source.describe()}: {size_text}first story {len(first)} characters")

    def check_output_dir(self) -> Check | None:
        if self.config is None:
            return None
        out = Path(self.config.training.output_dir)
        existing = next(p for p in [out, *out.absolute().parents] if p.exists())  # created at training time
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            return Check("output dir", FAIL, f"{out} cannot be written ({existing} is not a writable directory)")
        latest = out / LATEST_NAME
        note = f" (holds {LATEST_NAME}: use --resume auto)" if latest.exists() else ""
        return Check("output dir", PASS, f"{out} is writable{note}")

    def check_accelerators(self) -> list[Check]:
        from src.device import bf16_supported
        from src.training.compile import compile_wanted
        from src.training.precision import choose_precision

        checks = []
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
            checks.append(Check("cuda", PASS, f"{torch.cuda.device_count()} x {name} (sm {cap}), torch {torch.__version__}"))
        else:
            checks.append(Check("cuda", WARN, f"not available: training runs on CPU (torch {torch.__version__}, "
                                              f"{torch.get_num_threads()} threads)"))
        device = self.device or torch.device("cpu")
        requested = self.config.training.precision if self.config else "auto"
        precision, _ = choose_precision(requested, device)
        checks.append(Check("bf16", PASS if bf16_supported(device) else WARN,
                            f"{'supported' if bf16_supported(device) else 'not supported'} on {device}; "
                            f"training will use {precision.name}"))
        setting = self.config.training.compile if self.config else "auto"
        wanted = compile_wanted(setting, device)
        available, why = compile_available(device)
        checks.append(Check("torch.compile", PASS if available or not wanted else WARN,
                            f"{why}; {'on' if wanted else 'off'} for this run (training.compile={setting}; "
                            "a compile failure falls back to eager)"))
        return checks


def compile_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can generate code here: Triton on CUDA, a C++ compiler on CPU."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return False, f"unsupported on Python {sys.version.split()[0]}"
    except Exception as exc:
        return False, f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return (True, "available (Triton)") if has_triton() else (False, "Triton missing")
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return (True, f"available ({compiler})") if compiler else (False, "no C++ compiler found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="test_training_setup.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"training config (default {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="overrides training.device")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"training.device={args.device}"] if args.device else [])
    return Preflight(args.config, overrides).run()
