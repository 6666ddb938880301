"""The training loop in-process on the smoke config: outputs, accumulation, best/latest, early stop."""

from pathlib import Path

import pytest
import torch

from src.config_utils import ConfigError
from src.model.checkpoint import CheckpointError, best_name, find_best_checkpoint, load_checkpoint, load_model
from src.training.checkpointing import BestCheckpoints
from src.training.config import load_train_config
from src.training.trainer import train
from tests.test_train_helpers import SMOKE_CONFIG, make_smoke_data, read_metrics, smoke_overrides, train_losses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(tmp_path_factory.mktemp("smoke_data"))


def run_smoke(data, output_dir: Path, resume=None, **settings):
    config = load_train_config(SMOKE_CONFIG, smoke_overrides(data, output_dir, **settings))
    return train(config, resume=resume)


def test_smoke_run_writes_metrics_checkpoints_and_plot(data, tmp_path):
    out = tmp_path / "run"
    result = run_smoke(data, out, training__max_steps=20, training__eval_interval=10, training__save_interval=10)
    assert (result.stop_reason, result.exit_code, result.step) == ("completed", 0, 20)
    records = read_metrics(out)
    train_records = [r for r in records if "train_loss" in r]
    eval_records = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, 21))
    assert {"step", "train_loss", "lr", "tokens_per_s", "tokens"} <= set(train_records[0])
    assert [r["step"] for r in eval_records] == [10, 20]
    assert all({"val_loss", "val_ppl", "val_bpb"} <= set(r) for r in eval_records)
    assert train_records[-1]["train_loss"] < train_records[0]["train_loss"]  # it learns
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    latest = load_checkpoint(out / "checkpoint_latest.pth")
    assert latest["training_state"]["progress"]["step"] == 20 and latest["metrics"]["step"] == 20
    # one entry per resumable component, plus what each rank keeps of its own
    assert set(latest["training_state"]) == {"format", "progress", "optimizer", "scaler", "data", "early_stopping",
                                             "best_checkpoints", "ranks"}
    assert set(latest["config"]) == {"model", "data", "training", "optimizer", "scheduler", "logging"}
    best_ppl = min(r["val_ppl"] for r in eval_records)
    best = find_best_checkpoint(out)
    assert best.name == best_name(best_ppl) and result.best_val_ppl == pytest.approx(best_ppl)
    assert "training_state" not in load_checkpoint(best)  # weights for inference only: small
    loaded = load_model(best)  # what generate.py / the server use
    assert loaded.tokenizer.get_vocab_size() == data["vocab_size"]


def test_gradient_accumulation_matches_a_bigger_batch(data, tmp_path):
    """batch 8 x 1 micro-batch == batch 4 x 2 == batch 2 x 4: same windows, same mean-loss gradient."""
    common = dict(training__max_steps=6, training__precision="fp32", training__eval_interval=100, logging__plot=False)
    runs = {}
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        out = tmp_path / f"b{batch}"
        run_smoke(data, out, training__batch_size=batch, training__grad_accum_steps=accum, **common)
        runs[(batch, accum)] = (train_losses(out), load_checkpoint(out / "checkpoint_latest.pth")["model_state_dict"])
    (ref_losses, ref_weights) = runs[(8, 1)]
    for key in ((4, 2), (2, 4)):
        losses, weights = runs[key]
        assert [s for s, _ in losses] == [s for s, _ in ref_losses]
        assert [l for _, l in losses] == pytest.approx([l for _, l in ref_losses], rel=1e-5)
        for name, tensor in ref_weights.items():
            torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5)


def test_best_checkpoints_keep_only_the_best_k(tmp_path):
    best = BestCheckpoints(tmp_path, keep=2)
    saved = []

    def save(path):
        path.write_bytes(b"x")
        saved.append(path.name)

    for ppl in (50.0, 40.0, 45.0, 60.0, 30.0):
        if best.qualifies(ppl):
            best.add(ppl, save)
    assert saved == [best_name(p) for p in (50.0, 40.0, 45.0, 30.0)]  # 60 never beat the 2nd best
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == sorted([best_name(30.0), best_name(40.0)])
    assert best.state_dict() == {"entries": [[30.0, best_name(30.0)], [40.0, best_name(40.0)]]}
    (tmp_path / "checkpoint_best_ppl_1.00.pth").write_bytes(b"another run's")  # never touched
    restored = BestCheckpoints(tmp_path, keep=1)  # as on resume, with keep_best lowered
    restored.load_state_dict(best.state_dict())
    assert not restored.qualifies(35.0) and restored.qualifies(29.0)
    restored.add(29.0, save)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == sorted([best_name(29.0), "checkpoint_best_ppl_1.00.pth"])


def test_keep_best_bounds_the_files_of_a_real_run(data, tmp_path):
    out = tmp_path / "run"
    run_smoke(data, out, training__max_steps=24, training__eval_interval=4, training__keep_best=2,
              logging__plot=False)
    evals = sorted(r["val_ppl"] for r in read_metrics(out) if "val_ppl" in r)
    assert len(evals) == 6
    assert sorted(p.name for p in out.glob("checkpoint_best_ppl_*.pth")) == sorted(best_name(p) for p in evals[:2])
    assert (out / "checkpoint_latest.pth").exists()


