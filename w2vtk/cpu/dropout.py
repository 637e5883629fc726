"""Dropout with a cheaper mask on CPUs.

torch's CPU dropout draws one Bernoulli sample per element, the largest element-wise cost of a
training step. Here the mask comes from 16 random bits per element (torch's generator, 64 bits per
draw, viewed as four int16), compared with a threshold: the drop probability is p rounded to a
multiple of 2**-16 (0.1 becomes 0.100006), and kept values are scaled by the exact
1 / (1 - that probability), so the expectation is unchanged. torch.manual_seed and saved generator
states decide the bits. Other devices keep torch's kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16  # an int16 holds 16 random bits: [-2**15, 2**15)


def _random_int16(shape: torch.Size) -> Tensor:
    """Uniform over all int16 values, four to each 64-bit draw of torch's generator."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # the full 64-bit range
    return words.view(torch.int16)[:n].view(shape)


def draws_cheap_mask(x: Tensor, p: float) -> bool:
    """Whether `keep_mask_into` serves dropout of x with probability p (on a CPU, p short of 1)."""
    return x.device.type == "cpu" and 0.0 < p and round(p * _LEVELS) < _LEVELS


def keep_mask_into(out: Tensor, p: float) -> float:
    """Writes 1 (keep) or 0 (drop) into each element of `out`, a contiguous CPU tensor of any float
    dtype, dropping with probability p rounded to a multiple of 2**-16. Returns the scale of the kept
    values, 1 / (1 - that probability)."""
    dropped = round(p * _LEVELS)  # values below -2**15 + dropped are dropped
    torch.ge(_random_int16(out.shape), dropped - _LEVELS // 2, out=out)  # the 0/1 mask in out's dtype
    return _LEVELS / (_LEVELS - dropped)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), with the mask drawn as above on a CPU."""
    if not training or p <= 0.0:
        return x
    if not draws_cheap_mask(x, p):
        return F.dropout(x, p, training=True)
    keep = torch.empty_like(x, memory_format=torch.contiguous_format)
    return x * keep.mul_(keep_mask_into(keep, p))


class CheapDropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
