#!/usr/bin/env python3
"""Batch-1 decoding: `generate.py`'s default path against llama.cpp, same weights, equal threads.

For each model (the bundled demo model; the 24.5M reference shapes with random weights and the
10K tokenizer) and each thread count, one run measures:

- ours: the Generator exactly as `generate.py` builds it with no flag (`load_for_inference`,
  precision auto, the default decode path: the native step), greedy, --new-tokens tokens, EOS
  ignored; then the PyTorch step compiled, the path where the native step cannot run (its
  one-off compile reported as compile_s, not in the rate);
- llama.cpp (llama-cpp-python): our GGUF export (`convert_hf.py gguf`, q8_0 and f32), the same
  prompt, a greedy loop of `Llama.eval` calls from Python, like ours;
- llama-bench: llama.cpp's own text-generation figure (`-p 0 -n N`, C++ only), when the binary
  is on PATH or given with --llama-bench.

Each figure is the best of --repeats runs after one warm-up, as tokens/s over the whole call
(prompt included). Columns whose engine is absent say why. Prints a Markdown table and JSON.

    python -m bench.bench_decode                      # demo + reference, 1 and 2 threads
    python -m bench.bench_decode --models demo --threads 1 --new-tokens 200
    python -m bench.bench_decode --profile             # where a token's time goes (torch profiler)
    python -m bench.bench_decode --native-arch=-march=x86-64-v3 --llama-bench build-avx2/bin/llama-bench
                                                       # the AVX2 kernels of both, on an AVX512 machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


from src.data.tokenizer import load_tokenizer
from src.device import cpu_summary
from src.generation import Generator, SamplingParams
from src.model import ModelConfig, WikiMiniModel
from src.model.checkpoint import DEMO_CHECKPOINT, load_for_inference, save_checkpoint
from src.model.gguf_export import export_gguf

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time there was a little girl named Lily. She"
GGUF_TYPES = ("q8_0", "f32")


def reference_checkpoint(work: Path) -> Path:
    """The reference shapes (24.5M) with random weights: speed does not depend on training."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(REPO_ROOT / "tokenizer" / "tinystories20k_10k")
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size())
    return save_checkpoint(work / "reference.pth", WikiMiniModel(config).eval(), tokenizer)


def best_rate(run, repeats: int) -> float:
    """Tokens/s of the fastest of `repeats` runs, after one warm-up run."""
    run()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run()
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def ours(checkpoint: Path, threads: int, new_tokens: int, repeats: int, compiled: bool) -> tuple[float, str, float]:
    """(tokens/s, precision, seconds of the first story: the compile when `compiled`)."""
    torch.set_num_threads(threads)
    loaded = load_for_inference(checkpoint, announce=False)
    generator = Generator.from_loaded(loaded, decode="compiled" if compiled else "auto")  # compiled: where native cannot run
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens, stop_at_eos=False)
    start = time.perf_counter()
    generator.generate(PROMPT, params)
    first_s = time.perf_counter() - start
    return best_rate(lambda: len(generator.generate(PROMPT, params).token_ids), repeats), loaded.precision, first_s


