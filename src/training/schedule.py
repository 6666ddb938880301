"""Learning rate: linear warmup, then one cosine decay to `min_lr` at the run's last step.

A pure function of the optimizer step, so resuming needs only the step count: there is no
scheduler object whose state could drift from the optimizer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int  # optimizer steps in the whole run

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based: the first update uses step 0)."""
        warmup = min(self.warmup_steps, self.total_steps)
        if step < warmup:  # (step + 1) so the first update is not wasted at lr = 0
            return self.max_lr * (step + 1) / (warmup + 1)
        decay_steps = max(1, self.total_steps - 1 - warmup)  # min_lr exactly at the last step
        progress = min(1.0, (step - warmup) / decay_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.max_lr - self.min_lr)

    def state_dict(self) -> dict:
        """Recorded in checkpoints for reference; resuming recomputes the schedule from the config."""
        return {"name": "warmup_cosine", "max_lr": self.max_lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}
