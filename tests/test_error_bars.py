"""Bootstrap intervals and paired comparisons of error rates (w2vtk.error_bars)."""
from __future__ import annotations

import numpy as np

from w2vtk.error_bars import BlockCounts, confidence_interval, probability_better, speaker_of


def test_speakers_of_utterance_ids():
    assert speaker_of("1272-128104-0000") == "1272"  # LibriSpeech: speaker-chapter-utterance
    assert speaker_of("TEST-DR1-FAKS0-SA1") == "FAKS0"  # TIMIT: the speaker's folder
    assert speaker_of("clip7") == "clip7"  # unknown: the utterance is its own block


def _test_set(rng: np.random.Generator, rate: float, speakers: int = 40, utts: int = 8):
    """Utterance ids, errors and tokens of a simulated test set whose true error rate is `rate`: each
    speaker's own rate varies around it (Beta with mean `rate`), token counts vary per utterance."""
    ids, errors, tokens = [], [], []
    for s in range(speakers):
        own = rng.beta(20 * rate, 20 * (1 - rate))
        for u in range(utts):
            n = int(rng.integers(5, 40))
            ids.append(f"{100 + s}-1-{u}")
            tokens.append(n)
            errors.append(int(rng.binomial(n, own)))
    return ids, errors, tokens


def test_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    trials, covered, widths = 300, 0, []
    for i in range(trials):
        counts = BlockCounts.from_utterances(*_test_set(rng, 0.12))
        low, high = confidence_interval(counts, resamples=400, seed=i)
        covered += low <= 12.0 <= high
        widths.append(high - low)
    assert 0.90 <= covered / trials <= 0.99, covered / trials
    assert 2.0 < np.mean(widths) < 8.0, np.mean(widths)


def test_speaker_blocks_widen_the_interval():
    """Errors that cluster by speaker: treating utterances as independent would understate the spread."""
    rng = np.random.default_rng(0)
    ids, errors, tokens = _test_set(rng, 0.2)
    by_speaker = confidence_interval(BlockCounts.from_utterances(ids, errors, tokens))
    by_utterance = confidence_interval(BlockCounts.from_utterances([f"u{i}" for i in range(len(ids))], errors, tokens))
    assert by_speaker[1] - by_speaker[0] > by_utterance[1] - by_utterance[0]


def test_paired_probability_that_a_system_is_better():
    rng = np.random.default_rng(1)
    ids, errors, tokens = _test_set(rng, 0.2)
    base = BlockCounts.from_utterances(ids, errors, tokens)
    fewer = BlockCounts.from_utterances(ids, [max(e - 1, 0) for e in errors], tokens)  # clearly better
    assert probability_better(fewer, base) > 0.99
    assert probability_better(base, fewer) < 0.01
    assert probability_better(base, base) == 0.5  # no difference: a tie on every resample
    # A small random change is not a sure improvement.
    noisy = BlockCounts.from_utterances(ids, [e + int(rng.integers(-1, 2)) if e else e for e in errors], tokens)
    assert 0.02 < probability_better(noisy, base) < 0.98
