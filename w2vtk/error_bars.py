"""Error bars on error rates: a bootstrap over utterances, in speaker blocks where speakers are known.

An error rate is a ratio of sums, errors / reference tokens, over a test set whose utterances are not
independent: one speaker's utterances share a voice. So the resampled units are blocks (a speaker's
utterances; one utterance each where the speaker is unknown): a resample draws as many blocks as there
are, with replacement, and its rate is the ratio of the drawn blocks' sums. The 95% interval is the 2.5
and 97.5 percentiles of the resampled rates. Two systems that decoded the same utterances are compared on
the same resamples; `p_better` is the share of resamples in which the first has fewer errors: the
"probability of improvement" of Bisani and Ney (ICASSP 2004).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0
_LIBRISPEECH_ID = re.compile(r"^(\d+)-\d+-\d+$")  # speaker-chapter-utterance


def speaker_of(utt_id: str) -> str:
    """The speaker of an utterance id as `w2vtk decode` writes them: LibriSpeech `spk-chapter-utt`; a
    path with `/` turned into `-` (TIMIT: `TEST-DR1-FAKS0-SA1`, the folder before the file); otherwise
    the utterance itself (its own block)."""
    m = _LIBRISPEECH_ID.match(utt_id)
    if m:
        return m.group(1)
    parts = utt_id.split("-")
    return parts[-2] if len(parts) >= 3 else utt_id


@dataclass(frozen=True)
class BlockCounts:
    """Per-block sums of one system on one test set: errors (B,), reference tokens (B,); `blocks` names them."""

    blocks: tuple[str, ...]
    errors: np.ndarray
    tokens: np.ndarray

    @classmethod
    def from_utterances(cls, utt_ids: Sequence[str], errors: Sequence[int], tokens: Sequence[int]) -> "BlockCounts":
        index: dict[str, int] = {}
        for u in utt_ids:
            index.setdefault(speaker_of(u), len(index))
        e = np.zeros(len(index), dtype=np.float64)
        t = np.zeros(len(index), dtype=np.float64)
        for u, ei, ti in zip(utt_ids, errors, tokens):
            b = index[speaker_of(u)]
            e[b] += ei
            t[b] += ti
        return cls(tuple(index), e, t)


def resample_indices(num_blocks: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, num_blocks) block indices drawn with replacement (the same for every system)."""
    return np.random.default_rng(seed).integers(0, num_blocks, size=(resamples, num_blocks))


def _rates(counts: BlockCounts, draws: np.ndarray) -> np.ndarray:
    """(resamples,) error rates in percent (NaN where a resample holds no reference token)."""
    tokens = counts.tokens[draws].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * counts.errors[draws].sum(1) / tokens


def confidence_interval(counts: BlockCounts, level: float = 0.95, resamples: int = RESAMPLES,
                        seed: int = SEED) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the error rate (%), None for an empty set."""
    if not len(counts.blocks) or counts.tokens.sum() == 0:
        return None
    rates = _rates(counts, resample_indices(len(counts.blocks), resamples, seed))
    rates = rates[np.isfinite(rates)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(low), float(high)


def probability_better(a: BlockCounts, b: BlockCounts, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Paired bootstrap: the share of resamples of the common blocks in which `a` makes fewer errors
    than `b` (ties count half). Both must cover the same blocks."""
    if a.blocks != b.blocks:
        raise ValueError("paired bootstrap needs the same utterances in both systems")
    draws = resample_indices(len(a.blocks), resamples, seed)
    ea, eb = a.errors[draws].sum(1), b.errors[draws].sum(1)
    return float(np.mean(ea < eb) + 0.5 * np.mean(ea == eb))
