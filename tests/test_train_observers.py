"""Watching a run: TensorBoard scalars and text, sample stories at each evaluation, the budget."""

import json

import pytest

from src.training.config import load_train_config
from src.training.trainer import train
from tests.test_train_helpers import SMOKE_CONFIG, make_smoke_data, read_metrics, smoke_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(tmp_path_factory.mktemp("observer_data"))


def test_tensorboard_events_and_sample_stories_at_every_evaluation(data, tmp_path, capsys):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="needs TensorBoard (pip install -r requirements-dev.txt)")
    out = tmp_path / "run"
    overrides = smoke_overrides(data, out, training__max_steps=8, training__eval_interval=4, logging__plot=False,
                                logging__tensorboard=True, logging__sample_max_tokens=12)
    train(load_train_config(SMOKE_CONFIG, overrides))

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 8]
    for line in lines:
        assert [s["prompt"] for s in line["samples"]] == ["Once upon a time", "The little dog"]
        assert all(s["text"].startswith(s["prompt"]) and 0 < s["tokens"] <= 12 for s in line["samples"])
    assert "sample 1: 'Once upon a time" in capsys.readouterr().out  # printed in the log

    events = event_accumulator.EventAccumulator(str(out), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss", "val/bpb"} <= set(scalars)
    assert [e.step for e in events.Scalars("val/bpb")] == [4, 8]
    val = {r["step"]: r["val_bpb"] for r in read_metrics(out) if "val_bpb" in r}
    assert [e.value for e in events.Scalars("val/bpb")] == pytest.approx([val[4], val[8]], rel=1e-6)
    assert any(tag.startswith("samples/1") for tag in events.Tags()["tensors"])  # add_text is stored as a tensor


def test_samples_off_and_a_missing_wandb_is_a_clear_error(data, tmp_path, monkeypatch):
    import builtins

    from src.config_utils import ConfigError

    out = tmp_path / "quiet"
    train(load_train_config(SMOKE_CONFIG, smoke_overrides(data, out, training__max_steps=2, training__eval_interval=2,
                                                          logging__plot=False, logging__sample_max_tokens=0)))
    assert not (out / "samples.jsonl").exists()

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match="wandb is not installed"):
        train(load_train_config(SMOKE_CONFIG, smoke_overrides(data, tmp_path / "w", training__max_steps=2,
                                                              logging__wandb_project="stories")))


def test_a_budgeted_run_stops_at_its_budget_with_the_rate_at_min_lr(data, tmp_path, monkeypatch):
    """The budget is in seconds of the trainer's clock: here one that moves 1/8 s at each reading,
    so every step counts 1/8 s of training and the run's length does not depend on the machine."""
    from src.training import trainer

    readings = iter(range(10**9))
    monkeypatch.setattr(trainer, "clock", lambda: 0.125 * next(readings))
    out = tmp_path / "budget"
    budget_s = 3.0
    overrides = smoke_overrides(data, out, training__max_steps="null", training__max_minutes=budget_s / 60,
                                training__compile=False, training__eval_interval=10_000, logging__plot=False,
                                logging__sample_max_tokens=0, scheduler__warmup_steps=2)
    result = train(load_train_config(SMOKE_CONFIG, overrides))
    records = [r for r in read_metrics(out) if "train_loss" in r]
    last = records[-1]
    assert result.stop_reason == "completed" and result.step == last["step"] == len(records) == budget_s * 8
    assert last["train_seconds"] >= budget_s  # stops on the first step past the budget
    assert records[-2]["train_seconds"] < budget_s
    # Each step's rate is the schedule at the share of the budget spent before that step (the
    # previous record's train_seconds, logged every step): the decay spans the budget, not steps.
    from src.training.schedule import LRSchedule

    config = load_train_config(SMOKE_CONFIG, overrides)
    schedule = LRSchedule(config.optimizer.lr, config.scheduler.min_lr, 2, None)
    for before, record in zip(records, records[1:]):
        progress = min(1.0, before["train_seconds"] / budget_s)
        assert record["lr"] == pytest.approx(schedule(record["step"] - 1, progress), rel=1e-3, abs=5e-6)
    assert records[-1]["lr"] < records[len(records) // 2]["lr"] < records[2]["lr"]


def test_init_from_starts_from_the_checkpoint_weights_with_a_fresh_schedule(data, tmp_path):
    import torch

    from src.config_utils import ConfigError
    from src.model.checkpoint import load_checkpoint

    base = tmp_path / "base"
    train(load_train_config(SMOKE_CONFIG, smoke_overrides(data, base, training__max_steps=12, logging__plot=False,
                                                          logging__sample_max_tokens=0)))
    start = base / "checkpoint_latest.pth"
    base_weights = load_checkpoint(start)["model_state_dict"]

    tuned = tmp_path / "tuned"
    overrides = smoke_overrides(data, tuned, training__max_steps=6, training__eval_interval=6, logging__plot=False,
                                logging__sample_max_tokens=0, training__init_from=start,
                                model__d_model=48)  # the checkpoint's shape wins over the config's
    train(load_train_config(SMOKE_CONFIG, overrides))
    records = read_metrics(tuned)
    first = next(r for r in records if "train_loss" in r)
    fresh = next(r for r in read_metrics(base) if "train_loss" in r)
    assert first["step"] == 1 and first["lr"] == pytest.approx(fresh["lr"])  # schedule starts over
    assert first["train_loss"] < fresh["train_loss"] - 0.5  # ... from trained weights, not from scratch
    tuned_state = load_checkpoint(tuned / "checkpoint_latest.pth")
    assert tuned_state["config"]["model"]["d_model"] == 32
    assert any(not torch.equal(tuned_state["model_state_dict"][k], v) for k, v in base_weights.items())  # it trained

    other = tmp_path / "other_tokenizer.json"
    from src.data.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(["Another corpus entirely, with other words."] * 50, vocab_size=300, min_frequency=1).save(str(other))
    bad = smoke_overrides(data, tmp_path / "bad", training__max_steps=1, training__init_from=start)
    bad = [o for o in bad if not o.startswith("data.tokenizer=")] + [f"data.tokenizer={other}"]
    with pytest.raises(ConfigError, match="is not the tokenizer of"):
        train(load_train_config(SMOKE_CONFIG, bad))
    ok = [o for o in bad if not o.startswith("data.tokenizer=")] + ["data.tokenizer=checkpoint"]
    ok = [o if not o.startswith("training.output_dir=") else f"training.output_dir={tmp_path / 'ok'}" for o in ok]
    assert train(load_train_config(SMOKE_CONFIG, ok)).step == 1
