#!/usr/bin/env python3
"""Training recipes at equal wall-clock time: which one turns the same minutes into the best model.

Each named recipe in bench/recipes.yaml (a base config plus `--set` overrides) trains with
`train.py` for the same `training.max_minutes`, so its warmup and decay span exactly the
budget (the first, compiling step is left out of the clock and reported). Then its final
model is scored on every window of the validation text (`training.eval_batches=null`: the
trainer's validation is the evaluator's `sum_nats`). One table compares them:

    recipe | seeds | params | embedding | steps | tokens/s | bits/byte (mean ± half range) | vs the first row | best along the way
           | articles / 100 words | grammar (of 10) | EOS share

With `--seeds 1337,1` each recipe runs once per seed (`training.seed`) and the table gives the
mean and half the range. After each run the final model writes 5 prompts x 3 seeded stories
(balanced preset, 300 tokens at most), scored for articles, grammar and EOS by the evaluators'
own functions (`src.evaluation`).

Runs are appended to `<out-dir>/results.jsonl` as they finish, so a long queue can be
stopped and continued; a recipe that already has a result for the same budget is not rerun
unless `--rerun`. A run that was stopped (SIGTERM, the end of a session) saved its latest
checkpoint: the next invocation resumes it (`--resume auto`) rather than starting again, so a
3-hour budget can span several sittings; `--rerun` starts it from scratch. `--eval-interval N`
also scores every window every N steps, for a curve of bits per byte against CPU minutes
(`python -m bench.plot_runs`). `--cpus 1 --threads 1` pins each run to one core (e.g. to leave
the other one free); every recipe in a comparison should run under the same setting.

    python -m bench.bench_recipe --minutes 15 --recipes baseline,muon_lr4e-3
    python -m bench.bench_recipe --minutes 15 --cpus 1 --threads 1      # every recipe, one core
    python -m bench.bench_recipe --table-only                          # print what has been run
    python -m bench.bench_recipe --minutes 6 --recipes vocab1k,vocab4k --seeds 1337,1 --cpus 0 --threads 1
    python -m bench.bench_recipe --minutes 180 --recipes r3_12m_drop --eval-interval 400   # resumable
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

RUN_SETTINGS = [  # the protocol: same for every recipe
    "training.max_steps=null",
    "training.eval_batches=null",  # validation over every window of the validation text
    "training.save_interval=200",  # what a stopped run resumes from
    "training.early_stopping_patience=null",
    "training.keep_best=1",
    "logging.plot=false",
    "logging.progress_bar=false",
    "logging.log_interval=25",
]


def load_recipes(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not isinstance(spec.get("recipes"), dict):
        raise SystemExit(f"{path}: expected 'base', 'common' and a 'recipes' mapping")
    return spec


def overrides_of(spec: dict, name: str) -> list[str]:
    """A recipe's --set overrides: a list, or {from: [recipes whose overrides come first], set: [...]}."""
    recipe = spec["recipes"][name] or []
    if isinstance(recipe, dict):
        inherited = [item for parent in recipe.get("from") or [] for item in overrides_of(spec, parent)]
        return inherited + list(recipe.get("set") or [])
    return list(recipe)


def read_metrics(path: Path) -> tuple[dict, dict, dict]:
    """(last training record, last validation record, best validation record) of a run's metrics.jsonl."""
    train, val, best = {}, {}, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "train_loss" in record:
            train = record
        if "val_loss" in record:
            val = record
            best = record if not best or record["val_loss"] < best["val_loss"] else best
    return train, val, best


def count_parameters(config_path: str, overrides: list[str]) -> tuple[int, int]:
    """(all parameters, those of the token embedding, which the tied output head shares)."""
    from src.model.transformer_block import WikiMiniModel
    from src.training.config import load_train_config

    model = WikiMiniModel(load_train_config(config_path, overrides).model)
    return model.num_parameters(), model.tok_embeddings.weight.numel()


