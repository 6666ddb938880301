"""test_training_setup.py (pre-flight): one verdict line per check, exit 0 / 1, no GPU needed."""

import pytest
import torch

from src.training.preflight import main
from tests.test_train_helpers import REPO_ROOT, SMOKE_CONFIG, make_smoke_data, run, set_args, smoke_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(tmp_path_factory.mktemp("preflight_data"))


def lines_of(capsys):
    return capsys.readouterr().out.strip().splitlines()


def test_a_ready_setup_passes(data, tmp_path, capsys):
    code = main(["--config", str(SMOKE_CONFIG), *set_args(smoke_overrides(data, tmp_path / "out"))])
    lines = lines_of(capsys)
    assert code == 0, lines
    by_name = {line.split("]", 1)[1].split(":", 1)[0].strip(): line for line in lines if line.startswith("[")}
    for name in ("config", "tokenizer", "vocab", "model", "device", "train step", "train data", "validation data",
                 "output dir", "cuda", "bf16", "torch.compile"):
        assert name in by_name, lines
    assert by_name["tokenizer"].startswith("[PASS]") and "round-trips" in by_name["tokenizer"]
    assert by_name["model"].startswith("[PASS]") and "parameters" in by_name["model"]
    assert by_name["train step"].startswith("[PASS]")
    if not torch.cuda.is_available():
        assert by_name["cuda"].startswith("[WARN]")  # a warning on a CPU machine, not a failure
    assert lines[-1] == "verdict: ready to train"
    assert not (tmp_path / "out").exists()  # pre-flight writes nothing


def test_problems_fail_with_one_line_each(data, tmp_path, capsys):
    overrides = smoke_overrides(data, tmp_path / "out") + [f"data.tokenizer={tmp_path / 'missing'}",
                                                           f"data.train={tmp_path / 'nope.txt'}"]
    assert main(["--config", str(SMOKE_CONFIG), *set_args(overrides)]) == 1
    lines = lines_of(capsys)
    assert any(line.startswith("[FAIL] tokenizer: cannot load tokenizer") for line in lines)
    assert any(line.startswith("[FAIL] data:") and "does not exist" in line for line in lines)
    assert lines[-1].startswith("verdict: FAIL (tokenizer, data")


def test_vocab_mismatch_and_bad_config(data, tmp_path, capsys):
    assert main(["--config", str(SMOKE_CONFIG), *set_args(smoke_overrides(data, tmp_path, model__vocab_size=280))]) == 1
    assert any(line.startswith("[FAIL] vocab: tokenizer has") for line in lines_of(capsys))
    assert main(["--config", str(SMOKE_CONFIG), "--set", "training.batch_szie=3"]) == 1
    lines = lines_of(capsys)
    assert lines[0].startswith("[FAIL] config: unknown config key(s) training.batch_szie")
    assert lines[-1] == "verdict: FAIL (config)"  # the checks that need a config are skipped


def test_script_runs_as_a_command(data, tmp_path):
    result = run([str(REPO_ROOT / "test_training_setup.py"), "--config", str(SMOKE_CONFIG),
                  *set_args(smoke_overrides(data, tmp_path))], timeout=120)
    assert result.returncode == 0 and "verdict: ready to train" in result.stdout, result.stdout + result.stderr
