"""How much word confidences mean: which hypothesis words are right, the area under the ROC curve of
confidence for right against wrong words, and the expected calibration error.

AUC 0.5 is a confidence that says nothing; 1.0 ranks every right word above every wrong one. The
calibration error (ECE) is the gap between confidence and the fraction of right words, averaged over
10 equal-width confidence bins weighted by their word counts: 0 for a perfectly calibrated model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from w2vtk.scoring import Alignment

ECE_BINS = 10


def correct_words(alignment: Alignment) -> list[bool]:
    """For each hypothesis word of an alignment, in order: is it a match?"""
    return [r == h for r, h in alignment.pairs if h is not None]


def roc_auc(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    """P(a right word's confidence > a wrong word's), ties counting half (the Mann-Whitney U statistic
    over the pairs). None when all words are right or all wrong."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    n_right, n_wrong = int(right.sum()), int((~right).sum())
    if n_right == 0 or n_wrong == 0:
        return None
    order = np.argsort(conf, kind="stable")
    ranks = np.empty(len(conf), dtype=np.float64)
    sorted_conf = conf[order]
    # average ranks (1-based) over ties
    starts = np.flatnonzero(np.concatenate([[True], sorted_conf[1:] != sorted_conf[:-1]]))
    ends = np.concatenate([starts[1:], [len(conf)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    u = ranks[right].sum() - n_right * (n_right + 1) / 2
    return float(u / (n_right * n_wrong))


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float | None:
    """Sum over equal-width bins of (words in bin / words) * |mean confidence - fraction right|."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return None
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() / len(conf) * abs(conf[sel].mean() - right[sel].mean())
    return float(total)
