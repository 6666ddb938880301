"""bench_recipe's long runs: a stopped run goes on from its checkpoint, `--rerun` starts afresh."""

from __future__ import annotations

import json

from bench.bench_recipe import run_recipe


def test_a_recipe_run_resumes_where_it_stopped_and_a_rerun_starts_afresh(tmp_path):
    spec = {"base": "config/smoke.yaml", "recipes": {"tiny": []},
            "common": ["training.compile=false", "model.max_seq_len=32", f"data.cache_dir={tmp_path / 'cache'}"]}
    first = run_recipe("tiny", spec, 0.03, tmp_path, None, 1, seed=7, eval_interval=20)
    run_dir = tmp_path / "tiny_0.03min_s7"
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "val_bpb" in json.loads(line)]
    assert len(evals) >= 2, "--eval-interval scores along the way, not only at the end"
    assert first["best_val_bpb"] == min(e["val_bpb"] for e in evals)
    assert first["machines"] == [first["machine"]]

    again = run_recipe("tiny", spec, 0.03, tmp_path, None, 1, seed=7, eval_interval=20)
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert len((run_dir / "segments.jsonl").read_text().splitlines()) == 2
    assert again["steps"] >= first["steps"]  # went on from the checkpoint, not from step 0

    afresh = run_recipe("tiny", spec, 0.03, tmp_path, None, 1, seed=7, eval_interval=20, fresh=True)
    assert "resumed from" not in (run_dir / "train.log").read_text()
    assert len((run_dir / "segments.jsonl").read_text().splitlines()) == 1
    assert afresh["steps"] > 0
