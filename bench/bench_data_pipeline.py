"""Benchmark: the tokenize+cache pipeline vs raw `Tokenizer.encode_batch` on the same text.

    python -m bench.bench_data_pipeline [--data ../shared/data/tinystories/train.txt]
        [--tokenizer DIR_OR_FILE] [--sizes_mb 25 100]

The data file is repeated to each size in a temp dir (never the repo). Each phase runs in its
own child process so peak RSS (getrusage ru_maxrss) is that phase's alone:

    raw       stories already in a list (reading not timed), encode_batch in chunks, results dropped
    raw_fast  the same with encode_batch_fast (no offsets), what the pipeline calls
    pipeline  load_or_build_token_cache into an empty cache dir: read, encode, write, reopen

Goal: pipeline >= 0.8x raw throughput, and pipeline RSS flat as the corpus grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from src.data.cache import STORIES_PER_CHUNK, load_or_build_token_cache
from src.data.sources import open_source
from src.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "tinystories" / "train.txt"
PHASES = ("raw", "raw_fast", "pipeline")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_phase(phase: str, data: Path, tokenizer_path: Path, work_dir: Path, chunk: int) -> dict:
    """Child-process body: time one phase and report tokens, seconds and peak RSS."""
    tokenizer = load_tokenizer(tokenizer_path)
    if phase == "pipeline":
        start = time.perf_counter()
        cache = load_or_build_token_cache(
            open_source(data), tokenizer, work_dir / "cache", show_progress=False, stories_per_chunk=chunk
        )
        seconds = time.perf_counter() - start
        n_tokens = cache.n_tokens - cache.n_stories  # without the EOS separators, as raw counts
    else:
        stories = list(open_source(data).stories())
        encode = tokenizer.encode_batch if phase == "raw" else tokenizer.encode_batch_fast
        start = time.perf_counter()
        n_tokens = 0
        for i in range(0, len(stories), chunk):
            n_tokens += sum(len(e.ids) for e in encode(stories[i : i + chunk], add_special_tokens=False))
        seconds = time.perf_counter() - start
    return {"phase": phase, "seconds": seconds, "n_tokens": n_tokens, "peak_rss_mb": peak_rss_mb()}


def repeat_to_size(data: Path, size_mb: float, out_dir: Path) -> Path:
    """Concatenate copies of `data` until the file holds at least size_mb MB."""
    target = out_dir / f"repeated_{size_mb:g}MB.txt"
    text = data.read_bytes()
    if not text.endswith(b"\n"):
        text += b"\n"
    copies = max(1, -(-int(size_mb * 1e6) // len(text)))
    with open(target, "wb") as f:
        for _ in range(copies):
            f.write(text)
    return target


def child(phase: str, data: Path, tokenizer_path: Path, work_dir: Path, chunk: int) -> dict:
    command = [sys.executable, "-m", "bench.bench_data_pipeline", "--phase", phase, "--data", str(data), "--tokenizer", str(tokenizer_path)]
    command += ["--work_dir", str(work_dir), "--stories_per_chunk", str(chunk)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a .txt in TinyStories format")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer dir or file (default: train vocab 4096 on --data)")
    parser.add_argument("--sizes_mb", "--sizes-mb", type=float, nargs="+", default=[25, 100])
    parser.add_argument("--stories_per_chunk", "--stories-per-chunk", type=int, default=STORIES_PER_CHUNK)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--work_dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        print(json.dumps(run_phase(args.phase, args.data, args.tokenizer, args.work_dir, args.stories_per_chunk)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        tokenizer_path = args.tokenizer
        if tokenizer_path is None:
            start = time.perf_counter()
            tokenizer = train_bpe_tokenizer(open_source(args.data).stories(), vocab_size=4096)
            tokenizer_path = save_tokenizer(tokenizer, tmp / "tokenizer")
            print(f"trained a vocab-4096 tokenizer on {args.data} in {time.perf_counter() - start:.1f}s")
        print(f"tokenizer {tokenizer_path}, {args.stories_per_chunk} stories per encode_batch call")
        print(f"{'corpus':>8} {'phase':>9} {'seconds':>8} {'MB/s':>6} {'vs raw':>7} {'peak RSS':>9} {'tokens':>11}")
        for size_mb in args.sizes_mb:
            data = repeat_to_size(args.data, size_mb, tmp)
            megabytes = data.stat().st_size / 1e6
            results = {}
            for phase in PHASES:
                results[phase] = child(phase, data, tokenizer_path, tmp / phase, args.stories_per_chunk)
                shutil.rmtree(tmp / phase, ignore_errors=True)
            for phase, r in results.items():
                speed = megabytes / r["seconds"]
                ratio = r["seconds"] and results["raw"]["seconds"] / r["seconds"]
                print(
                    f"{megabytes:6.1f}MB {phase:>9} {r['seconds']:8.2f} {speed:6.2f} {ratio:6.2f}x"
                    f" {r['peak_rss_mb']:7.0f}MB {r['n_tokens']:11,d}"
                )
            if len({r["n_tokens"] for r in results.values()}) != 1:
                print("  WARNING: token counts differ between phases")
            data.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
