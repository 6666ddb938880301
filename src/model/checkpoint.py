"""The one checkpoint format: save atomically, load safely, pair weights with their tokenizer.

A checkpoint is a `.pth` dict that `torch.load(path, weights_only=True)` reads:

    format_version      int
    config              {"model": {...ModelConfig...}, ...any other training sections}
    model_state_dict    tensors, without torch.compile's `_orig_mod.` or DDP's `module.` prefix
    tokenizer_json      the tokenizer's own tokenizer.json text, so weights never meet the
                        wrong tokenizer
    tokenizer_sha256    hash of that text
    eos_token           the token that ends a story (generation stops there)
    story_start_token   the token a story starts after (generation, the server and the evaluators
                        put it before the prompt); absent in older checkpoints, which means
                        `<|endoftext|>` where the tokenizer has it, else none. llama2.c models:
                        `<s>` (BOS, id 1) starts, `</s>` (EOS, id 2) ends
    metrics             optional {"step": ..., "val_loss": ..., "val_ppl": ...}
    training_state      optional optimizer / scheduler / data / RNG state for exact resume

Nothing here ever unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from tokenizers import Tokenizer

from src.config_utils import ConfigError
from src.atomic_files import atomic_output
from src.data.tokenizer import (
    EOS_TOKEN,
    TokenizerError,
    load_tokenizer,
    tokenizer_from_json,
    tokenizer_sha256,
)
from src.device import DTYPES, inference_precision, resolve_device
from src.model.config import ModelConfig
from src.model.quantize import quantize_int8
from src.model.transformer_block import WikiMiniModel

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
DEMO_CHECKPOINT = CHECKPOINT_DIR / "demo" / "tinystories_demo.pth"
BEST_CHECKPOINT_PATTERN = re.compile(r"checkpoint_best_ppl_(\d+(?:\.\d+)?)\.pth$")  # what best_name writes
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe, malformed or does not match its tokenizer."""


@dataclass
class LoadedModel:
    """A model ready for inference, with the tokenizer it was trained with."""

    model: WikiMiniModel
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    eos_id: int | None
    metrics: dict[str, Any]
    precision: str = "fp32"  # weight format: fp32, bf16 or int8
    story_start_id: int | None = None  # the token a story starts after (None: no prefix)
    run_config: dict[str, Any] = field(default_factory=dict)  # the training run's config sections

    @property
    def story_prefix(self) -> list[int]:
        """What goes before a prompt so the model reads it as the start of a story."""
        return [] if self.story_start_id is None else [self.story_start_id]

    @property
    def name(self) -> str:
        return self.path.name


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes added by torch.compile (`_orig_mod.`) and DDP (`module.`)."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it.

    A crash or Ctrl-C mid-write leaves the previous file intact, never a half-written one.
    """
    try:
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:  # e.g. the disk is full: say so, and say nothing was lost
        kept = "the previous file is unchanged" if Path(path).exists() else "nothing was written"
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
    eos_token: str = EOS_TOKEN,
    story_start_token: str | None = None,
) -> Path:
    """Save model weights, config and tokenizer (plus optional training state) atomically.

    `config` holds the full run config (plain dicts); its `model` section is always taken from
    the model itself so the two cannot disagree. `weights_dtype` (e.g. torch.bfloat16) shrinks
    a checkpoint meant for distribution. `story_start_token` is the token a story starts after;
    None means `<|endoftext|>` where the tokenizer has it (our own models), else none.
    """
    if story_start_token is None and tokenizer.token_to_id(EOS_TOKEN) is not None:
        story_start_token = EOS_TOKEN
    if story_start_token is not None and tokenizer.token_to_id(story_start_token) is None:
        raise CheckpointError(f"story start token {story_start_token!r} is not in the tokenizer")
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    state = clean_state_dict(inner.state_dict())
    converted: dict[tuple, torch.Tensor] = {}  # tied weights stay one tensor after conversion

    def portable(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if key not in converted:
            out = tensor.detach()
            if weights_dtype is not None and out.is_floating_point():
                out = out.to(weights_dtype)
            converted[key] = out.cpu()
        return converted[key]

    state = {k: portable(v) for k, v in state.items()}
    full_config = {k: v for k, v in dict(config or {}).items() if k != "model"}
    full_config = {"model": inner.config.to_dict(), **full_config}
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "config": full_config,
        "model_state_dict": state,
        "tokenizer_json": tokenizer.to_str(),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "eos_token": eos_token,
        "metrics": dict(metrics or {}),
    }
    if story_start_token is not None:
        checkpoint["story_start_token"] = story_start_token
    if training_state is not None:
        checkpoint["training_state"] = dict(training_state)
    atomic_torch_save(checkpoint, path)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint dict with `weights_only=True`; raise CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a .pth file: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip (or, long ago, a pickle)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither a zip nor a pickle file)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"unsupported global|GLOBAL .* blocked", str(exc), re.IGNORECASE):
            raise CheckpointError(
                f"refusing to load {path}: it contains arbitrary Python objects, and checkpoints "
                "are only ever loaded with weights_only=True"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt pickle data)") from None
    except Exception as exc:  # zip/pickle format errors, truncated files
        reason = " ".join(str(exc).split())[:120]
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a WikiMiniModel checkpoint (top level is {type(checkpoint).__name__})")
    missing = [k for k in ("config", "model_state_dict") if k not in checkpoint]
    if missing or not isinstance(checkpoint.get("config"), dict) or "model" not in checkpoint["config"]:
        raise CheckpointError(
            f"{path} is not a WikiMiniModel checkpoint: expected keys 'config' (with a 'model' "
            f"section) and 'model_state_dict'; missing {missing or ['config.model']}"
        )
    version = checkpoint.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}; this code reads up to {FORMAT_VERSION}"
        )
    checkpoint["model_state_dict"] = clean_state_dict(checkpoint["model_state_dict"])
    return checkpoint


def checkpoint_tokenizer(checkpoint: Mapping[str, Any], override: str | Path | None = None) -> Tokenizer:
    """The checkpoint's own tokenizer (checked against its stored hash), or `override` (a
    tokenizer dir/file), which must then have the same vocabulary as the checkpoint's own."""
    stored_json = checkpoint.get("tokenizer_json")
    stored_hash = checkpoint.get("tokenizer_sha256")
    if stored_json is not None and stored_hash is not None:
        if hashlib.sha256(str(stored_json).encode("utf-8")).hexdigest() != stored_hash:
            raise CheckpointError("the checkpoint's tokenizer does not match its recorded tokenizer_sha256 "
                                  "(the file was altered or corrupted)")
    try:
        own = tokenizer_from_json(stored_json) if stored_json is not None else None
        if override is None:
            if own is None:
                raise CheckpointError(
                    "checkpoint carries no tokenizer; pass a tokenizer path (TOKENIZER_PATH / --tokenizer)"
                )
            return own
        other = load_tokenizer(override)
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    if own is not None and other.get_vocab() != own.get_vocab():
        theirs, ours = other.get_vocab(), own.get_vocab()
        differ = sum(1 for token, index in ours.items() if theirs.get(token) != index) + len(set(theirs) - set(ours))
        raise CheckpointError(
            f"tokenizer {override} is not the one this checkpoint was trained with ({differ} of {len(ours)} "
            "token ids differ); leave out the tokenizer override to use the checkpoint's own"
        )
    return other


