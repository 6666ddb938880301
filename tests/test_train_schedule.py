"""Learning-rate schedule shape, weight-decay groups, precision and compile choices."""

import math

import pytest
import torch

from src.model.transformer_block import WikiMiniModel
from src.training.compile import compile_wanted
from src.training.config import OptimizerConfig
from src.training.optimizer import build_optimizer, parameter_groups
from src.device import bf16_supported
from src.training.precision import choose_precision
from src.training.schedule import LRSchedule
from tests.conftest import tiny_model_config


def test_linear_warmup_then_cosine_to_min_lr_without_restarts():
    schedule = LRSchedule(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=111)  # decay over steps 10..110
    lrs = [schedule(step) for step in range(111)]
    warmup = lrs[:10]
    assert warmup[0] == pytest.approx(1e-3 / 11) and all(b > a for a, b in zip(warmup, warmup[1:]))
    assert all(b - a == pytest.approx(1e-3 / 11) for a, b in zip(warmup, warmup[1:]))  # linear
    assert lrs[10] == pytest.approx(1e-3)  # the peak right after warmup
    decay = lrs[10:]
    assert all(b <= a for a, b in zip(decay, decay[1:]))  # monotone: no restarts
    assert lrs[-1] == pytest.approx(1e-4)  # min_lr exactly at the last step
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2)  # cosine: half way at the middle of the decay
    assert lrs[35] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.25)) * 9e-4)
    assert min(decay) >= 1e-4 and max(lrs) <= 1e-3
    assert schedule(500) == pytest.approx(1e-4)  # past the end: stays at min_lr


def test_warmup_longer_than_the_run_stays_linear():
    schedule = LRSchedule(max_lr=1.0, min_lr=0.1, warmup_steps=100, total_steps=10)
    lrs = [schedule(step) for step in range(10)]
    assert lrs == pytest.approx([(s + 1) / 11 for s in range(10)])


def test_budgeted_schedule_decays_to_min_lr_at_the_end_of_the_budget():
    schedule = LRSchedule(max_lr=1e-3, min_lr=1e-4, warmup_steps=5, total_steps=None)
    assert schedule(2, progress=0.01) == pytest.approx(1e-3 * 3 / 6)  # warmup counts steps
    assert schedule(100, progress=0.5) == pytest.approx((1e-3 + 1e-4) / 2)
    assert schedule(100, progress=1.0) == pytest.approx(1e-4)
    assert schedule(100, progress=3.0) == pytest.approx(1e-4)  # clamped past the budget
    with pytest.raises(ValueError, match="progress"):
        schedule(100)


def test_a_budget_shorter_than_the_warmup_still_ends_at_min_lr():
    schedule = LRSchedule(max_lr=1e-3, min_lr=1e-4, warmup_steps=2000, total_steps=None)
    # 27 steps fit in the budget: the warmup ends at 10% of it, not after 2,000 steps
    lrs = [schedule(step, progress=(step + 1) / 27) for step in range(27)]
    assert lrs[0] == pytest.approx(1e-3 * (1 / 27) / 0.1)  # the budget's share leads the ramp
    assert max(lrs) <= 1e-3 and lrs[-1] == pytest.approx(1e-4)
    assert schedule(5, progress=0.0) == pytest.approx(1e-3 * 6 / 2001)  # early on, steps lead


def test_warmup_stable_decay_holds_the_peak_then_ramps_linearly():
    schedule = LRSchedule(max_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=None, shape="wsd", decay_fraction=0.25)
    assert [schedule(10, p) for p in (0.0, 0.5, 0.75)] == [1.0, 1.0, 1.0]
    assert schedule(10, 0.875) == pytest.approx(0.5) and schedule(10, 1.0) == pytest.approx(0.0)
    by_steps = LRSchedule(max_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=101, shape="wsd", decay_fraction=0.5)
    assert by_steps(50) == 1.0 and by_steps(75) == pytest.approx(0.5) and by_steps(100) == pytest.approx(0.0)


