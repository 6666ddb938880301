"""generate.py end to end on a tiny checkpoint, and its errors."""

import json
import subprocess
import sys

import pytest

from src.generation.cli import main
from tests.conftest import REPO_ROOT


def run_cli(*args, env=None, stdin=None):
    return subprocess.run(
        [sys.executable, "generate.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, env=env, input=stdin,
    )


def test_json_output_has_text_tokens_finish_reason_and_speed(tiny_checkpoint):
    proc = run_cli("--checkpoint", str(tiny_checkpoint), "--prompt", "Once upon a time", "--max_tokens", "12",
                   "--num-samples", "2", "--seed", "3", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["settings"]["temperature"] == 0.8 and document["preset"] == "balanced"
    samples = document["samples"]
    assert [s["seed"] for s in samples] == [3, 4]
    for sample in samples:
        assert sample["text"].startswith("Once upon a time")
        assert sample["finish_reason"] in ("eos", "length")
        assert 1 <= sample["tokens"] <= 12 and sample["tokens_per_s"] > 0


def test_overrides_and_seed_reproducibility(tiny_checkpoint, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--preset", "creative", "--temperature", "0", "--max-tokens", "10",
            "--json", "--no-postprocess"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["settings"]["temperature"] == 0.0 and first["settings"]["top_k"] == 60
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["samples"][0]["continuation"] == second["samples"][0]["continuation"]  # greedy
    assert first["samples"][0]["text"] == first["samples"][0]["prompt"] + first["samples"][0]["continuation"]


def test_stream_prints_prompt_and_continuation(tiny_checkpoint, capsys):
    assert main(["--checkpoint", str(tiny_checkpoint), "--stream", "--max-tokens", "8", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Once upon a time")
    assert "tokens/s" in out.err


def test_interactive_reads_prompts_until_eof(tiny_checkpoint, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("The happy cat found\nquit\n"))
    assert main(["--checkpoint", str(tiny_checkpoint), "--interactive", "--max-tokens", "5", "--no-postprocess"]) == 0
    assert "The happy cat found" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad_args, message",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--top_k", "-2"], "top_k"),
        (["--max-tokens", "0"], "max_new_tokens"),
        (["--num-samples", "0"], "num-samples"),
        (["--preset", "wild"], "invalid choice"),
        (["--temperature", "hot"], "invalid float"),
    ],
)
def test_bad_flag_values_exit_2_with_a_message(tiny_checkpoint, capsys, bad_args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tiny_checkpoint), *bad_args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_or_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    proc = run_cli("--checkpoint", str(junk))
    assert proc.returncode == 2
    assert "not a readable PyTorch checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_path_env_is_used(tiny_checkpoint):
    import os

    env = {**os.environ, "CHECKPOINT_PATH": str(tiny_checkpoint)}
    proc = run_cli("--max-tokens", "4", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoint"] == str(tiny_checkpoint)


def test_compile_auto_only_for_runs_long_enough_to_repay_it(tiny_checkpoint, monkeypatch):
    from src.generation import cli

    assert cli.build_parser().parse_args([]).compile == "auto"
    assert cli.build_parser().parse_args(["--compile"]).compile == "on"
    assert not cli.wants_compile("auto", 200)  # the default single story stays eager: a quick start
    assert cli.wants_compile("auto", cli.COMPILE_PAYS_OFF_TOKENS)
    assert cli.wants_compile("on", 1) and not cli.wants_compile("off", 10**6)
    chosen = []
    monkeypatch.setattr(cli.Generator, "from_loaded", classmethod(
        lambda cls, loaded, decode="auto": chosen.append(decode) or cls(loaded.model, loaded.tokenizer)))
    assert cli.main(["--checkpoint", str(tiny_checkpoint), "--max-tokens", "3", "--num-samples", "2"]) == 0
    assert cli.main(["--checkpoint", str(tiny_checkpoint), "--max-tokens", "3", "--compile", "off"]) == 0
    assert chosen == ["auto", "auto"]


def test_an_eager_story_never_imports_the_compiler(tiny_checkpoint):
    """torch._dynamo and inductor take most of a second to import; a one-story run needs neither."""
    code = ("import sys; from src.generation.cli import main; "
            f"main(['--checkpoint', {str(tiny_checkpoint)!r}, '--max-tokens', '5', '--seed', '1']); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
