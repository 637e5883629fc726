"""Span masks over time (and over channels), as wav2vec 2.0 draws them.

Per utterance of unpadded length L the number of spans is int(mask_prob * L / M + U[0, 1)), at least
`min_masks`; span starts are drawn without replacement from [0, L - M) and spans may overlap. fairseq's
`mask_prob` (0.65 for BASE) is the paper's start probability p (0.065) times M (10); we keep fairseq's
name and meaning. With `require_same_masks` every row is then trimmed at random to the batch's smallest
count, so masked frames form a dense (batch, n) block (fairseq's `require_same_masks`).

Randomness comes from one numpy Generator per utterance, so an utterance gets the same mask whichever
batch, rank or micro-batch it lands in (that keeps DDP runs and resumed runs equal to single runs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def span_mask(length: int, mask_prob: float, mask_length: int, min_masks: int,
              rng: np.random.Generator) -> np.ndarray:
    """Masked frame indices (sorted, unique) for one utterance of `length` frames."""
    if length <= 0 or (mask_prob <= 0 and min_masks <= 0):
        return np.zeros(0, dtype=np.int64)
    num = int(mask_prob * length / float(mask_length) + rng.random())
    num = max(min_masks, num)
    span = mask_length
    # As fairseq: when the spans cannot fit, shorten the start range so starts stay distinct.
    if length - span <= num:
        span = max(length - num - 1, 0)
    high = length - span
    if high <= 0:
        return np.zeros(0, dtype=np.int64)
    num = min(num, high)
    starts = rng.choice(high, num, replace=False)
    # A span cannot reach past the utterance: never build offsets beyond its length (mask_length may be huge).
    idx = (starts[:, None] + np.arange(min(mask_length, length))[None, :]).reshape(-1)
    return np.unique(idx[idx < length])


def time_mask(lengths: Sequence[int], total: int, mask_prob: float, mask_length: int, min_masks: int,
              rngs: Sequence[np.random.Generator], require_same_masks: bool = True) -> np.ndarray:
    """Boolean mask of shape (batch, total) over frames; row i only masks within lengths[i]."""
    spans = [span_mask(int(n), mask_prob, mask_length, min_masks, r) for n, r in zip(lengths, rngs)]
    mask = np.zeros((len(spans), total), dtype=bool)
    if not spans:
        return mask
    keep = min(len(s) for s in spans)
    for i, (s, r) in enumerate(zip(spans, rngs)):
        if require_same_masks and len(s) > keep:
            s = r.choice(s, keep, replace=False)
        mask[i, s] = True
    return mask


def channel_mask(batch: int, channels: int, mask_prob: float, mask_length: int,
                 rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Boolean mask of shape (batch, channels): spans of channels zeroed for all frames (fine-tuning)."""
    mask = np.zeros((batch, channels), dtype=bool)
    if mask_prob <= 0:
        return mask
    for i, r in enumerate(rngs):
        mask[i, span_mask(channels, mask_prob, mask_length, 0, r)] = True
    return mask


def utterance_rngs(seed: int, step: int, ids: Sequence[int], stream: int = 0) -> list[np.random.Generator]:
    """One Generator per utterance, keyed by (seed, update step, utterance id, stream)."""
    return [np.random.default_rng([seed, step, int(i), stream]) for i in ids]


def utterance_seeds(seed: int, step: int, ids: Sequence[int], stream: int) -> list[int]:
    """One 63-bit seed per utterance, keyed as `utterance_rngs`, for torch generators on any device."""
    return [int(np.random.SeedSequence([seed, step, int(i), stream]).generate_state(1, np.uint64)[0]) >> 1
            for i in ids]

