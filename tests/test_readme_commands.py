"""The README's commands use only flags the scripts accept (a documented flag that is rejected
sends a newcomer to a usage error)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict

from tests.conftest import REPO_ROOT

SUBCOMMANDS = {"convert_hf.py"}  # scripts whose flags belong to a subcommand


def documented_flags() -> dict[tuple[str, ...], set[str]]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # continued lines
    flags: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for match in re.finditer(r"python3? ([a-z_]+\.py)([^`\n#|]*)", text):
        script = match.group(1)
        if not (REPO_ROOT / script).exists():
            continue
        try:
            words = shlex.split(match.group(2).replace("[", " ").replace("]", " "))
        except ValueError:
            words = match.group(2).split()
        key = (script, words[0]) if script in SUBCOMMANDS and words and not words[0].startswith("-") else (script,)
        flags[key].update(w.split("=")[0] for w in words if w.startswith("--"))
    return flags


HELP_ALL = """
import contextlib, io, json, runpy, sys
texts = {}
for key in json.loads(sys.argv[1]):
    sys.argv = [*key, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(key[0], run_name="__main__")
        except SystemExit:
            pass
    texts[" ".join(key)] = out.getvalue()
print(json.dumps(texts))
"""


def test_every_documented_flag_is_accepted():
    import json

    flags = documented_flags()
    assert ("generate.py",) in flags and ("evaluate_model_enhanced.py",) in flags
    keys = sorted(flags)
    proc = subprocess.run([sys.executable, "-c", HELP_ALL, json.dumps(keys)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    help_texts = json.loads(proc.stdout.splitlines()[-1])
    missing = [f"{' '.join(key)} {name}" for key in keys for name in sorted(flags[key])
               if not re.search(re.escape(name) + r"\b", help_texts[" ".join(key)])]
    assert not missing, f"README documents flags the scripts reject: {missing}"


def test_every_skip_reason_says_what_is_needed_and_how_to_get_it():
    """A skip names what the test needs and how a user gets it, never a folder only this
    project's own machines have."""
    import ast

    reasons = []
    for path in sorted((REPO_ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            texts = [kw.value for kw in node.keywords if kw.arg == "reason"]
            if name == "importorskip" and not texts:  # pytest's own reason names only the module
                reasons.append((path.name, f"importorskip({ast.unparse(node.args[0])}) without a reason"))
            if name == "skip" and node.args:
                texts.append(node.args[0])
            for text in texts:
                parts = [text] if not isinstance(text, ast.JoinedStr) else text.values
                words = "".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
                if isinstance(text, ast.Name):  # a module-level constant
                    words = next(n.value.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == text.id
                                 and isinstance(n.value, ast.Constant))
                if words:
                    reasons.append((path.name, words))
    assert len(reasons) > 10
    for where, reason in reasons:
        assert "shared" not in reason and "not present" not in reason, (where, reason)
        assert any(hint in reason for hint in ("needs", "pip install", "apt-get", "download")), (where, reason)


def test_the_quick_start_makes_a_virtual_environment_and_the_tests_say_how_long_they_take():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    tests = text.split("## Tests", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.+?)\n```", quick_start, re.S).group(1)
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ") and "generate.py" in command
    assert ".venv/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "python3 -m pytest -q" in tests and re.search(r"minutes on 2 cores", tests)


def test_the_first_pre_flight_and_training_examples_run_without_network(tmp_path):
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    for script, extra in (("test_training_setup.py", []),
                          ("train.py", ["--set", f"training.output_dir={tmp_path / 'run'}", "--set",
                                        f"data.cache_dir={tmp_path / 'cache'}", "--set", "training.max_steps=3"])):
        command = re.search(rf"^python ({re.escape(script)} [^#\n]*)", text, re.M).group(1).split()
        proc = subprocess.run([sys.executable, *command, *extra], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