def check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """NaN or infinite weights (a diverged run) would only ever print garbage: refuse them."""
    bad = [name for name, tensor in state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"(e.g. {bad[0]}); the run that wrote it diverged")


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer_path: str | Path | None = None,
    precision: str | None = None,
) -> LoadedModel:
    """Load a checkpoint into an eval-mode model on `device`, with its tokenizer.

    This is the loader the CLI, the evaluators and the server all use. `precision` ('fp32',
    'bf16' or 'int8', see `src.device.inference_precision`) overrides `dtype`; int8 swaps the
    matmul weights for int8 copies (inference only).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(checkpoint["config"]["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from None
    tokenizer = checkpoint_tokenizer(checkpoint, tokenizer_path)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(
            f"tokenizer/model mismatch: the tokenizer has {tokenizer.get_vocab_size()} tokens but "
            f"the model's vocab_size is {config.vocab_size}"
        )
    story_start_id = checkpoint_story_start_id(checkpoint, tokenizer, path)
    check_finite(checkpoint["model_state_dict"], path)
    model = WikiMiniModel(config)
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError:
        raise CheckpointError(f"{path}: weights do not match the model config: {state_mismatch(model, checkpoint['model_state_dict'])}") from None
    if precision is not None:
        dtype = torch.bfloat16 if precision == "int8" else DTYPES[precision]  # int8: bf16 activations
    model.to(device=device, dtype=dtype or torch.float32).eval()
    if precision == "int8":
        quantize_int8(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        path=path,
        eos_id=tokenizer.token_to_id(checkpoint.get("eos_token", EOS_TOKEN)),
        metrics=dict(checkpoint.get("metrics") or {}),
        precision=precision or {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
        story_start_id=story_start_id,
        run_config=dict(checkpoint.get("config") or {}),
    )


def state_mismatch(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> str:
    """One line on how a state dict differs from a model's: missing, unexpected or misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [k for k in expected if k in state_dict and getattr(state_dict[k], "shape", None) != expected[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return "; ".join(parts) or "a tensor could not be copied"