def test_muon_updates_hidden_matrices_and_adamw_the_rest():
    model = WikiMiniModel(tiny_model_config())
    optimizer = build_optimizer(model, OptimizerConfig(name="muon", lr=1e-3, muon_lr=2e-2), torch.device("cpu"))
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names and all(n.startswith("layers.") and n.endswith("proj.weight") for n in muon_names)
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert "tok_embeddings.weight" in adamw_names and not muon_names & adamw_names
    assert len(muon_names) + len(adamw_names) == len(list(model.parameters()))
    assert [g["lr_ratio"] for g in optimizer.param_groups] == pytest.approx([20.0, 1.0, 1.0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    model(x, x)[1].backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in muon_names)
    state = optimizer.state_dict()
    again = build_optimizer(model, OptimizerConfig(name="muon", lr=1e-3), torch.device("cpu"))
    again.load_state_dict(state)
    assert torch.equal(again.optimizers[0].state[next(iter(muon.state))]["momentum_buffer"],
                       muon.state[next(iter(muon.state))]["momentum_buffer"])
    with pytest.raises(ValueError, match="different optimizer"):
        again.load_state_dict(build_optimizer(model, OptimizerConfig(), torch.device("cpu")).state_dict())


def test_weight_decay_only_on_matrices():
    model = WikiMiniModel(tiny_model_config())
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("norm.weight") for p in no_decay["params"])  # RMSNorm gains
    assert any(names[id(p)] == "tok_embeddings.weight" for p in decay["params"])  # tied with the output
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    optimizer = build_optimizer(model, OptimizerConfig(betas=(0.9, 0.95)), torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.9, 0.95) and not optimizer.defaults["fused"]


def test_precision_choice():
    cpu = torch.device("cpu")
    expected = "bf16" if bf16_supported(cpu) else "fp32"
    assert choose_precision("auto", cpu)[0].name == expected
    assert choose_precision("fp32", cpu)[0].name == "fp32"
    precision, warning = choose_precision("fp16", cpu)  # fp16 + loss scaling is for GPUs: fp32, with a warning
    assert precision.name == "fp32" and "fp16" in warning
    assert choose_precision("bf16", torch.device("mps"))[0].name == "fp32"
    assert not choose_precision("fp32", cpu)[0].grad_scaler().is_enabled()  # a pass-through scaler


def test_precision_on_gpus_old_and_new(monkeypatch):
    import src.training.precision as precision_module

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device: True)
    assert choose_precision("auto", cuda) == (precision_module.Precision("bf16", "cuda"), None)
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device: False)  # e.g. a V100 / T4
    precision, warning = choose_precision("bf16", cuda)
    assert precision.name == "fp16" and "fp16" in warning
    assert choose_precision("auto", cuda)[1] is None


def test_compile_on_by_default_only_for_cuda_on_linux(monkeypatch):
    import src.training.compile as compile_module

    assert not compile_wanted("auto", torch.device("cpu"))
    assert compile_wanted(True, torch.device("cpu")) and not compile_wanted(False, torch.device("cuda"))
    monkeypatch.setattr(compile_module.sys, "platform", "linux")
    assert compile_wanted("auto", torch.device("cuda"))
    monkeypatch.setattr(compile_module.sys, "platform", "win32")
    assert not compile_wanted("auto", torch.device("cuda"))


def test_fp32_newton_schulz_matches_torch_muon_bf16_iteration():
    from src.training.optimizer import _TORCH_NEWTON_SCHULZ, _newton_schulz_fp32

    torch.manual_seed(0)
    for shape in ((48, 16), (16, 48)):
        grad = torch.randn(shape)
        ours = _newton_schulz_fp32(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        theirs = _TORCH_NEWTON_SCHULZ(grad, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        assert ours.dtype == torch.float32 and ours.shape == grad.shape
        assert (ours - theirs).abs().max().item() < 0.05  # bf16 rounding; singular values ~0.5-1.5
        singular = torch.linalg.svdvals(ours)
        assert singular.min() > 0.3 and singular.max() < 1.6  # orthogonalized, not the raw gradient


def test_a_wall_clock_budget_counts_evaluation_too():
    """Validation is CPU time like any other: a 3-hour budget is 3 hours of steps and scoring."""
    from src.training.trainer import RunLength, RunProgress

    length = RunLength(total_steps=None, budget_seconds=100.0)
    assert length.budget_share(RunProgress(train_seconds=30.0, eval_seconds=20.0, compile_seconds=40.0)) == 0.5
    assert not length.reached(RunProgress(train_seconds=70.0, eval_seconds=29.0))
    assert length.reached(RunProgress(train_seconds=70.0, eval_seconds=30.0))
    assert length.remaining_seconds(RunProgress(train_seconds=50.0, eval_seconds=10.0), steps_per_s=1.0) == 40.0
