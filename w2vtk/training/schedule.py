"""Learning-rate schedules, as multipliers of the peak LR for update `step` (0-based)."""
from __future__ import annotations

import math

from w2vtk.training.config import OptimConfig


def lr_multiplier(cfg: OptimConfig, step: int) -> float:
    if cfg.scheduler == "polynomial":
        return _warmup_linear_decay(step, cfg.warmup_updates, cfg.max_updates)
    return _tri_stage(step, cfg.max_updates, cfg.phase_ratio, cfg.init_lr_scale, cfg.final_lr_scale)


def _warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """Linear warmup from 0 to 1 over `warmup` updates, then linear decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    remaining = max(total - warmup, 1)
    return max(0.0, 1.0 - (step - warmup) / remaining)


def _tri_stage(step: int, total: int, ratios: tuple[float, float, float], init_scale: float,
               final_scale: float) -> float:
    """Warmup (linear from init_scale to 1), hold at 1, then exponential decay to final_scale.

    fairseq's tri-stage scheduler decays exponentially in the last phase; we follow it.
    """
    warmup = int(total * ratios[0])
    hold = int(total * ratios[1])
    decay = max(int(total * ratios[2]), 1)
    if step < warmup:
        return init_scale + (1.0 - init_scale) * step / warmup
    step -= warmup
    if step < hold:
        return 1.0
    step -= hold
    if step <= decay:
        return math.exp(math.log(final_scale) * step / decay) if final_scale > 0 else max(0.0, 1 - step / decay)
    return final_scale
