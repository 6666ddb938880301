"""Learning rate: linear warmup, then a decay to `min_lr` that ends where the run ends.

A run ends either at a step count (`total_steps`) or at a wall-clock budget
(`training.max_minutes`). For a budgeted run the trainer passes `progress`, the share of the
budget already spent, so a 15-minute run decays to `min_lr` at 15 minutes however many steps
fit in it: that is what makes recipes comparable at equal time.

Two decay shapes:
    cosine  one half cosine from `max_lr` to `min_lr` (the reference default)
    wsd     warmup-stable-decay: `max_lr` until the last `decay_fraction` of the run, then a
            linear ramp to `min_lr` (MiniCPM, "Scaling Laws and Compute-Optimal Training
            Beyond Fixed Training Durations")

In a budgeted run the warmup ends after `warmup_steps` or after BUDGET_WARMUP_SHARE of the
budget, whichever comes first: however few steps fit, the decay still reaches `min_lr` at the end.

The rate is a pure function of (step, progress), so resuming needs only those two numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("cosine", "wsd")
BUDGET_WARMUP_SHARE = 0.1  # a budgeted run's warmup ends by this share of the budget at the latest


@dataclass(frozen=True)
class LRSchedule:
    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int | None  # optimizer steps in the whole run; None for a budgeted run
    shape: str = "cosine"
    decay_fraction: float = 0.2  # wsd: share of the run spent decaying

    def __call__(self, step: int, progress: float | None = None) -> float:
        """Rate for optimizer step `step` (0-based); `progress` in [0, 1] is the budget spent."""
        warmup = self.warmup_steps if self.total_steps is None else min(self.warmup_steps, self.total_steps)
        if step < warmup:  # (step + 1) so the first update is not wasted at lr = 0
            ramp = (step + 1) / (warmup + 1)
            if self.total_steps is None and progress is not None:  # budgeted: by steps or by time
                ramp = max(ramp, progress / BUDGET_WARMUP_SHARE)
            if ramp < 1.0:
                return self.max_lr * ramp
        if progress is None:
            if self.total_steps is None:
                raise ValueError("a schedule without total_steps needs the run's progress")
            decay_steps = max(1, self.total_steps - 1 - warmup)  # min_lr exactly at the last step
            progress = (step - warmup) / decay_steps
        progress = min(1.0, max(0.0, progress))
        if self.shape == "wsd":
            stable = 1.0 - self.decay_fraction
            if progress <= stable:
                return self.max_lr
            return self.max_lr + (progress - stable) / self.decay_fraction * (self.min_lr - self.max_lr)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.max_lr - self.min_lr)
