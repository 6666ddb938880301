"""Training config: typed sections, errors naming the bad key, --set, the shipped configs, CLI errors."""

import pytest

from src.config_utils import ConfigError
from src.model.transformer_block import WikiMiniModel
from src.training.config import TrainConfig, apply_overrides, load_train_config
from tests.test_train_helpers import REPO_ROOT, SMOKE_CONFIG, run, train_command

REFERENCE = REPO_ROOT / "config" / "train_config_tinystories_33M_TOP10K.yaml"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_train_config(path)
    assert isinstance(config.optimizer.lr, float) and isinstance(config.scheduler.min_lr, float)
    assert config.model.dropout == 0.0 or "cpu" not in path.name  # CPU SDPA with dropout is slow


def test_reference_config_is_the_seed_recipe():
    config = load_train_config(REFERENCE)
    m, t, o, s = config.model, config.training, config.optimizer, config.scheduler
    assert (m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.max_seq_len) == (10000, 448, 7, 7, 512)
    assert WikiMiniModel(m).num_parameters() == 24_557_120
    assert config.data.tokenizer == "tokenizer/tinystories_10k" and config.data.train == "roneneldan/TinyStories"
    assert (t.batch_size, t.grad_accum_steps, t.epochs, t.precision) == (64, 4, 5, "bf16")
    assert (o.lr, o.betas, o.weight_decay) == (5e-4, (0.9, 0.95), 0.1)
    assert (s.warmup_steps, s.min_lr) == (2000, 5e-5)


@pytest.mark.parametrize("name, stories", [("cpu", 4042), ("demo", 4042), ("demo20k", 20662),
                                            ("demo_qk", 20662)])
def test_cpu_configs_read_a_slice_of_the_hub_dataset(name, stories):
    """No path a user lacks: the dataset by name, capped to a CPU-sized slice (local files by --set)."""
    config = load_train_config(REPO_ROOT / "config" / f"train_config_tinystories_{name}.yaml")
    data = config.data
    assert (data.train, data.val) == ("roneneldan/TinyStories", "roneneldan/TinyStories:validation")
    assert (data.max_train_stories, data.max_val_stories) == (stories, 929) and config.model.dropout == 0.0


def test_smoke_config_runs_in_a_fresh_clone_without_network(tmp_path):
    from src.training.trainer import train

    config = load_train_config(SMOKE_CONFIG, [f"training.output_dir={tmp_path}", f"data.cache_dir={tmp_path}/cache",
                                              "training.max_steps=2", "training.eval_interval=2", "logging.plot=false"])
    for source in (config.data.train, config.data.val, config.data.tokenizer):
        assert (REPO_ROOT / source).exists()  # files in the repository; never the hub or ../shared
    assert config.model.d_model <= 64 and load_train_config(SMOKE_CONFIG).training.max_steps <= 100
    result = train(config)
    assert result.exit_code == 0 and (tmp_path / "checkpoint_latest.pth").exists()


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  batch_szie: 4\n")
    with pytest.raises(ConfigError, match=r"training\.batch_szie.*valid keys: .*batch_size"):
        load_train_config(path)


def test_unknown_section_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimiser:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match=r"optimiser.*valid sections: model, data, training, optimizer"):
        load_train_config(path)


def test_scientific_notation_loads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 5e-4\n  eps: 1e-6\nscheduler:\n  min_lr: 1e-6\n")
    config = load_train_config(path)
    assert config.optimizer.lr == 5e-4 and config.optimizer.eps == 1e-6 and config.scheduler.min_lr == 1e-6


def test_set_overrides_any_key_with_the_same_validation():
    config = load_train_config(SMOKE_CONFIG, ["optimizer.lr=1e-2", "training.compile=false", "training.max_steps=7",
                                              "optimizer.betas=[0.8, 0.9]", "training.eval_batches=null",
                                              "model.n_layers=3"])
    assert config.optimizer.lr == 1e-2 and config.training.compile is False and config.training.max_steps == 7
    assert config.optimizer.betas == (0.8, 0.9) and config.training.eval_batches is None
    assert config.model.n_layers == 3
    with pytest.raises(ConfigError, match=r"training\.max_step\b.*valid keys"):
        load_train_config(SMOKE_CONFIG, ["training.max_step=7"])
    with pytest.raises(ConfigError, match=r"optimizer\.lr: expected a number"):
        load_train_config(SMOKE_CONFIG, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["lr=3"])


@pytest.mark.parametrize("overrides, message", [
    (["training.precision=fp8"], "training.precision must be one of"),
    (["training.batch_size=0"], "training.batch_size must be at least 1"),
    (["scheduler.min_lr=1"], "must not exceed optimizer.lr"),
    (["optimizer.betas=[0.9]"], "optimizer.betas must be two numbers"),
    (["model.d_model=30"], "divisible"),
    (["training.compile=sometimes"], "training.compile must be"),
])
def test_invalid_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(SMOKE_CONFIG, overrides)


def test_to_dict_round_trips():
    config = load_train_config(REFERENCE)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("args, message", [
    (["--set", "training.batch_szie=4"], "error: unknown config key(s) training.batch_szie; valid keys:"),
    (["--config", "config/missing.yaml"], "error: cannot read config config/missing.yaml"),
    (["--resume", "no/such/checkpoint.pth"], "error: --resume: checkpoint not found"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_cli_errors_are_one_line_without_traceback(args, message):
    command = train_command([]) + args
    result = run(command, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith(("error", "train.py: error"))]) == 1