def checkpoint_story_start_id(checkpoint: Mapping[str, Any], tokenizer: Tokenizer, path: Path) -> int | None:
    """Id of the token a story starts after: the checkpoint's `story_start_token`, or, in
    checkpoints written before that field existed, `<|endoftext|>` if the tokenizer has it."""
    token = checkpoint.get("story_start_token")
    if token is None:
        return tokenizer.token_to_id(EOS_TOKEN)
    token_id = tokenizer.token_to_id(str(token))
    if token_id is None:
        raise CheckpointError(f"{path}: its story start token {token!r} is not in its tokenizer")
    return token_id


def compact_checkpoint(source: str | Path, output: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """An inference-only copy: weights in `dtype`, no optimizer or training state.

    Used to ship small checkpoints (the bundled demo model); it loads like any other.
    """
    loaded = load_model(source)
    metrics = dict(loaded.metrics)
    config = {k: v for k, v in loaded.run_config.items() if k != "model"}
    eos = loaded.tokenizer.id_to_token(loaded.eos_id) if loaded.eos_id is not None else EOS_TOKEN
    start = None if loaded.story_start_id is None else loaded.tokenizer.id_to_token(loaded.story_start_id)
    return save_checkpoint(output, loaded.model, loaded.tokenizer, config=config, metrics=metrics,
                           weights_dtype=dtype, eos_token=eos, story_start_token=start)


def best_name(ppl: float) -> str:
    """The file name of a run's best checkpoint at validation perplexity `ppl`."""
    return f"checkpoint_best_ppl_{ppl:.2f}.pth"


def find_best_checkpoint(directory: str | Path) -> Path | None:
    """The `checkpoint_best_ppl_*.pth` with the lowest perplexity in `directory`, if any."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    scored = []
    for candidate in directory.glob("checkpoint_best_ppl_*.pth"):
        match = BEST_CHECKPOINT_PATTERN.search(candidate.name)
        if match:
            scored.append((float(match.group(1)), candidate.name, candidate))
    return min(scored)[2] if scored else None


def find_newest_run_best(directory: str | Path) -> Path | None:
    """The best checkpoint of the most recently written run under `directory` (runs write to
    `checkpoints/<run>/`). Perplexities of different runs are not compared: their tokenizers
    and data may differ, so the newest run is taken as the one the user means."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    runs = {path.parent for path in directory.rglob("checkpoint_best_ppl_*.pth")}
    if not runs:
        return None
    newest = max(runs, key=lambda run: max(p.stat().st_mtime for p in run.glob("checkpoint_best_ppl_*.pth")))
    return find_best_checkpoint(newest)


def resolve_checkpoint_path(
    explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    search_dir: str | Path = CHECKPOINT_DIR,
    demo: str | Path = DEMO_CHECKPOINT,
) -> Path:
    """Which checkpoint to use: the flag, else $CHECKPOINT_PATH, else the best checkpoint of
    the newest training run under `search_dir`, else the bundled demo model."""
    return resolve_checkpoint(explicit, env, search_dir, demo)[0]


def resolve_checkpoint(
    explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    search_dir: str | Path = CHECKPOINT_DIR,
    demo: str | Path = DEMO_CHECKPOINT,
) -> tuple[Path, str]:
    """`resolve_checkpoint_path` and why that one, so commands can say which model they use."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit), "--checkpoint"
    if env.get("CHECKPOINT_PATH"):
        return Path(env["CHECKPOINT_PATH"]), "$CHECKPOINT_PATH"
    best = find_newest_run_best(search_dir)
    if best is not None:
        return best, "best checkpoint of the newest training run"
    if Path(demo).exists():
        return Path(demo), "bundled demo model"
    raise CheckpointError(
        f"no checkpoint found: pass --checkpoint PATH, set CHECKPOINT_PATH, or train one with "
        f"`python train.py --config config/<name>.yaml` (best checkpoints are looked for under "
        f"{search_dir}/**/checkpoint_best_ppl_*.pth; the bundled demo model would be {demo})"
    )


def load_for_inference(
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    tokenizer: str | Path | None = None,
    announce: bool = True,
) -> LoadedModel:
    """The one setup every inference command does: resolve the device, the checkpoint (flag,
    $CHECKPOINT_PATH, newest run's best, demo) and the precision, then load. Unless the path
    was passed in, it says on stderr which checkpoint it took and why: a default is never silent.

    Raises CheckpointError for a bad checkpoint and ValueError for a bad device/precision.
    """
    torch_device = resolve_device(device)
    weights = inference_precision(torch_device, precision)
    path, reason = resolve_checkpoint(checkpoint)
    loaded = load_model(path, device=torch_device, precision=weights, tokenizer_path=tokenizer)
    if announce and checkpoint is None:  # a path the user did not type: say which and why
        print(f"checkpoint: {path} ({reason})", file=sys.stderr, flush=True)
    return loaded
