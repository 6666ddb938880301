"""Checkpoint format: atomic save, safe load, clear errors, the seed README's snippet."""

import os
from pathlib import Path

import pytest
import torch

from src.data.tokenizer import train_bpe_tokenizer
from src.model.checkpoint import (
    CheckpointError,
    find_best_checkpoint,
    load_checkpoint,
    load_model,
    resolve_checkpoint_path,
    save_checkpoint,
)
from tests.conftest import TINY_STORIES, tiny_model_config


def test_round_trip_keeps_weights_tokenizer_and_metrics(tmp_path, tokenizer, tiny_model):
    path = save_checkpoint(tmp_path / "a.pth", tiny_model, tokenizer, config={"training": {"lr": 1e-3}}, metrics={"val_ppl": 9.5})
    loaded = load_model(path)
    x = torch.randint(0, 384, (1, 10))
    torch.testing.assert_close(loaded.model(x), tiny_model(x))
    assert loaded.tokenizer.to_str() == tokenizer.to_str()
    assert loaded.eos_id == tokenizer.token_to_id("<|endoftext|>") == 0
    assert loaded.metrics == {"val_ppl": 9.5}
    raw = load_checkpoint(path)
    assert raw["config"]["training"] == {"lr": 1e-3} and raw["config"]["model"]["d_model"] == 32


def test_seed_readme_production_snippet_works_verbatim(tiny_checkpoint):
    from src.model.transformer_block import WikiMiniModel

    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    model = WikiMiniModel(checkpoint["config"]["model"])
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 384)


def test_compiled_and_ddp_prefixes_are_stripped(tmp_path, tokenizer, tiny_model):
    wrapped = {f"_orig_mod.module.{k}": v for k, v in tiny_model.state_dict().items()}
    checkpoint = {"config": {"model": tiny_model.config.to_dict()}, "model_state_dict": wrapped,
                  "tokenizer_json": tokenizer.to_str()}
    torch.save(checkpoint, tmp_path / "c.pth")
    loaded = load_model(tmp_path / "c.pth")
    torch.testing.assert_close(loaded.model.output.weight, tiny_model.output.weight)
    saved = save_checkpoint(tmp_path / "d.pth", torch.compile(tiny_model), tokenizer)
    assert not any(k.startswith("_orig_mod") for k in torch.load(saved, weights_only=True)["model_state_dict"])


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, tokenizer, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "latest.pth", tiny_model, tokenizer, metrics={"step": 1})
    before = path.read_bytes()

    def exploding_save(obj, handle, *a, **k):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_model, tokenizer, metrics={"step": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]  # no temp file left


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_refuses_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"config": {"model": {}}, "model_state_dict": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="arbitrary Python objects"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
        (None, "not a WikiMiniModel checkpoint"),
    ],
)
def test_non_checkpoints_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "x.pth"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_and_truncated_files(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pth")
    truncated = tmp_path / "t.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(truncated)


def test_vocab_tokenizer_mismatch_is_an_error(tmp_path, tiny_model):
    big_tokenizer = train_bpe_tokenizer(TINY_STORIES * 30, vocab_size=600, min_frequency=1)
    assert big_tokenizer.get_vocab_size() > 384
    path = save_checkpoint(tmp_path / "m.pth", tiny_model, big_tokenizer)
    with pytest.raises(CheckpointError, match="tokenizer has .* tokens but the model's vocab_size is 384"):
        load_model(path)


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path, tokenizer, tiny_model):
    checkpoint = {"config": {"model": tiny_model_config(d_model=64)}, "model_state_dict": tiny_model.state_dict(),
                  "tokenizer_json": tokenizer.to_str()}
    torch.save(checkpoint, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="weights do not match the model config"):
        load_model(tmp_path / "w.pth")


def test_checkpoint_resolution_order(tmp_path, tiny_checkpoint):
    for ppl in ("12.50", "9.75", "100.00"):
        (tmp_path / f"checkpoint_best_ppl_{ppl}.pth").write_bytes(b"x")
    (tmp_path / "checkpoint_latest.pth").write_bytes(b"x")
    assert find_best_checkpoint(tmp_path).name == "checkpoint_best_ppl_9.75.pth"
    assert resolve_checkpoint_path("given.pth", env={"CHECKPOINT_PATH": "env.pth"}, search_dir=tmp_path) == Path("given.pth")
    assert resolve_checkpoint_path(None, env={"CHECKPOINT_PATH": "env.pth"}, search_dir=tmp_path) == Path("env.pth")
    assert resolve_checkpoint_path(None, env={}, search_dir=tmp_path).name == "checkpoint_best_ppl_9.75.pth"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_checkpoint_path(None, env={}, search_dir=empty, demo=tiny_checkpoint) == tiny_checkpoint
    with pytest.raises(CheckpointError, match="no checkpoint found: pass --checkpoint"):
        resolve_checkpoint_path(None, env={}, search_dir=empty, demo=empty / "none.pth")