def story_metrics(run_dir: Path) -> dict:
    """Articles, grammar and EOS share of the final scored weights' stories (5 prompts x 3 seeds)."""
    from src.evaluation.stories import load_prompts
    from src.evaluation.stories import generate_and_score
    from src.evaluation.stories import summarize
    from src.generation.engine import Generator
    from src.model.checkpoint import load_checkpoint, load_model
    from src.training.averaging import scored_weights

    latest = run_dir / "checkpoint_latest.pth"
    loaded = load_model(latest, precision="fp32")
    loaded.model.load_state_dict(scored_weights(load_checkpoint(latest)))  # an average's, if the run keeps one
    generator = Generator.from_loaded(loaded)
    summary = summarize(generate_and_score(generator, load_prompts(None), "balanced", 3, 42, 300))
    return {"articles_per_100_words": summary.articles_per_100_words, "grammar": summary.grammar_raw,
            "eos_rate": summary.eos_rate}


def run_recipe(name: str, spec: dict, minutes: float, out_dir: Path, cpus: list[int] | None,
               threads: int | None, seed: int | None = None, eval_interval: int | None = None,
               fresh: bool = False) -> dict:
    run_dir = out_dir / f"{name}_{minutes:g}min" if seed is None else out_dir / f"{name}_{minutes:g}min_s{seed}"
    resume = not fresh and (run_dir / "checkpoint_latest.pth").exists()  # a stopped run: go on
    if run_dir.exists() and not resume:  # an attempt killed before its first save: start again
        for child in sorted(run_dir.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
    overrides = list(spec.get("common") or []) + overrides_of(spec, name) + RUN_SETTINGS + [
        f"training.eval_interval={eval_interval or 100_000_000}",  # default: once, at the end
        f"training.max_minutes={minutes}", f"training.output_dir={run_dir}"] + (
        [] if seed is None else [f"training.seed={seed}"])
    command = [sys.executable, "train.py", "--config", spec["base"]] + (["--resume", "auto"] if resume else [])
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    print(f"[{time.strftime('%H:%M:%S')}] {name} (seed {seed}): {minutes:g} min -> {run_dir}"
          + (" (resumed)" if resume else ""), flush=True)
    with open(run_dir / "segments.jsonl", "a" if resume else "w", encoding="utf-8") as segments:
        segments.write(json.dumps({"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    started = time.perf_counter()
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        process = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{name} failed (exit {process.returncode}); {log_path}:\n" + "\n".join(tail))
    train, val, best = read_metrics(run_dir / "metrics.jsonl")
    compile_line = next((line for line in log_path.read_text(encoding="utf-8").splitlines()
                         if "first step (compilation)" in line), "")
    params, embedding = count_parameters(spec["base"], overrides)
    return {
        "recipe": name,
        "seed": seed,
        "minutes": minutes,
        "overrides": overrides_of(spec, name),
        "params": params,
        "embedding_params": embedding,
        "steps": train.get("step"),
        "tokens": train.get("tokens"),
        "train_seconds": train.get("train_seconds"),
        "tokens_per_s": train["tokens"] / train["train_seconds"] if train.get("train_seconds") else None,
        "val_loss": val.get("val_loss"),
        "val_bpb": val.get("val_bpb"),
        "best_val_bpb": best.get("val_bpb"),
        "best_step": best.get("step"),
        "eval_seconds": val.get("eval_seconds"),  # the whole run's validation: inside the budget
        "compile_note": compile_line.strip(),
        "wall_seconds": round(wall, 1),
        "cpus": cpus,
        "threads": threads or torch_threads(),
        "machine": machine(),
        "machines": machines_of(run_dir),  # a resumed run may have trained on more than one
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **story_metrics(run_dir),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machines_of(run_dir: Path) -> list[str]:
    """Every machine a run trained on, in order: its minutes mean something only beside them."""
    lines = (run_dir / "segments.jsonl").read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(json.loads(line)["machine"] for line in lines))


def machine() -> str:
    from src.device import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}"


def spread(values: list[float]) -> str:
    """mean ± half the range (the range of two seeds is their difference)."""
    mean = sum(values) / len(values)
    return f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}" if len(values) > 1 else f"{mean:.4f}"


def best_of(runs: list[dict]) -> str:
    """The best validation along the way, where runs scored more than once (--eval-interval)."""
    if all(r.get("best_val_bpb") in (None, r["val_bpb"]) for r in runs):
        return "="  # scored at the end only, or the end was the best
    return spread([r.get("best_val_bpb") or r["val_bpb"] for r in runs])


def print_table(rows: list[dict]) -> None:
    """One line per recipe, its seeds pooled; the first recipe is the reference."""
    if not rows:
        print("no results yet")
        return
    by_recipe: dict[str, list[dict]] = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], []).append(row)
    reference = None
    print("| recipe | seeds | params | embedding | steps | tokens/s | bits/byte | vs first | best bits/byte "
          "| articles/100 words | grammar | EOS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in by_recipe.items():
        bpb = [r["val_bpb"] for r in runs]
        mean_bpb = sum(bpb) / len(bpb)
        reference = reference or mean_bpb

        def mean(key: str) -> float:
            values = [r[key] for r in runs if r.get(key) is not None]
            return sum(values) / len(values) if values else float("nan")

        print(f"| {name} | {len(runs)} | {runs[0]['params'] / 1e6:.2f}M | "
              f"{runs[0].get('embedding_params', 0) / 1e6:.2f}M | {mean('steps'):,.0f} | {mean('tokens_per_s'):,.0f} | "
              f"{spread(bpb)} | {mean_bpb / reference:.3f}x | {best_of(runs)} | {mean('articles_per_100_words'):.1f} | "
              f"{mean('grammar'):.2f} | {mean('eos_rate'):.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", help="comma-separated names (default: all in the recipes file)")
    parser.add_argument("--recipes-file", default=str(ROOT / "bench" / "recipes.yaml"))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per recipe")
    parser.add_argument("--out-dir", default=str(ROOT / "checkpoints" / "recipes"))
    parser.add_argument("--cpus", help="comma-separated CPU ids to pin each run to, e.g. 1")
    parser.add_argument("--threads", type=int, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--seeds", help="comma-separated training seeds, one run each (default: the config's)")
    parser.add_argument("--eval-interval", type=int, metavar="STEPS",
                        help="also score every validation window every STEPS steps (default: at the end only)")
    parser.add_argument("--rerun", action="store_true",
                        help="run recipes that already have a result, and start stopped runs from scratch")
    parser.add_argument("--table-only", action="store_true", help="print the table of finished runs")
    args = parser.parse_args()

    spec = load_recipes(Path(args.recipes_file))
    names = args.recipes.split(",") if args.recipes else list(spec["recipes"])
    unknown = [n for n in names if n not in spec["recipes"]]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(spec['recipes'])}")
    out_dir = Path(args.out_dir)
    results_path = out_dir / "results.jsonl"
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]

    def finished(name: str, seed: int | None) -> dict | None:
        return next((r for r in reversed(done) if r["recipe"] == name and r["minutes"] == args.minutes
                     and r.get("seed") == seed), None)

    if not args.table_only:
        cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
        for name, seed in ((n, s) for n in names for s in seeds):
            if finished(name, seed) and not args.rerun:
                print(f"{name} (seed {seed}): already run for {args.minutes:g} min (--rerun to repeat)")
                continue
            row = run_recipe(name, spec, args.minutes, out_dir, cpus, args.threads, seed,
                             args.eval_interval, fresh=args.rerun)
            done.append(row)
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(results_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  {name}: {row['steps']} steps, {row['tokens_per_s']:,.0f} tok/s, "
                  f"valid bits/byte {row['val_bpb']:.4f}", flush=True)
    rows = [r for r in (finished(n, s) for n in names for s in seeds) if r]
    if rows:
        machines = dict.fromkeys(m for r in rows for m in r.get("machines") or [r["machine"]])
        print(f"\n{' + '.join(machines)}; budget {args.minutes:g} min per recipe, "
              f"threads {rows[0]['threads']}, cpus {rows[0]['cpus'] or 'all'}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
