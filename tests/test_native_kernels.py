"""The native step's int8 kernels, one build per instruction set this machine can run, each held
against the plain loop and against PyTorch on the same int8 weights; ARM builds under qemu-user;
a damaged cached library is rebuilt, never loaded."""

from __future__ import annotations

import copy
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.device import cpu_flags
from src.generation import Generator, SamplingParams, native
from src.model import WikiMiniModel
from src.model.quantize import quantize_int8, quantize_rows
from tests.conftest import REPO_ROOT, native_library_or_skip, tiny_model_config

# kernel name: (target flags, the /proc/cpuinfo flags a CPU needs to run that build)
X86_BUILDS = {
    "avx512-vnni": ("-march=x86-64-v4 -mavx512vnni", {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
    "avx-vnni": ("-march=x86-64-v3 -mavxvnni", {"avx2", "fma", "bmi2", "avx_vnni"}),
    "avx2": ("-march=x86-64-v3", {"avx2", "fma", "bmi2", "f16c", "movbe"}),
    "scalar": ("-march=x86-64", set()),
}
ARM_BUILDS = {"neon-dotprod": "-march=armv8.2-a+dotprod", "neon": "-march=armv8-a"}
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def runnable_builds() -> list:
    flags = set(cpu_flags().split())
    return [pytest.param(name, arch, id=name, marks=pytest.mark.skipif(
        not IS_X86 or not needs <= flags, reason=f"needs an x86 CPU with {', '.join(sorted(needs)) or 'x86-64'} for the {name} kernel "
        "(the ARM kernels are checked under qemu)"))
        for name, (arch, needs) in X86_BUILDS.items()]


@pytest.fixture()
def build(monkeypatch):
    """Select a build by its target flags (compiled once per flags into the user's cache)."""
    def select(arch: str):
        monkeypatch.setenv("WIKIMINI_NATIVE_ARCH", arch)
        return native_library_or_skip()
    return select


def native_matmul(lib, linear: torch.Tensor | tuple, x: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """y = x @ w^T through the build's matmul: `linear` is a float32 weight or (int8, scales)."""
    keep = []

    def ptr(t):
        keep.append(t)
        return t.data_ptr()
    if isinstance(linear, tuple):
        q8, scales = linear
        matrix = native.Matrix(None, ptr(q8), ptr(scales), ptr(q8.sum(1, dtype=torch.int32)), *q8.shape)
    else:
        matrix = native.Matrix(ptr(linear), None, None, None, *linear.shape)
    y = torch.empty(x.shape[0], matrix.out, dtype=torch.float32)
    lib.native_matmul(matrix, x.shape[0], x.data_ptr(), y.data_ptr(), threads)
    return y


def int8_reference(q8: torch.Tensor, scales: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The int8 matmul in PyTorch: activations rounded half away from zero to [-127, 127] per row,
    integer dot products, then the two scales, in native_step.cpp's order."""
    amax = x.abs().amax(1)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    v = x * (1.0 / s)[:, None]
    q = torch.where(v >= 0, v + 0.5, v - 0.5).trunc()
    dots = (q.double() @ q8.double().T).float()
    return dots * scales[None, :] * s[:, None]


@pytest.mark.parametrize("name,arch", runnable_builds())
def test_each_int8_kernel_equals_pytorch_and_the_plain_loop_exactly(build, name, arch):
    torch.manual_seed(0)
    scalar = build(X86_BUILDS["scalar"][0])
    lib = build(arch)
    assert native.kernel(lib) == name
    # sizes that leave every kernel a tail (in: not a multiple of 16/32/64; out: of 4)
    for out, in_, rows in ((37, 200, 1), (64, 192, 3), (5, 17, 2)):
        weight = torch.randn(out, in_)
        q8, scales = quantize_rows(weight)
        x = torch.randn(rows, in_) * 3
        x[0, 0] = 0.0
        got = native_matmul(lib, (q8, scales), x)
        assert torch.equal(got, int8_reference(q8, scales, x))
        assert torch.equal(got, native_matmul(scalar, (q8, scales), x))
        assert torch.equal(got, native_matmul(lib, (q8, scales), x, threads=3))  # blocks split over threads
        torch.testing.assert_close(native_matmul(lib, weight, x), x @ weight.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,arch", runnable_builds())
def test_each_build_decodes_eager_tokens_in_float32_and_scalar_logits_in_int8(build, tokenizer, name, arch):
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32, n_kv_heads=2, qk_norm=True)).eval()
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40, stop_at_eos=False)
    build(arch)
    fast = Generator(model, tokenizer).generate("Once upon a time", params).token_ids
    assert fast == Generator(model, tokenizer, decode="eager").generate("Once upon a time", params).token_ids

    int8 = quantize_int8(copy.deepcopy(model), torch.float32)
    logits = {}
    for variant in (X86_BUILDS["scalar"][0], arch):
        build(variant)
        cache = int8.new_kv_cache(rows=1, dtype=torch.float32)
        step = native.native_step(int8, cache)
        logits[variant] = step.prefill([3, 14, 15, 92, 65, 35], row=0).clone()
    torch.testing.assert_close(logits[arch], logits[X86_BUILDS["scalar"][0]], rtol=1e-5, atol=1e-5)


def kernel_check(compile_cmd: list[str], run_prefix: list[str], out: Path) -> dict[str, list[float] | str]:
    """Build and run tests/native/kernel_check.cpp: its kernel's name and its two logit rows."""
    subprocess.run([*compile_cmd, "-O2", "-std=c++17", str(REPO_ROOT / "tests/native/kernel_check.cpp"), "-o",
                    str(out)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([*run_prefix, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return {"kernel": lines["kernel"], **{k: [float(v) for v in lines[k].split()] for k in ("float32", "int8")}}


ARM_TOOLS = "needs Debian's g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user)"


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")), reason=ARM_TOOLS)
@pytest.mark.skipif(not shutil.which("c++"), reason="needs a C++ compiler")
def test_arm_builds_compile_and_decode_as_this_machine_does_under_qemu(tmp_path):
    host = kernel_check(["c++"], [], tmp_path / "host")
    for name, arch in ARM_BUILDS.items():
        library = subprocess.run(["aarch64-linux-gnu-g++", *native.COMMON_FLAGS, arch, "-fopenmp",
                                  str(native.SOURCE), "-o", str(tmp_path / f"{name}.so")], capture_output=True,
                                 text=True, timeout=300)
        assert library.returncode == 0, library.stderr
        arm = kernel_check(["aarch64-linux-gnu-g++", "-static", arch], ["qemu-aarch64", "-cpu", "max"],
                           tmp_path / name)
        assert arm["kernel"] == name
        for kind in ("float32", "int8"):
            torch.testing.assert_close(torch.tensor(arm[kind]), torch.tensor(host[kind]), rtol=1e-4, atol=1e-5)


def load_in_child(cache: Path) -> subprocess.CompletedProcess:
    code = "from src.generation import native; lib = native.library(); print(lib and native.kernel(lib))"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("WIKIMINI_NATIVE_ARCH", None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not shutil.which("c++"), reason="needs a C++ compiler")
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path):
    first = load_in_child(tmp_path)
    assert first.returncode == 0 and first.stdout.strip() not in ("", "None"), first.stderr
    assert native.BUILDING_NOTICE in first.stderr
    (library,) = (tmp_path / "wikimini" / "native").glob("*.so")
    intact = library.read_bytes()
    again = load_in_child(tmp_path)
    assert again.returncode == 0 and native.BUILDING_NOTICE not in again.stderr  # built once for this machine
    damages = {"truncated": intact[:len(intact) // 2], "zeroed": bytes(len(intact)),
               "junk": os.urandom(len(intact))}
    for damage, content in damages.items():  # each is seen as damaged...
        library.write_bytes(content)
        assert not native._intact(library), damage
    loaded = load_in_child(tmp_path)  # ...and a damaged library is built again, not loaded
    assert loaded.returncode == 0, loaded.stderr[-500:]
    assert loaded.stdout.strip() == first.stdout.strip()
    assert native.BUILDING_NOTICE in loaded.stderr and native._intact(library)


@pytest.mark.parametrize("decode, builds", [("auto", True), ("eager", False)])
def test_the_generator_builds_the_native_step_before_any_story_is_timed(monkeypatch, tokenizer, decode, builds):
    """A first build on a machine takes seconds: it happens when the Generator is made, so a
    story's tokens/s never counts it."""
    calls = []
    monkeypatch.setattr(native, "library", lambda: calls.append(decode))
    Generator(WikiMiniModel(tiny_model_config()).eval(), tokenizer, decode=decode)
    assert bool(calls) is builds


def test_a_call_takes_a_thread_per_bytes_per_thread_of_weights_and_the_threads_agree(monkeypatch, tokenizer):
    """A lone story on a small model runs on one thread (a second waits on a core that another
    process may hold); more rows or bigger weights take more, up to torch's count; and a step
    split over threads gives the tokens one thread gives."""
    native_library_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    int8 = quantize_int8(copy.deepcopy(model), torch.float32)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    float_step = native.native_step(model, model.new_kv_cache(rows=1, dtype=torch.float32))
    int8_step = native.native_step(int8, int8.new_kv_cache(rows=1, dtype=torch.float32))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert float_step.weight_bytes == 4 * sum(m.weight.numel() for m in linears)
    assert int8_step.weight_bytes == sum(m.weight.numel() for m in linears)
    assert float_step.threads(1) == int8_step.threads(1) == 1
    rows_for_two = -(-2 * native.BYTES_PER_THREAD // int8_step.weight_bytes)
    assert int8_step.threads(rows_for_two - 1) == 1 and int8_step.threads(rows_for_two) == 2
    assert int8_step.threads(100 * rows_for_two) == 2  # never more than torch's threads

    params = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=24, stop_at_eos=False, seed=5)
    one = Generator(int8, tokenizer).generate("Once upon a time", params).token_ids
    monkeypatch.setattr(native, "BYTES_PER_THREAD", 1)
    assert Generator(int8, tokenizer).generate("Once upon a time", params).token_ids == one
