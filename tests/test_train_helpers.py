"""Shared by the training tests: a tiny synthetic corpus, a tiny tokenizer, smoke-config overrides.

No network and no ../shared: everything is written into the test's tmp dir in well under a second.
(This module holds no tests; it is named test_* only to sit with the training tests it serves.)
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from src.data.tokenizer import train_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO_ROOT / "config" / "smoke.yaml"

NAMES = ["Tom", "Lily", "Ben", "Mia", "Sam", "Anna"]
THINGS = ["a red ball", "a big tree", "a small bird", "a blue car", "a little cat", "a happy dog"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the house"]
VERBS = ["found", "saw", "liked", "wanted", "played with"]


def synthetic_story(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    sentences = [f"Once upon a time, {name} went to {rng.choice(PLACES)}."]
    for _ in range(rng.randint(2, 5)):
        sentences.append(f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(THINGS)} in {rng.choice(PLACES)}.")
    sentences.append(f"{name} was very happy.")
    return " ".join(sentences)


def make_smoke_data(directory: Path, train_stories: int = 400, val_stories: int = 60) -> dict[str, Path | int]:
    """train.txt / valid.txt in the TinyStories format and a ~300-token tokenizer.json."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = {}
    for name, count in (("train", train_stories), ("valid", val_stories)):
        stories = [synthetic_story(rng) for _ in range(count)]
        paths[name] = directory / f"{name}.txt"
        paths[name].write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    tokenizer = train_bpe_tokenizer([synthetic_story(rng) for _ in range(300)], vocab_size=300, min_frequency=1)
    paths["tokenizer"] = directory / "tokenizer.json"
    tokenizer.save(str(paths["tokenizer"]))
    paths["vocab_size"] = tokenizer.get_vocab_size()
    return paths


def smoke_overrides(data: dict, output_dir: Path, **settings) -> list[str]:
    """--set strings pointing config/smoke.yaml at `data`, plus `section__key=value` extras."""
    overrides = [
        f"data.train={data['train']}",
        f"data.val={data['valid']}",
        f"data.tokenizer={data['tokenizer']}",
        f"data.cache_dir={Path(data['train']).parent / 'cache'}",
        f"model.vocab_size={data['vocab_size']}",
        f"training.output_dir={output_dir}",
    ]
    overrides += [f"{key.replace('__', '.')}={value}" for key, value in settings.items()]
    return overrides


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def train_command(overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(SMOKE_CONFIG), *set_args(overrides), *extra]


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a child run; `threads` pins torch's CPU threads (for runs side by side)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", GLOO_SOCKET_IFNAME="lo")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("WORLD_SIZE", None)
    return env


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(output_dir) if "train_loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
