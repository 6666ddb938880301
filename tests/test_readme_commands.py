"""The README's commands use only flags the scripts accept (a documented flag that is rejected
sends a newcomer to a usage error)."""

from __future__ import annotations

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
