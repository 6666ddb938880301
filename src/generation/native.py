"""The native decode step: `native_step.cpp`, built once per machine, called once per token.

An eager PyTorch decode step is about a thousand operator calls per token; on a small model
their dispatch costs far more than the arithmetic. The native step runs a whole token (every
row, every layer, the logits) in one call, on the model's own weights and the DecodeBatch's own
KV cache (prompts too, their tokens as rows of one cache row), so sampling and the cache's
bookkeeping stay in PyTorch.

The library is compiled with the system's C++ compiler for this CPU (`-march=native`, or
`-mcpu=native` on ARM; `WIKIMINI_NATIVE_ARCH` overrides, e.g. `-march=x86-64-v3` for the AVX2
kernel on an AVX512 machine), with OpenMP where the compiler has it. It is cached, keyed by the
source, the compiler, the flags and the CPU's flags, written to a temp file and renamed into
place, with its SHA-256 beside it: a damaged or foreign file is rebuilt, never loaded. Without a
compiler, or where the build fails, decoding stays eager with one warning. `WIKIMINI_NATIVE=0`
turns it off.

Which weights it takes: float32 (the same math as eager float32, so greedy decoding gives the
same tokens) or the int8 model of `src.model.quantize` (the same int8 weights and scales, with
each activation row quantized to 8 bits for integer dot products). bf16 weights decode eagerly.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import torch

from src.atomic_files import atomic_output, atomic_write_text
from src.device import cpu_flags
from src.model.kv_cache import KVCache
from src.model.quantize import Int8Linear
from src.model.rope import rope_cos_sin
from src.model.transformer_block import WikiMiniModel

SOURCE = Path(__file__).with_name("native_step.cpp")
MAX_HEAD_DIM = 256  # native_step.cpp's attention accumulates one head in a buffer of this size
COMMON_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c++17"]
BUILDING_NOTICE = "building the native decode step, once for this machine"


class Matrix(ctypes.Structure):
    _fields_ = [("f32", ctypes.c_void_p), ("q8", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("row_sum", ctypes.c_void_p), ("out", ctypes.c_int64), ("in_", ctypes.c_int64)]


class Layer(ctypes.Structure):
    _fields_ = [("attention_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("qkv", Matrix), ("out", Matrix), ("up", Matrix), ("down", Matrix),
                ("keys", ctypes.c_void_p), ("values", ctypes.c_void_p)]


class Sampling(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_float), ("top_p", ctypes.c_float), ("penalty", ctypes.c_float),
                ("top_k", ctypes.c_int32), ("rng", ctypes.c_uint64)]


class Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn",
                                                    "vocab", "capacity")] + [
        ("eps", ctypes.c_float), ("embedding", ctypes.c_void_p), ("norm", ctypes.c_void_p),
        ("rope_cos", ctypes.c_void_p), ("rope_sin", ctypes.c_void_p), ("output", Matrix),
        ("layers", ctypes.POINTER(Layer))]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wikimini" / "native"


def arch_flags() -> list[str]:
    """The target flags: `WIKIMINI_NATIVE_ARCH` if set, else this CPU's own instruction set."""
    if os.environ.get("WIKIMINI_NATIVE_ARCH"):
        return os.environ["WIKIMINI_NATIVE_ARCH"].split()
    return ["-mcpu=native"] if platform.machine().lower() in ("arm64", "aarch64") else ["-march=native"]


_libraries: dict[tuple[str, ...], ctypes.CDLL | str] = {}  # by arch flags: the library, or why there is none


def library() -> ctypes.CDLL | None:
    """The compiled step for `arch_flags()` (built on first use), or None with the reason in
    `unavailable()`."""
    arch = tuple(arch_flags())
    if arch not in _libraries:
        try:
            _libraries[arch] = _load(list(arch))
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            _libraries[arch] = " ".join(str(exc).split())[:300]
    found = _libraries[arch]
    return found if isinstance(found, ctypes.CDLL) else None


