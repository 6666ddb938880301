"""Exact resume: a run killed with SIGKILL (or stopped with SIGTERM) and resumed with
`--resume auto` logs the same train_loss sequence as a run that was never interrupted."""

import signal
import subprocess
import time

import pytest

from src.model.checkpoint import load_checkpoint
from tests.test_train_helpers import (
    REPO_ROOT,
    make_smoke_data,
    read_metrics,
    smoke_overrides,
    subprocess_env,
    train_command,
    train_losses,
)

STEPS = 150


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(tmp_path_factory.mktemp("resume_data"))


def settings(**extra):
    return dict(training__max_steps=STEPS, training__save_interval=10, training__eval_interval=50,
                logging__log_interval=1, logging__plot=False, **extra)


def start(data, out, *extra):
    return subprocess.Popen(train_command(smoke_overrides(data, out, **settings()), *extra), cwd=REPO_ROOT,
                            env=subprocess_env(threads=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(process, out, step, timeout=90.0):
    """Poll metrics.jsonl until it reaches `step` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [r["step"] for r in read_metrics(out) if "train_loss" in r]
        if steps and steps[-1] >= step:
            assert process.poll() is None, "the run finished before it could be interrupted"
            return steps[-1]
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no step {step} within {timeout}s")


def test_killed_and_terminated_runs_resume_exactly(data, tmp_path):
    """Three runs side by side (one thread each; timing does not change the numbers): one
    uninterrupted, one killed with SIGKILL, one stopped with SIGTERM; then both resume."""
    reference = start(data, tmp_path / "reference")
    killed = start(data, tmp_path / "killed")
    terminated = start(data, tmp_path / "terminated")
    processes = (reference, killed, terminated)
    try:
        for process, out, sig in ((killed, "killed", signal.SIGKILL), (terminated, "terminated", signal.SIGTERM)):
            wait_for_step(process, tmp_path / out, 25)
            process.send_signal(sig)
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert reference.returncode == 0, outputs[0]
    assert killed.returncode == -signal.SIGKILL
    assert terminated.returncode == 143 and "interrupted at step" in outputs[2]  # saved, then exited
    killed_state = load_checkpoint(tmp_path / "killed" / "checkpoint_latest.pth")["training_state"]["progress"]
    assert killed_state["step"] % 10 == 0 and 10 <= killed_state["step"] < STEPS  # the last periodic save
    terminated_state = load_checkpoint(tmp_path / "terminated" / "checkpoint_latest.pth")["training_state"]["progress"]
    assert 25 <= terminated_state["step"] < STEPS  # saved at the step boundary where SIGTERM arrived

    resumed = [start(data, tmp_path / out, "--resume", "auto") for out in ("killed", "terminated")]
    try:
        outputs = [process.communicate(timeout=120)[0] for process in resumed]
    finally:
        for process in resumed:
            if process.poll() is None:
                process.kill()
    for process, output, out, state in zip(resumed, outputs, ("killed", "terminated"), (killed_state, terminated_state)):
        assert process.returncode == 0, output
        assert f"resumed from {tmp_path / out / 'checkpoint_latest.pth'} at step {state['step']}" in output

    expected = train_losses(tmp_path / "reference")
    assert [step for step, _ in expected] == list(range(1, STEPS + 1))
    val = lambda out: [(r["step"], r["val_loss"]) for r in read_metrics(tmp_path / out) if "val_loss" in r]  # noqa: E731
    for out in ("killed", "terminated"):
        assert train_losses(tmp_path / out) == expected  # bit-identical, every step
        assert val(out) == val("reference")