def profile_default_path(checkpoint: Path, threads: int, new_tokens: int, compiled: bool) -> None:
    """Print where our decode time goes: the torch profiler over one greedy story, by op."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    generator = Generator.from_loaded(load_for_inference(checkpoint, announce=False),
                                      decode="compiled" if compiled else "auto")
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens, stop_at_eos=False)
    generator.generate(PROMPT, params)  # warm-up (and compile)
    start = time.perf_counter()
    generator.generate(PROMPT, params)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generator.generate(PROMPT, params)
    events = prof.key_averages()
    ops = [e for e in events if e.key.startswith("aten::")]
    total_us = sum(e.self_cpu_time_total for e in events)
    matmul_us = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::mv"))
    calls = sum(e.count for e in ops)
    print(f"\nProfile of {'ours --compile' if compiled else 'ours (default path)'}, {threads} thread(s), "
          f"{new_tokens} tokens: {1e3 * wall / new_tokens:.2f} ms/token unprofiled; under the profiler "
          f"{calls / new_tokens:.0f} aten calls/token, matmuls {100 * matmul_us / max(total_us, 1):.0f}% of self CPU time\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def llama_cpp_rate(gguf: Path, threads: int, new_tokens: int, repeats: int, prompt_ids: list[int]) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=new_tokens + len(prompt_ids) + 8, n_threads=threads,
                          n_threads_batch=threads, verbose=False, seed=0)

    def run() -> int:
        llm.reset()
        llm.eval(prompt_ids)
        for _ in range(new_tokens):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        return new_tokens

    return best_rate(run, repeats)


LLAMA_BUILD: dict[str, str] = {}  # what llama-bench reports of its build, for the table's header


def llama_bench_rate(binary: str, gguf: Path, threads: int, new_tokens: int, repeats: int) -> float:
    out = subprocess.run([binary, "-m", str(gguf), "-p", "0", "-n", str(new_tokens), "-t", str(threads),
                          "-r", str(repeats), "-o", "json"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)[0]
    LLAMA_BUILD.update({key: str(result.get(key)) for key in ("build_commit", "backends", "cpu_info")})
    return float(result["avg_ts"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("demo", "reference"), default=["demo", "reference"])
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="the 'demo' model (default: bundled)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true", help="leave out ours with --compile")
    parser.add_argument("--profile", action="store_true", help="profile our decoding on the demo model and exit")
    parser.add_argument("--llama-bench", default=shutil.which("llama-bench"), help="llama-bench binary")
    parser.add_argument("--native-arch", help="target flags for our native step (WIKIMINI_NATIVE_ARCH), e.g. "
                        "-march=x86-64-v3 for its AVX2 kernel; give llama-bench a build of the same features")
    args = parser.parse_args()
    if args.llama_bench and not (os.path.isfile(args.llama_bench) and os.access(args.llama_bench, os.X_OK)):
        parser.error(f"--llama-bench: {args.llama_bench} is not an executable file")
    if args.native_arch:
        os.environ["WIKIMINI_NATIVE_ARCH"] = args.native_arch
    if args.profile:
        for compiled in (False, True):
            profile_default_path(Path(args.checkpoint), args.threads[0], args.new_tokens, compiled)
        return 0

    try:
        import llama_cpp  # noqa: F401
        llama_cpp_missing = None
    except ImportError:
        llama_cpp_missing = "llama_cpp not importable (pip install llama-cpp-python)"
    llama_bench_missing = None if args.llama_bench else "llama-bench not on PATH (build llama.cpp, or --llama-bench)"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            checkpoint = Path(args.checkpoint) if name == "demo" else reference_checkpoint(work)
            ggufs = {kind: export_gguf(checkpoint, work / f"{name}-{kind}.gguf", kind) for kind in GGUF_TYPES}
            loaded = load_for_inference(checkpoint, precision="fp32", announce=False)
            generator = Generator.from_loaded(loaded)
            prompt_ids = generator.story_prefix + generator.encode_prompt(PROMPT)
            for threads in args.threads:
                row = {"model": name, "params": loaded.model.num_parameters(), "threads": threads}
                row["ours"], row["ours_precision"], _ = ours(checkpoint, threads, args.new_tokens, args.repeats, False)
                if not args.skip_compile:
                    row["ours_compiled"], _, row["compile_s"] = ours(checkpoint, threads, args.new_tokens,
                                                                     args.repeats, True)
                for kind in GGUF_TYPES:
                    if llama_cpp_missing is None:
                        row[f"llama_cpp_{kind}"] = llama_cpp_rate(ggufs[kind], threads, args.new_tokens, args.repeats,
                                                                  prompt_ids)
                    if llama_bench_missing is None:
                        row[f"llama_bench_{kind}"] = llama_bench_rate(args.llama_bench, ggufs[kind], threads,
                                                                      args.new_tokens, args.repeats)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"\nBatch-1 greedy decoding, {args.new_tokens} new tokens, best of {args.repeats}; torch {torch.__version__}"
          f"\n{cpu_summary()}")
    if LLAMA_BUILD:
        print(f"llama-bench: {args.llama_bench} ({', '.join(f'{k} {v}' for k, v in LLAMA_BUILD.items())})")
    print()
    for reason in filter(None, (llama_cpp_missing, llama_bench_missing)):
        print(f"skipped: {reason}")
    columns = [("ours", "ours tok/s"), ("ours_compiled", "ours --compile tok/s")]
    for kind in GGUF_TYPES:
        columns += [(f"llama_cpp_{kind}", f"llama-cpp-python {kind}"), (f"llama_bench_{kind}", f"llama-bench {kind}")]
    columns = [(key, title) for key, title in columns if any(key in r for r in rows)]
    ratio_keys = [key for key, _ in columns if not key.startswith("ours")]
    header = (["model", "params", "threads", "ours precision"] + [t for _, t in columns]
              + [f"ours / {t}" for k, t in columns if k in ratio_keys]
              + [f"ours --compile / {t}" for k, t in columns if k in ratio_keys and not args.skip_compile])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], f"{r['params'] / 1e6:.2f}M", str(r["threads"]), r["ours_precision"]]
        cells += [f"{r[key]:,.0f}" for key, _ in columns]
        cells += [f"{r['ours'] / r[key]:.2f}x" for key in ratio_keys]
        cells += [f"{r['ours_compiled'] / r[key]:.2f}x" for key in ratio_keys if "ours_compiled" in r]
        print("| " + " | ".join(cells) + " |")
    print("\n" + json.dumps({"new_tokens": args.new_tokens, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