def test_bf16_distribution_weights_load_into_fp32(tmp_path, tokenizer, tiny_model):
    path = save_checkpoint(tmp_path / "small.pth", tiny_model, tokenizer, weights_dtype=torch.bfloat16)
    assert torch.load(path, weights_only=True)["model_state_dict"]["norm.weight"].dtype == torch.bfloat16
    loaded = load_model(path)
    assert loaded.model.norm.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.model.output.weight, tiny_model.output.weight.bfloat16().float())


def test_compact_checkpoint_drops_training_state_and_halves_weights(tmp_path, tokenizer, tiny_model):
    from src.model.checkpoint import compact_checkpoint

    big = save_checkpoint(tmp_path / "big.pth", tiny_model, tokenizer, metrics={"val_ppl": 7.0},
                          config={"training": {"lr": 0.1}},
                          training_state={"optimizer": {"m": torch.zeros(50_000)}})
    small = compact_checkpoint(big, tmp_path / "small.pth")
    raw = torch.load(small, weights_only=True)
    assert "training_state" not in raw and raw["metrics"] == {"val_ppl": 7.0}
    assert raw["config"]["training"] == {"lr": 0.1}
    assert raw["model_state_dict"]["output.weight"].dtype == torch.bfloat16
    assert small.stat().st_size < big.stat().st_size / 2
    state = raw["model_state_dict"]  # the tied embedding is stored once
    assert state["output.weight"].untyped_storage().data_ptr() == state["tok_embeddings.weight"].untyped_storage().data_ptr()
    x = torch.randint(0, 384, (1, 12))
    assert (load_model(small).model(x) - tiny_model(x)).abs().max().item() < 0.05


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_old_file(tmp_path, tokenizer, tiny_model, monkeypatch):
    import errno

    path = save_checkpoint(tmp_path / "latest.pth", tiny_model, tokenizer, metrics={"step": 1})
    before = path.read_bytes()

    def full_disk(obj, handle, *a, **k):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device; the previous file is unchanged"):
        save_checkpoint(path, tiny_model, tokenizer, metrics={"step": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]


def test_a_different_tokenizer_of_the_same_size_is_refused(tmp_path, tiny_checkpoint):
    from tests.conftest import TINY_STORIES
    from src.data.tokenizer import train_bpe_tokenizer

    other = train_bpe_tokenizer([s.upper() for s in TINY_STORIES] * 20, vocab_size=384, min_frequency=1)
    other_path = tmp_path / "other.json"
    other.save(str(other_path))
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained with"):
        load_model(tiny_checkpoint, tokenizer_path=other_path)


def test_an_altered_tokenizer_or_nan_weights_are_refused(tmp_path, tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    altered = dict(checkpoint, tokenizer_json=checkpoint["tokenizer_json"].replace('"Ġthe"', '"Ġthf"', 1))
    torch.save(altered, tmp_path / "altered.pth")
    with pytest.raises(CheckpointError, match="tokenizer_sha256"):
        load_model(tmp_path / "altered.pth")
    weights = dict(checkpoint["model_state_dict"])
    weights["norm.weight"] = weights["norm.weight"].clone().fill_(float("nan"))
    torch.save(dict(checkpoint, model_state_dict=weights), tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "nan.pth")


def test_generate_cli_refuses_nan_weights_with_exit_2(tmp_path, tiny_checkpoint):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    weights = dict(checkpoint["model_state_dict"])
    weights["norm.weight"] = weights["norm.weight"].clone().fill_(float("inf"))
    torch.save(dict(checkpoint, model_state_dict=weights), tmp_path / "inf.pth")
    proc = subprocess.run([sys.executable, "generate.py", "--checkpoint", str(tmp_path / "inf.pth"), "--prompt", "Once"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "NaN or infinite" in proc.stderr and "Traceback" not in proc.stderr
