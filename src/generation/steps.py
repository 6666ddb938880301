"""The decode step: how a DecodeBatch turns tokens into logits, behind one small interface.

Three implementations, chosen once per batch by `choose_step`, which logs why:

- `NativeDecode`: `native_step.cpp` (src/generation/native.py), one C++ call per token for every
  row, and per prompt to prefill; with the native sampler it also draws the tokens, several steps
  per call. On CPU with float32 or int8 weights: the default.
- `CompiledDecode`: a lone row's forward through torch.compile over fixed shapes, where the native
  step cannot run (bf16 weights, GPUs) and a compile was asked for.
- `EagerDecode`: the model's own forward, one PyTorch op at a time. Everything else.

Each has `prefill(windows, start)` (the logits after each window, keys/values written into cache
rows start, start+1, ...), `logits(inputs, positions)` (one token per row) and `state` ("native",
"eager", "compiling", "ready" or "failed"), which /health reports.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import torch

from src.generation import native
from src.generation.native import NativeSampler, NativeStep, native_step
from src.model.kv_cache import KVCache
from src.model.transformer_block import WikiMiniModel

log = logging.getLogger(__name__)
# auto: native where it runs, else eager; compile: native, else compiled (the --compile flags);
# compiled and eager: that step alone (tests and benches of the PyTorch paths)
DECODE_CHOICES = ("auto", "compile", "compiled", "eager")


def compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot compile (dynamo, inductor and the C++ compiler's
    failures all derive from TorchDynamoException), or when settings changed too often. Imported
    here, not at the top: torch._dynamo takes most of a second to import, and eager decoding
    (a one-story `generate.py`) never needs it."""
    from torch._dynamo import exc

    return exc.TorchDynamoException, exc.FailOnRecompileLimitHit


