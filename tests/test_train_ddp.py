"""torchrun with 2 CPU processes (gloo) matches 1 process with the same global batch."""

import sys

import pytest

from src.model.checkpoint import load_checkpoint
from src.training.config import load_train_config
from src.training.trainer import train
from tests.test_train_helpers import (
    REPO_ROOT,
    SMOKE_CONFIG,
    free_port,
    make_smoke_data,
    read_metrics,
    run,
    set_args,
    smoke_overrides,
    train_losses,
)

SETTINGS = dict(training__max_steps=8, training__grad_accum_steps=2, training__precision="fp32",
                training__eval_interval=4, training__device="cpu", logging__plot=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(tmp_path_factory.mktemp("ddp_data"))


def test_two_gloo_ranks_match_one_process(data, tmp_path):
    two = tmp_path / "two_ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(REPO_ROOT / "train.py"), "--config", str(SMOKE_CONFIG),
               *set_args(smoke_overrides(data, two, training__batch_size=4, **SETTINGS))]
    result = run(command, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("processes 2") == 1  # only rank 0 logs

    one = tmp_path / "one_rank"
    train(load_train_config(SMOKE_CONFIG, smoke_overrides(data, one, training__batch_size=8, **SETTINGS)))

    expected, got = train_losses(one), train_losses(two)
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 9))
    assert [l for _, l in got] == pytest.approx([l for _, l in expected], rel=1e-4)
    val = lambda out: [r["val_loss"] for r in read_metrics(out) if "val_loss" in r]  # noqa: E731
    assert val(two) == pytest.approx(val(one), rel=1e-4) and len(val(two)) == 2

    # rank 0 alone wrote the files; the checkpoint records the rank count and both ranks' RNG states
    assert len(list(two.glob("checkpoint_best_ppl_*.pth"))) == 1
    state = load_checkpoint(two / "checkpoint_latest.pth")["training_state"]
    assert len(state["ranks"]) == 2 and state["progress"]["step"] == 8  # one entry per rank
    assert not any(name.startswith("module.") for name in load_checkpoint(two / "checkpoint_latest.pth")["model_state_dict"])