def unavailable() -> str | None:
    found = _libraries.get(tuple(arch_flags()))
    return found if isinstance(found, str) else None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(compiler: str, arch: list[str], path: Path) -> None:
    """Compile into `path` (atomically), with OpenMP, or without it where the compiler has none
    (Apple's clang), and write the file's digest beside it."""
    print(f"{BUILDING_NOTICE} ({path.name})", file=sys.stderr, flush=True)
    failures = []
    for openmp in (["-fopenmp"], []):
        try:
            with atomic_output(path) as tmp:
                result = subprocess.run([compiler, *COMMON_FLAGS, *arch, *openmp, str(SOURCE), "-o", str(tmp)],
                                        capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise RuntimeError(result.stderr.strip()[-300:])
                digest = _digest(tmp)
        except RuntimeError as exc:
            failures.append(str(exc))
            continue
        atomic_write_text(path.with_name(path.name + ".sha256"), digest)
        return
    raise RuntimeError(f"{compiler} failed: {failures[0]}")


def _intact(path: Path) -> bool:
    """Whether `path` is the file this machine built: present, with the digest written beside it."""
    digest_file = path.with_name(path.name + ".sha256")
    try:
        return path.is_file() and digest_file.read_text().strip() == _digest(path)
    except OSError:
        return False


def _load(arch: list[str]) -> ctypes.CDLL:
    if os.environ.get("WIKIMINI_NATIVE", "1") == "0":
        raise RuntimeError("turned off by WIKIMINI_NATIVE=0")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(COMMON_FLAGS + arch),
                                    cpu_flags() or platform.processor()]).encode()).hexdigest()
    path = cache_dir() / f"native_step-{key[:16]}.so"
    if not _intact(path):  # not built yet, or damaged (cut short, overwritten): build it anew
        _build(compiler, arch, path)
    lib = ctypes.CDLL(str(path))
    int64s = ctypes.POINTER(ctypes.c_int64)
    lib.native_decode_step.argtypes = [ctypes.POINTER(Model), ctypes.c_int64, int64s, int64s, int64s, ctypes.c_int64,
                                       ctypes.c_void_p, ctypes.c_int]
    lib.native_decode_step.restype = ctypes.c_int
    lib.native_kernel.restype = ctypes.c_char_p
    lib.native_matmul.argtypes = [ctypes.POINTER(Matrix), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int]
    lib.native_matmul.restype = None
    lib.native_sample.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.POINTER(Sampling), int64s]
    lib.native_sample.restype = None
    lib.native_decode_steps.argtypes = [ctypes.POINTER(Model), ctypes.c_int64, int64s, int64s, ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.POINTER(Sampling), int64s, int64s, ctypes.c_int64,
                                        ctypes.c_int64, int64s, ctypes.c_int]
    lib.native_decode_steps.restype = ctypes.c_int64
    return lib


def kernel(lib: ctypes.CDLL) -> str:
    """The int8 kernel a build compiled: avx512-vnni, avx-vnni, avx2, neon-dotprod, neon or scalar."""
    return lib.native_kernel().decode()


def supports(model: WikiMiniModel, cache: KVCache) -> str | None:
    """Why the native step cannot decode this model into this cache, or None when it can."""
    weight = model.tok_embeddings.weight
    if weight.device.type != "cpu":
        return "it runs on CPU only"
    if cache.keys[0].dtype != torch.float32 or not all(t.is_contiguous() for t in (*cache.keys, *cache.values)):
        return "it needs a contiguous float32 KV cache"
    if model.config.head_dim > MAX_HEAD_DIM:
        return f"its head size is at most {MAX_HEAD_DIM}"
    matrices = [model.output] + [m for block in model.layers for m in (
        block.attention.qkv_proj, block.attention.out_proj, block.feed_forward.gate_up_proj, block.feed_forward.down_proj)]
    for matrix in matrices:
        if isinstance(matrix, Int8Linear):
            continue
        if not isinstance(matrix, torch.nn.Linear) or matrix.bias is not None:
            return f"it takes bias-free linear layers, not {type(matrix).__name__}"
        if matrix.weight.dtype != torch.float32:
            return f"it takes float32 or int8 weights, not {matrix.weight.dtype}"
    return None


