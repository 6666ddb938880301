"""Tokenizer: exact unicode round trip, saved files AutoTokenizer reads, and the CLI end to end."""

import hashlib
import json
import subprocess
import sys

import pytest

from src.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha256,
    train_bpe_tokenizer,
)
from tests.conftest import REPO_ROOT, TINY_STORIES

UNSEEN_TEXT = [
    "Café, naïve, Zoë, São Paulo, Ærøskøbing.",
    "Emoji 🙂🐉👩‍👩‍👧 and flags 🇫🇷.",
    "CJK 你好世界, 日本語のテキスト, 한국어.",
    "Control \x00\x01\x7f tabs\tand\r\nnewlines\n\n and  double  spaces ",
]


def test_any_utf8_round_trips_even_bytes_never_seen_in_training():
    tokenizer = train_bpe_tokenizer(["the cat sat on the mat. " * 3] * 30, vocab_size=300, min_frequency=1)
    for text in UNSEEN_TEXT:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.get_vocab_size() >= 258  # every byte is in the base alphabet
    assert tokenizer.token_to_id(EOS_TOKEN) == 0 and tokenizer.token_to_id(PAD_TOKEN) == 1
    saved = json.loads(tokenizer.to_str())
    assert saved["truncation"] is None and saved["padding"] is None


def test_eos_in_text_is_one_special_token(tokenizer):
    ids = tokenizer.encode(f"The end.{EOS_TOKEN}", add_special_tokens=False).ids
    assert ids[-1] == 0 and 0 not in ids[:-1]


def test_save_then_load_from_dir_or_file_and_autotokenizer(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    out = save_tokenizer(tokenizer, tmp_path / "tok", {"data_source": "tiny"})
    file_sha = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    meta = json.loads((out / "tokenizer_meta.json").read_text())
    assert meta["tokenizer_json_sha256"] == file_sha == tokenizer_sha256(tokenizer)
    assert meta["data_source"] == "tiny" and meta["eos_token_id"] == 0 and meta["pad_token_id"] == 1
    for path in (out, out / "tokenizer.json"):
        assert tokenizer_sha256(load_tokenizer(path)) == file_sha
    hf = AutoTokenizer.from_pretrained(str(out))
    assert (hf.eos_token, hf.eos_token_id, hf.pad_token, hf.pad_token_id) == (EOS_TOKEN, 0, PAD_TOKEN, 1)
    assert hf.decode(hf.encode(UNSEEN_TEXT[1], add_special_tokens=False)) == UNSEEN_TEXT[1]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="at least 258"):
        train_bpe_tokenizer(["a"], vocab_size=100)


def run_script(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_custom_tokenizer.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_train_custom_tokenizer_end_to_end(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("".join(f"{s}\n{EOS_TOKEN}\n" for s in TINY_STORIES * 5), encoding="utf-8")
    out = tmp_path / "tok"
    result = run_script(
        "--data", str(data), "--vocab-size", "320", "--output_dir", str(out),
        "--max_samples", "20", "--min-frequency", "1", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tokens/char" in result.stdout and "saved to" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json", "tokenizer_meta.json"]
    meta = json.loads((out / "tokenizer_meta.json").read_text())
    assert meta["samples"] == 20 and meta["vocab_size"] == 320 and meta["data_source"].startswith(str(data))
    assert meta["tokenizer_json_sha256"] == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.eos_token_id == 0 and hf.pad_token_id == 1 and len(hf) == 320


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.txt"], "data source missing.txt does not exist"),
        (["--data", "empty.txt"], "holds no stories"),
        (["--data", "bad.jsonl"], "record has no 'text' or 'story'"),
        (["--data", "good.txt", "--vocab_size", "100"], "vocab_size must be at least 258"),
        (["--data", "good.txt", "--max_samples", "-5"], "max_samples must be at least 1"),
    ],
)
def test_train_custom_tokenizer_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n', encoding="utf-8")
    (tmp_path / "good.txt").write_text(f"A story.\n{EOS_TOKEN}\n", encoding="utf-8")
    result = run_script(*args, "--output_dir", "out", "--no_progress", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_the_reading_bar_counts_what_a_small_file_really_holds(tmp_path, monkeypatch):
    """--max_samples is a cap: a 30-story file's bar must not promise 100,000 stories."""
    from src.data import tokenizer_training

    data = tmp_path / "train.txt"
    data.write_text("".join(f"{s}\n{EOS_TOKEN}\n" for s in (TINY_STORIES * 30)[:30]), encoding="utf-8")
    bars = []

    class RecordingBar(tokenizer_training.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tokenizer_training, "tqdm", RecordingBar)
    config = tokenizer_training.TokenizerTrainingConfig(output_dir=str(tmp_path / "tok"), vocab_size=300,
                                                        data=[str(data)], max_samples=100_000, min_frequency=1)
    tokenizer_training.train_tokenizer(config)
    (bar,) = bars
    assert bar.total == bar.n == data.stat().st_size  # the whole file, read to its end