def test_early_stopping(data, tmp_path):
    out = tmp_path / "run"
    result = run_smoke(data, out, training__max_steps=30, training__eval_interval=5,
                       training__early_stopping_patience=2, training__early_stopping_min_delta=100.0,
                       logging__plot=False)
    # the first evaluation sets the best; nothing can improve by 100 nats, so two more evaluations stop it
    assert result.stop_reason == "early_stopping" and result.step == 15 and result.exit_code == 0
    assert load_checkpoint(out / "checkpoint_latest.pth")["training_state"]["progress"]["step"] == 15


def test_a_new_run_never_overwrites_an_earlier_one(data, tmp_path):
    out = tmp_path / "run"
    run_smoke(data, out, training__max_steps=2, logging__plot=False)
    with pytest.raises(ConfigError, match="--resume auto"):
        run_smoke(data, out, training__max_steps=2)
    assert run_smoke(data, out, resume="auto", training__max_steps=2).stop_reason == "already_complete"
    best = find_best_checkpoint(out)
    with pytest.raises(CheckpointError, match="no training state"):
        run_smoke(data, tmp_path / "other", resume=str(best), training__max_steps=4)
    with pytest.raises(ConfigError, match="model config differs in model.n_layers"):
        run_smoke(data, out, resume="auto", training__max_steps=4, model__n_layers=3)


def test_compile_failure_falls_back_to_eager(data, tmp_path, monkeypatch, capsys):
    import src.training.trainer as trainer_module

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor exploded")

    monkeypatch.setattr(trainer_module, "try_compile", lambda model: (Broken(), None))
    run_smoke(data, tmp_path / "eager", training__max_steps=4, logging__plot=False)
    run_smoke(data, tmp_path / "fallback", training__max_steps=4, training__compile=True, logging__plot=False)
    assert "torch.compile failed (RuntimeError: inductor exploded); falling back to eager" in capsys.readouterr().out
    # the failed attempt consumed no data and no randomness: the same losses as a plain eager run
    assert train_losses(tmp_path / "fallback") == train_losses(tmp_path / "eager")


def test_the_data_lines_say_how_many_stories_were_really_read(data, tmp_path, capsys):
    """A cap larger than the file is a cap, not a count: the log gives the stories read."""
    run_smoke(data, tmp_path / "run", training__max_steps=1, data__max_train_stories=4042,
              data__max_val_stories=9)
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("train "))
    assert "400 stories" in line and "[first 4042" not in line and "at most 4,042 stories" in line
    assert "val " in line and ", 9 stories" in line


def test_a_weight_average_is_what_a_run_scores_and_keeps_as_best(data, tmp_path):
    out = tmp_path / "ema"
    run_smoke(data, out, training__max_steps=12, training__eval_interval=12, training__save_interval=12,
              training__ema_decay=0.8, training__precision="fp32", logging__plot=False)
    latest = load_checkpoint(out / "checkpoint_latest.pth")
    average = latest["training_state"]["weight_average"]
    best = load_checkpoint(find_best_checkpoint(out))
    assert best["metrics"]["step"] == 12
    for name, raw in latest["model_state_dict"].items():
        assert torch.equal(best["model_state_dict"][name], average[f"module.{name}"])
    assert any(not torch.equal(raw, average[f"module.{name}"]) for name, raw in latest["model_state_dict"].items())
    from src.training.averaging import scored_weights
    assert all(torch.equal(w, best["model_state_dict"][name]) for name, w in scored_weights(latest).items())
    with pytest.raises(ConfigError, match="ema_decay"):
        load_train_config(SMOKE_CONFIG, smoke_overrides(data, out, training__ema_decay=1.0))


def test_the_weight_average_follows_its_formula_and_resumes_where_it_was():
    from src.training.averaging import WeightAverage

    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.75)
    first = model.weight.detach().clone()
    average.update(model)  # the first update copies the weights
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)
    torch.testing.assert_close(average.model.weight, 0.75 * first + 0.25 * (first + 1.0))
    resumed = WeightAverage(torch.nn.Linear(3, 2), decay=0.75)
    resumed.load_state_dict(average.state_dict())
    for copy in (average, resumed):
        copy.update(model)
    assert torch.equal(resumed.model.weight, average.model.weight)


def test_runs_plot_bits_per_byte_against_cpu_minutes_that_count_evaluation(data, tmp_path, capsys):
    from bench import plot_runs

    out = tmp_path / "timed"
    run_smoke(data, out, training__max_steps=12, training__eval_interval=6, logging__plot=False)
    evals = [r for r in read_metrics(out) if "val_bpb" in r]
    assert len(evals) == 2 and 0 < evals[0]["eval_seconds"] < evals[1]["eval_seconds"]
    assert 0 < evals[0]["train_seconds"] < evals[1]["train_seconds"]
    latest = load_checkpoint(out / "checkpoint_latest.pth")["training_state"]["progress"]
    assert latest["eval_seconds"] >= evals[1]["eval_seconds"]  # resumed runs keep counting

    png = tmp_path / "plot.png"
    assert plot_runs.main([str(out), "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = min(evals, key=lambda r: r["val_bpb"])
    minutes = (best["train_seconds"] + best["eval_seconds"]) / 60
    assert f"| timed | 2 | {best['val_bpb']:.4f} | {minutes:.1f} |" in capsys.readouterr().out
    assert plot_runs.main([str(tmp_path / "nothing"), "--output", str(png)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