class PackedWeights:
    """A model's weights as the native step reads them: pointers, with float32 copies where the
    model holds bf16 (norms, scales, embeddings) and each int8 row's sum. Made once per model
    (`packed_weights`) and shared by every DecodeBatch over it; float32 weights are not copied,
    so the step always reads the model's current values."""

    def __init__(self, model: WikiMiniModel) -> None:
        self._keep: list[torch.Tensor] = []  # every tensor a pointer refers to, kept alive here
        self.matrix_bytes = 0  # what one step reads of the linear layers' weights
        config = model.config
        self.layers = [
            (self._f32(block.attention_norm.weight), self._f32(block.ffn_norm.weight),
             self._f32(block.attention.q_norm.weight) if config.qk_norm else None,
             self._f32(block.attention.k_norm.weight) if config.qk_norm else None,
             self._matrix(block.attention.qkv_proj), self._matrix(block.attention.out_proj),
             self._matrix(block.feed_forward.gate_up_proj), self._matrix(block.feed_forward.down_proj))
            for block in model.layers]
        self.embedding, self.norm = self._f32(model.tok_embeddings.weight), self._f32(model.norm.weight)
        self.output = self._matrix(model.output)

    def _ptr(self, tensor: torch.Tensor) -> int:
        if not tensor.is_contiguous():
            raise ValueError("the native step needs contiguous tensors")
        self._keep.append(tensor)
        return tensor.data_ptr()

    def _f32(self, tensor: torch.Tensor) -> int:
        return self._ptr(tensor.detach().float().contiguous())

    def _matrix(self, linear: torch.nn.Module) -> Matrix:
        if isinstance(linear, Int8Linear):
            q8 = linear.weight_int8
            self.matrix_bytes += q8.numel()
            return Matrix(None, self._ptr(q8), self._f32(linear.scales), self._ptr(q8.sum(1, dtype=torch.int32)),
                          q8.shape[0], q8.shape[1])
        weight = linear.weight.detach()
        self.matrix_bytes += 4 * weight.numel()
        return Matrix(self._f32(weight), None, None, None, weight.shape[0], weight.shape[1])


_packed: weakref.WeakKeyDictionary[WikiMiniModel, PackedWeights] = weakref.WeakKeyDictionary()


def packed_weights(model: WikiMiniModel) -> PackedWeights:
    if model not in _packed:
        _packed[model] = PackedWeights(model)
    return _packed[model]


BYTES_PER_THREAD = 4 << 20  # a call's weight bytes read (times its rows) that pay for one more thread


