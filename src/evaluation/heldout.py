"""Held-out language-model quality: loss, perplexity and bits per byte on validation text.

Every window of the text is scored, in order, with no sampling: window i covers tokens
[i*T, i*T + T] (T = the model's context) and every token after the first is predicted exactly
once (see `src.data.batches.validation_batches`). The loss is the model's own cross-entropy,
summed over all predicted tokens:

    loss (nats/token) = total_nats / predicted_tokens
    perplexity        = exp(loss)
    bits per byte     = total_nats / (ln 2 * UTF-8 bytes of the scored text)

Perplexity depends on the tokenizer; bits per byte does not, so it compares models with
different vocabularies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from src.data.batches import validation_batches
from src.data.cache import DEFAULT_CACHE_DIR, load_or_build_token_cache
from src.data.sources import open_source
from src.data.tokenizer import eos_token_id
from src.generation.scoring import score_tokens
from src.losses import IGNORE_INDEX, bits_per_byte, perplexity
from src.model.transformer_block import WikiMiniModel

DEFAULT_VALIDATION_SOURCE = "roneneldan/TinyStories:validation"


@dataclass(frozen=True)
class HeldOutResult:
    source: str
    seq_len: int
    windows: int  # windows scored (the last one may be partial)
    predicted_tokens: int
    n_bytes: int  # UTF-8 bytes of the story text those tokens cover (separators excluded)
    total_nats: float
    capped: bool  # True when --max-windows left part of the text unscored

    @property
    def loss(self) -> float:
        return self.total_nats / self.predicted_tokens

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.loss, self.predicted_tokens, self.n_bytes)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


@torch.inference_mode()
def sum_nats(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    show_progress: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int, int]:
    """(total nats, predicted tokens, windows) over all validation windows of `tokens`.

    The evaluators and the trainer's periodic validation both use this. With world_size > 1
    this rank scores every world_size-th batch; the caller sums the three numbers over ranks.
    """
    device = next(model.parameters()).device
    total_nats, predicted, windows = 0.0, 0, 0
    batches = validation_batches(tokens, seq_len, batch_size)
    total_batches = math.ceil(math.ceil((len(tokens) - 1) / seq_len) / batch_size)
    progress = tqdm(batches, total=total_batches, desc="held-out loss", unit="batch", leave=False,
                    disable=None if show_progress else True)  # None: shown on a terminal only
    for index, (x, y) in enumerate(progress):
        if index % world_size != rank:
            continue
        with autocast():
            _, mean_loss = model(x.to(device), y.to(device))
        count = int((y != IGNORE_INDEX).sum())
        total_nats += float(mean_loss) * count
        predicted += count
        windows += len(x)
    return total_nats, predicted, windows


def text_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes of the story text behind `ids`, special tokens (EOS) excluded."""
    return len(tokenizer.decode(ids.astype(np.int64).tolist(), skip_special_tokens=True).encode("utf-8"))


def evaluate_heldout(
    model: WikiMiniModel,
    tokenizer: Tokenizer,
    source: str = DEFAULT_VALIDATION_SOURCE,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    max_windows: int | None = None,
    batch_size: int = 8,
    show_progress: bool = True,
    story_start_id: int | None = None,
) -> HeldOutResult:
    """Score the model on every window of `source` (or the first `max_windows` of them).

    The text is tokenized once into the shared token cache (`src.data.cache`) and reused.
    `story_start_id` is the token the model's stories start after (`LoadedModel.story_start_id`):
    our models' (`<|endoftext|>`, or None) keeps the training layout, story then EOS; any other
    (llama2.c: BOS) is put before every story, as such models were trained.
    """
    text_source = open_source(source, split="validation")
    if story_start_id is not None and story_start_id == eos_token_id(tokenizer):
        story_start_id = None  # our own layout: stories separated by EOS
    cache = load_or_build_token_cache(text_source, tokenizer, cache_dir, show_progress=show_progress,
                                      story_start_id=story_start_id)
    seq_len = model.config.max_seq_len
    tokens = cache.tokens
    capped = max_windows is not None and max_windows * seq_len + 1 < cache.n_tokens
    if capped:
        tokens = tokens[: max_windows * seq_len + 1]
    total_nats, predicted, windows = sum_nats(model, tokens, seq_len, batch_size, show_progress)
    return HeldOutResult(
        source=text_source.describe(),
        seq_len=seq_len,
        windows=windows,
        predicted_tokens=predicted,
        n_bytes=text_bytes(tokenizer, tokens) if capped else cache.n_bytes,
        total_nats=total_nats,
        capped=capped,
    )


def evaluate_stories(
    model: WikiMiniModel,
    tokenizer: Tokenizer,
    source: str = DEFAULT_VALIDATION_SOURCE,
    story_start_id: int | None = None,
    max_stories: int | None = None,
) -> HeldOutResult:
    """Score each story on its own, after the story-start token: the nats of its tokens (no end
    token is predicted) over its UTF-8 bytes. This is lm-evaluation-harness's
    `loglikelihood_rolling` conditioning (with max_length = context + 1): a story longer than the
    context is scored in windows of context - 1 predicted tokens, each after the one token before it.
    """
    seq_len = model.config.max_seq_len
    prefix = [] if story_start_id is None else [story_start_id]
    windows, n_bytes, stories = [], 0, 0
    for story in open_source(source, split="validation").head(max_stories).stories():
        sequence = prefix + tokenizer.encode(story, add_special_tokens=False).ids
        n_bytes += len(story.encode("utf-8"))
        stories += 1
        windows += [sequence[start:start + seq_len] for start in range(0, len(sequence) - 1, seq_len - 1)]
    scores = score_tokens(model, windows)
    return HeldOutResult(
        source=f"{source} (each story on its own)",
        seq_len=seq_len,
        windows=len(windows),
        predicted_tokens=sum(len(s.logprobs) for s in scores),
        n_bytes=n_bytes,
        total_nats=-sum(sum(s.logprobs) for s in scores),
        capped=max_stories is not None,
    )
