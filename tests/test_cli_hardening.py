"""Bad input on the command line and in files: a clear message and exit status 2, never a traceback."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import pytest
import torch

from src.model.checkpoint import CheckpointError, find_newest_run_best, resolve_checkpoint
from src.training.config import ConfigError, load_train_config
from tests.conftest import REPO_ROOT


def run(args, stdin=None, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, input=stdin, capture_output=True,
                          timeout=180, env=env)


def assert_clean_exit_2(proc, words):
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert words in stderr and "Traceback" not in stderr


def test_invalid_utf8_prompt_on_the_command_line(tiny_checkpoint):
    proc = run([b"generate.py", b"--checkpoint", str(tiny_checkpoint).encode(), b"--prompt", b"Once \xff"])
    assert_clean_exit_2(proc, "--prompt is not valid UTF-8")


def test_invalid_utf8_on_interactive_stdin(tiny_checkpoint):
    proc = run(["generate.py", "--checkpoint", str(tiny_checkpoint), "--interactive", "--max-tokens", "3"],
               stdin=b"Once \xff upon\n")
    assert_clean_exit_2(proc, "not valid UTF-8")


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        ("optimizer:\n  lr: .nan\n", "optimizer.lr: expected a finite number"),
        ("training:\n  max_grad_norm: .inf\n", "training.max_grad_norm: expected a finite number"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("optimizer:\n  eps: -1\n", "optimizer.eps must be a positive number"),
    ],
)
def test_bad_yaml_values_are_named(tmp_path, yaml_text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=words):
        load_train_config(path)


def test_train_cli_reports_a_nan_lr_without_a_traceback(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("optimizer:\n  lr: .nan\n")
    proc = run(["train.py", "--config", str(path)])
    assert proc.returncode != 0
    stderr = proc.stderr.decode()
    assert "optimizer.lr: expected a finite number" in stderr and "Traceback" not in stderr


def test_export_onto_an_existing_file_is_refused(tmp_path, tiny_checkpoint):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    proc = run(["convert_hf.py", "export", "--checkpoint", str(tiny_checkpoint), "--output", str(target)])
    assert_clean_exit_2(proc, "is a file")
    assert target.read_text() == "keep me"


def test_export_loads_in_any_transformers_and_is_readable_by_others(tmp_path, tiny_checkpoint):
    from src.model.hf_convert import export_checkpoint

    out = export_checkpoint(tiny_checkpoint, tmp_path / "hf")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4.x knows
    mode = stat.S_IMODE((out / "model.safetensors").stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


class NotATensor:  # pickled into a .bin, it must not be unpickled on import
    pass


def test_importing_a_pickle_bin_is_a_clear_refusal(tmp_path, tiny_checkpoint):
    from src.model.hf_convert import export_checkpoint, import_hf

    out = export_checkpoint(tiny_checkpoint, tmp_path / "hf")
    weights = dict(torch.load(tiny_checkpoint, weights_only=True)["model_state_dict"])
    (out / "model.safetensors").unlink()
    torch.save({"payload": NotATensor(), **weights}, out / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles") as info:
        import_hf(out, tmp_path / "imported.pth")
    assert "weights_only=False" not in str(info.value)


def test_the_newest_runs_best_checkpoint_is_found_and_named(tmp_path, tiny_checkpoint):
    older, newer = tmp_path / "run_a", tmp_path / "run_b"
    for run_dir in (older, newer):
        run_dir.mkdir()
    (older / "checkpoint_best_ppl_5.00.pth").write_bytes(tiny_checkpoint.read_bytes())
    time.sleep(0.05)
    (newer / "checkpoint_best_ppl_9.00.pth").write_bytes(tiny_checkpoint.read_bytes())
    (newer / "checkpoint_best_ppl_7.00.pth").write_bytes(tiny_checkpoint.read_bytes())
    assert find_newest_run_best(tmp_path).name == "checkpoint_best_ppl_7.00.pth"
    path, reason = resolve_checkpoint(None, env={}, search_dir=tmp_path, demo=tmp_path / "none.pth")
    assert path.parent == newer and "newest training run" in reason


def test_generate_says_which_checkpoint_it_used(tiny_checkpoint):
    env = {**__import__("os").environ, "CHECKPOINT_PATH": str(tiny_checkpoint)}
    proc = run(["generate.py", "--max-tokens", "3", "--seed", "1"], env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"checkpoint: {tiny_checkpoint} ($CHECKPOINT_PATH)" in proc.stderr.decode()
