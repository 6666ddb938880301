"""evaluate_model.py and evaluate_model_enhanced.py end to end on a tiny checkpoint, and their errors."""

import json
import subprocess
import sys

import pytest

import evaluate_model
import evaluate_model_enhanced
from src.evaluation.stories import DEFAULT_PROMPTS
from src.generation.presets import PRESETS
from tests.conftest import REPO_ROOT, TINY_STORIES
from tests.test_evaluation_heldout import write_validation_text

FAST = ["--num-samples", "1", "--max-tokens", "6", "--device", "cpu"]


def test_evaluate_model_end_to_end(tiny_checkpoint, tmp_path, capsys):
    valid = write_validation_text(tmp_path / "valid.txt", TINY_STORIES)
    out = tmp_path / "report" / "eval.json"
    code = evaluate_model.main(["--checkpoint", str(tiny_checkpoint), "--data", str(valid), "--cache-dir",
                                str(tmp_path / "cache"), "--seed", "7", "--json", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    for words in ("perplexity", "bits per byte", "articles", "grammar", "unique-word ratio", "ended with EOS"):
        assert words in printed

    document = json.loads(out.read_text(encoding="utf-8"))
    heldout = document["heldout"]
    assert heldout["perplexity"] > 1 and heldout["bits_per_byte"] > 0 and heldout["windows"] >= 1
    generation = document["generation"]
    for key in ("articles_per_100_words", "article_presence", "grammar_raw", "grammar_postprocessed",
                "unique_word_ratio", "distinct_1", "distinct_2", "longest_repeated_ngram_max", "eos_rate",
                "mean_tokens", "tokens_per_s"):
        assert key in generation
    samples = document["samples"]
    assert [s["prompt"] for s in samples] == list(DEFAULT_PROMPTS)
    assert all(s["seed"] == 7 and 1 <= s["tokens"] <= 6 for s in samples)
    assert document["sampling"]["temperature"] == PRESETS["balanced"].temperature
    assert not list(out.parent.glob("*.tmp"))  # written atomically, nothing left behind


def test_held_out_part_can_be_skipped_and_prompts_read_from_a_file(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The dog\nA cat\n", encoding="utf-8")
    out = tmp_path / "eval.json"
    code = evaluate_model.main(["--checkpoint", str(tiny_checkpoint), "--data", "none", "--prompts", str(prompts),
                                "--json", str(out), *FAST])
    assert code == 0 and "perplexity" not in capsys.readouterr().out
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["heldout"] is None and [s["prompt"] for s in document["samples"]] == ["The dog", "A cat"]


@pytest.mark.parametrize("problem", ["missing checkpoint", "missing data", "empty prompts", "bad flag value"])
def test_bad_input_is_one_line_and_a_nonzero_exit(problem, tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--data", "none", *FAST]
    if problem == "missing checkpoint":
        args[1] = str(tmp_path / "nope.pth")
    elif problem == "missing data":
        args[3] = str(tmp_path / "nope.txt")
    elif problem == "empty prompts":
        (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
        args += ["--prompts", str(tmp_path / "empty.txt")]
    else:
        args += ["--num-samples", "0"]
    assert evaluate_model.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate_model.py: error:") and len(err.splitlines()) == 1, err


def test_scripts_report_bad_input_without_a_traceback(tmp_path):
    for script in ("evaluate_model.py", "evaluate_model_enhanced.py"):
        proc = subprocess.run([sys.executable, script, "--checkpoint", str(tmp_path / "missing.pth"),
                               "--out-dir" if "enhanced" in script else "--json", str(tmp_path / "out")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert not (tmp_path / "out").exists()
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and "checkpoint not found" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_enhanced_compares_the_presets_and_writes_every_report(tiny_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    code = evaluate_model_enhanced.main(["--checkpoint", str(tiny_checkpoint), "--out-dir", str(out_dir), *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert all(name in printed for name in PRESETS) and "Best preset:" in printed

    document = json.loads((out_dir / "preset_comparison.json").read_text(encoding="utf-8"))
    assert set(document["presets"]) == set(PRESETS) and document["best_preset"] in PRESETS
    best_quality = document["presets"][document["best_preset"]]["quality"]
    assert best_quality == max(p["quality"] for p in document["presets"].values())
    assert len(document["samples"]) == len(PRESETS) * len(DEFAULT_PROMPTS)
    # the same seeds for every preset, so the comparison is like for like
    assert {s["seed"] for s in document["samples"]} == {42}

    markdown = (out_dir / "preset_comparison.md").read_text(encoding="utf-8")
    assert "Best preset" in markdown and "raw vs post-processed" in markdown and "preset_comparison.png" in markdown
    assert (out_dir / "preset_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_enhanced_rejects_an_empty_prompts_file(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    code = evaluate_model_enhanced.main(["--checkpoint", str(tiny_checkpoint), "--prompts", str(tmp_path / "empty.txt"),
                                         "--out-dir", str(tmp_path / "out"), *FAST])
    assert code == 2 and "holds no prompts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