class EagerDecode:
    state = "eager"

    def __init__(self, model: WikiMiniModel, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self.device = model.tok_embeddings.weight.device

    def prefill(self, windows: list[list[int]], start: int) -> torch.Tensor:
        """Every window in one right-padded pass. The padding is harmless: a real position only
        attends to earlier positions, and the padded positions' keys are overwritten or masked
        before any query can see them."""
        lengths = [len(w) for w in windows]
        longest = max(lengths)
        ids = torch.tensor([w + [0] * (longest - len(w)) for w in windows], dtype=torch.long, device=self.device)
        rows = self.cache.rows(start, start + len(windows))
        positions = torch.arange(longest, device=self.device)[None, :]
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        return self.model(ids, kv_cache=rows, input_pos=positions, logit_positions=last)[:, -1]

    def logits(self, inputs: list[int], positions: list[int]) -> torch.Tensor:
        ids, at = self._tensors(inputs, positions)
        return self.model(ids, kv_cache=self.cache, input_pos=at)[:, -1]

    def _tensors(self, inputs: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(inputs, dtype=torch.long, device=self.device)[:, None],
                torch.tensor(positions, device=self.device)[:, None])


class NativeDecode(EagerDecode):
    state = "native"

    def __init__(self, model: WikiMiniModel, cache: KVCache, step: NativeStep) -> None:
        super().__init__(model, cache)
        self.native = step

    def prefill(self, windows: list[list[int]], start: int) -> torch.Tensor:
        """Each window in one native call (its tokens as rows of one cache row)."""
        return torch.stack([self.native.prefill(w, row).clone() for row, w in enumerate(windows, start)])

    def logits(self, inputs: list[int], positions: list[int]) -> torch.Tensor:
        return self.native(inputs, positions)

    def decode(self, inputs: list[int], positions: list[int], sampler: NativeSampler, seen: torch.Tensor,
               stop_tokens: list[int], budgets: list[int], max_position: int, steps: int) -> list[list[int]]:
        """Up to `steps` steps of every row, sampled in the same call (NativeStep.decode)."""
        return self.native.decode(inputs, positions, sampler, seen, stop_tokens, budgets, max_position, steps)


class CompiledDecode(EagerDecode):
    """A lone row's step through torch.compile over fixed shapes: its position is a tensor and
    attention reads the cache's whole capacity, masked, so one graph serves every position. A few
    fused C++ kernels replace hundreds of eager ops per token, and inductor's C++ wrapper keeps
    Python out of the step. Batches of rows stay eager: there the matmuls dominate, and the
    full-capacity attention measured slower than eager attention over the written span. Prefill
    stays eager too."""

    def __init__(self, model: WikiMiniModel, cache: KVCache) -> None:
        super().__init__(model, cache)
        # Inductor compiles in this process: its pool of compile worker processes, once started,
        # slowed every later decode step on a 2-core machine. The setting is process-wide, and
        # the pool starts at the first compile.
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1
        self._compiled: Callable | None = torch.compile(self._fixed_shape_forward, fullgraph=True, dynamic=False,
                                                        options={"cpp_wrapper": True})
        self.state = "ready"  # compiles at its first call, or in the background (server)

    def logits(self, inputs: list[int], positions: list[int]) -> torch.Tensor:
        if len(inputs) == 1 and self._compiled is not None:
            logits = self._compiled_logits(*self._tensors(inputs, positions))
            if logits is not None:
                return logits
        return super().logits(inputs, positions)

    def compile_in_background(self, rows: int) -> threading.Thread:
        """Decode eagerly at once, and switch to the compiled step when a thread has compiled it.

        The thread warms the step up on a scratch cache of the same shapes (the live cache is in
        use), so the graph it compiles is the one `logits` then calls with the live cache. `state`
        says "ready" or "failed" when it is done. The switch is one attribute assignment, seen by
        the next step."""
        compiled, self._compiled = self._compiled, None  # eager until it is ready
        self.state = "compiling"
        thread = threading.Thread(target=self._compile_thread, args=(compiled, rows), name="compile-decode-step",
                                  daemon=True)
        thread.start()
        return thread

    def _compile_thread(self, compiled: Callable, rows: int) -> None:
        # made outside inference mode, like the live cache: a guard tells the two kinds apart
        scratch = self.model.new_kv_cache(rows=rows, dtype=self.cache.keys[0].dtype)
        with torch.inference_mode():
            ids, positions = (torch.zeros(1, 1, dtype=torch.long, device=self.device) for _ in range(2))
            try:
                compiled(ids, positions, scratch)
            except Exception as exc:  # noqa: BLE001 - whatever the cause, eager decoding goes on
                self._warn_compile_failed(exc)
                self.state = "failed"
            else:
                self._compiled, self.state = compiled, "ready"

    def _compiled_logits(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The compiled step's logits, or None (and eager from then on) if it cannot compile:
        no C++ compiler, an op inductor does not support here, too many recompiles. Any other
        error (out of memory, a device assert) is raised: eager decoding would not fix it."""
        try:
            return self._compiled(ids, positions, self.cache)
        except compile_errors() as exc:
            self._warn_compile_failed(exc)
            self._compiled = None
            self.state = "failed"
            return None

    @staticmethod
    def _warn_compile_failed(exc: BaseException) -> None:
        reason = " ".join(str(exc).split())[:300]  # the cause is often on the message's second line
        warnings.warn(f"the compiled decode step is unavailable, decoding eagerly: {type(exc).__name__}: {reason}",
                      RuntimeWarning, stacklevel=3)

    def _fixed_shape_forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Row 0's last-position logits at `positions` (1, 1), attending over the cache's whole
        capacity: the shapes are the same at every position, so it compiles once."""
        return self.model(ids, kv_cache=cache, input_pos=positions, key_span=cache.capacity)[:, -1]


def choose_step(model: WikiMiniModel, cache: KVCache, decode: str = "auto") -> EagerDecode:
    """The decode step for `model` into `cache`, as `decode` (DECODE_CHOICES) asks: the one place
    that chooses. The choice and its reason go to the log."""
    if decode not in DECODE_CHOICES:
        raise ValueError(f"unknown decode step {decode!r}; choose from {', '.join(DECODE_CHOICES)}")
    why_not_native = f"{decode} asked for"
    if decode in ("auto", "compile"):
        why_not_native = native.supports(model, cache)
        step = native_step(model, cache) if why_not_native is None else None
        if step is not None:
            log.debug("decode step: native")
            return NativeDecode(model, cache, step)
        why_not_native = why_not_native or f"the native step is unavailable: {native.unavailable()}"
    if decode in ("compile", "compiled"):
        log.debug("decode step: compiled (%s)", why_not_native)
        return CompiledDecode(model, cache)
    log.debug("decode step: eager (%s)", why_not_native)
    return EagerDecode(model, cache)
