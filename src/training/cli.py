"""`python train.py`: parse flags, load the config, train; user errors are one line, no traceback."""

from __future__ import annotations

import argparse
import sys

from src.config_utils import ConfigError
from src.data.cache import CacheError
from src.data.sources import DataSourceError
from src.data.tokenizer import TokenizerError
from src.device import DEVICE_CHOICES
from src.model.checkpoint import CheckpointError
from src.training.config import load_train_config

USER_ERRORS = (ConfigError, DataSourceError, TokenizerError, CheckpointError, CacheError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a WikiMiniModel. Multi-GPU: torchrun --nproc_per_node N train.py --config ...",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. config/smoke.yaml")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from output_dir/checkpoint_latest.pth (auto; a new run if absent) or PATH")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set training.max_steps=100")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="overrides training.device")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="fine-tune: start from CKPT's weights, model shape and tokenizer, with a fresh optimizer "
                        "and schedule (sets training.init_from); data.tokenizer must be CKPT's tokenizer or 'checkpoint'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"training.device={args.device}"] if args.device else []) \
        + ([f"training.init_from={args.init_from}"] if args.init_from else [])
    try:
        config = load_train_config(args.config, overrides)
        from src.training.trainer import train  # torch-heavy imports only once the config is valid

        result = train(config, resume=args.resume)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the loop installs its handler (e.g. while tokenizing)
        print("interrupted", file=sys.stderr)
        return 130
    return result.exit_code