class NativeStep:
    """`step(tokens, positions)` -> logits (rows, V) float32, the new keys/values written into
    `cache` rows 0..rows-1 at `positions`: what `model(ids, kv_cache=cache, input_pos=...)` does
    for one token per row.

    A call uses up to `torch.get_num_threads()` threads, one per BYTES_PER_THREAD of work: a lone
    story on a model of a few MB runs on one, since a second costs more in hand-offs than it
    saves, and waits on a busy core whenever another process (a training run) holds it."""

    def __init__(self, lib: ctypes.CDLL, model: WikiMiniModel, cache: KVCache) -> None:
        config = model.config
        weights = packed_weights(model)
        self._lib = lib
        cos, sin = rope_cos_sin(config.head_dim, cache.capacity, config.rope_theta)
        self._keep = [weights, cos, sin, cache]  # what the pointers below point into
        layers = (Layer * config.n_layers)()
        for i, fields in enumerate(weights.layers):
            layers[i] = Layer(*fields, cache.keys[i].data_ptr(), cache.values[i].data_ptr())
        self._layers = layers
        self.model = model
        self._spec = Model(config.d_model, config.n_layers, config.n_heads, config.kv_heads, config.head_dim,
                           config.ffn_dim, config.vocab_size, cache.capacity, config.norm_eps, weights.embedding,
                           weights.norm, cos.data_ptr(), sin.data_ptr(), weights.output, layers)
        self.vocab_size = config.vocab_size
        self.cache = cache
        self.weight_bytes = weights.matrix_bytes
        self._logits: torch.Tensor | None = None

    def threads(self, rows: int) -> int:
        """Threads for a call over `rows` tokens."""
        return max(1, min(torch.get_num_threads(), rows * self.weight_bytes // BYTES_PER_THREAD))

    def __call__(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Logits (rows, V) for one token per row, row i's token at position positions[i] (below
        the cache's capacity) of cache row i. The tensor is reused: valid until the next call."""
        return self._run(tokens, positions, None, 0)

    def decode(self, inputs: list[int], positions: list[int], sampler: NativeSampler, seen: torch.Tensor,
               stop_tokens: list[int], budgets: list[int], max_position: int, steps: int) -> list[list[int]]:
        """Up to `steps` steps of every row, sampled in the same call by `sampler`'s bound rows
        with `seen` (rows, V) bool as the penalty's memory (updated): each step's tokens, one per
        row. Stops after the step where a row drew its stop token (-1: none) or spent its budget,
        and before a row's position would reach `max_position`."""
        rows = len(inputs)
        if self._logits is None or self._logits.shape[0] < rows:
            self._logits = torch.empty(rows, self.vocab_size, dtype=torch.float32)
        int64s = ctypes.c_int64 * rows
        out = (ctypes.c_int64 * (rows * steps))()
        taken = self._lib.native_decode_steps(
            ctypes.byref(self._spec), rows, int64s(*inputs), int64s(*positions), self._logits.data_ptr(),
            seen.data_ptr(), sampler.rows, int64s(*stop_tokens), int64s(*budgets), max_position, steps, out,
            self.threads(rows))
        if taken < 0:
            raise ValueError(f"native decode step: a token id or position is out of range ({inputs}, {positions})")
        return [out[s * rows:(s + 1) * rows] for s in range(taken)]

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor:
        """Write a prompt's keys/values at positions 0.. of cache `row`, in one call (its tokens as
        rows of that cache row); return the logits after its last token (V,), a reused tensor."""
        return self._run(tokens, list(range(len(tokens))), [row] * len(tokens), len(tokens) - 1)[0]

    def _run(self, tokens: list[int], positions: list[int], cache_rows: list[int] | None,
             logits_from: int) -> torch.Tensor:
        rows = len(tokens)
        out = rows - logits_from
        if self._logits is None or self._logits.shape[0] < out:
            self._logits = torch.empty(out, self.vocab_size, dtype=torch.float32)
        logits = self._logits[:out]
        status = self._lib.native_decode_step(ctypes.byref(self._spec), rows, (ctypes.c_int64 * rows)(*tokens),
                                              (ctypes.c_int64 * rows)(*positions),
                                              None if cache_rows is None else (ctypes.c_int64 * rows)(*cache_rows),
                                              logits_from, logits.data_ptr(), self.threads(rows))
        if status != 0:
            raise ValueError(f"native decode step: a token id or position is out of range ({tokens}, {positions})")
        return logits


def native_step(model: WikiMiniModel, cache: KVCache) -> NativeStep | None:
    """A native step over `model` and `cache`, or None (eager decoding) with one warning when
    the library cannot be built; None without a warning for a model it does not take."""
    if supports(model, cache) is not None:
        return None
    lib = library()
    if lib is None:
        if not getattr(native_step, "warned", False):
            native_step.warned = True
            warnings.warn(f"the native decode step is unavailable, decoding eagerly: {unavailable()}",
                          RuntimeWarning, stacklevel=2)
        return None
    return NativeStep(lib, model, cache)


def rng_state(seed: int) -> int:
    """A request's native generator state from its seed (splitmix64 takes any 64-bit value)."""
    return seed % 2**64


class NativeSampler:
    """Draws each row's next token in C++ (`native_sample`): src/generation/sampling.py's
    semantics, without its dozen tensor ops per token. Each request carries its generator state
    (`Request.rng_state`); while it is bound to a row the state lives here, and it goes back to
    the request when the rows change (`bind`), so a seeded request draws the same numbers alone
    or in any batch."""

    def __init__(self, lib: ctypes.CDLL, slots: int) -> None:
        self._lib = lib
        self.rows = (Sampling * slots)()
        self._bound: list = []  # the requests of rows 0.., in the order they were bound

    def bind(self, requests: list) -> None:
        """Rows 0.. now sample for `requests` (after rows joined, left or moved)."""
        self.release()
        for row, request in enumerate(requests):
            self.rows[row] = self._settings(request)
        self._bound = list(requests)

    @staticmethod
    def _settings(request) -> Sampling:
        params = request.params
        return Sampling(params.temperature, params.top_p, params.repetition_penalty, params.top_k, request.rng_state)

    def release(self) -> None:
        """Give each bound request its current generator state."""
        for row, request in enumerate(self._bound):
            request.rng_state = self.rows[row].rng
        self._bound = []

    def sample(self, logits: torch.Tensor, seen: torch.Tensor, requests: list | None = None) -> list[int]:
        """One token per row from logits (n, V) for the bound rows, or for `requests` (not bound:
        rows that have just joined); `seen` (n, V) bool is the penalty's memory, updated."""
        n, vocab = logits.shape
        rows = self.rows
        if requests is not None:
            rows = (Sampling * n)(*map(self._settings, requests))
        logits = logits.float().contiguous()
        out = (ctypes.c_int64 * n)()
        self._lib.native_sample(n, vocab, logits.data_ptr(), seen.data_ptr(), rows, out)
        for row, request in enumerate(requests or ()):
            request.rng_state = rows[row].rng
        return list(out)


def native_sampler(device: torch.device, slots: int) -> NativeSampler | None:
    """The native sampler for a batch on `device`, or None (PyTorch sampling): on CPU wherever
    the library builds."""
    if device.type != "cpu":
        return None
    lib = library()
    return NativeSampler(lib, slots) if lib is not None else None
