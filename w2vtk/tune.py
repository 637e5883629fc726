"""LM-weight tuning: search the LM weight and word score that minimise WER (PER) on a dev subset.

The acoustic log-probabilities are computed once (and cached on disk per checkpoint and subset);
each trial re-runs only the beam search, in worker processes that keep the LM loaded. The paper
tuned the 4-gram's weight in [0, 5] and the word insertion score in [-5, 5] with 128 trials.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from w2vtk.decoding import DecoderOptions, DecoderPool, check_options
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.scoring import ErrorCounts, score_corpus

log = logging.getLogger(__name__)

SEARCHES = ("random", "grid")


@dataclass(frozen=True)
class Trial:
    lm_weight: float
    word_score: float
    counts: ErrorCounts

    @property
    def rate(self) -> float:
        rate = self.counts.rate()
        return math.inf if rate is None else rate


def trial_points(trials: int, lm_weight_range: tuple[float, float], word_score_range: tuple[float, float],
                 search: str = "random", seed: int = 1) -> list[tuple[float, float]]:
    """(lm_weight, word_score) pairs: `trials` uniform random points, or an even grid of at most
    `trials` points (as square as the count allows)."""
    (w0, w1), (b0, b1) = lm_weight_range, word_score_range
    if trials < 1:
        raise W2vtkError(f"--trials {trials}: must be at least 1")
    if w0 > w1 or b0 > b1:
        raise W2vtkError(f"empty search range: lm weight {w0}..{w1}, word score {b0}..{b1} (give LOW HIGH)")
    if search == "random":
        rng = np.random.default_rng(seed)
        return [(round(float(rng.uniform(w0, w1)), 4), round(float(rng.uniform(b0, b1)), 4)) for _ in range(trials)]
    if search != "grid":
        raise W2vtkError(f"unknown search {search!r}; use one of {', '.join(SEARCHES)}")
    if w0 < w1 and b0 < b1:  # the LM weight matters more: it gets the larger side
        n_w = math.ceil(math.sqrt(trials))
        n_b = max(1, trials // n_w)
    else:
        n_w, n_b = (trials, 1) if w0 < w1 else (1, trials if b0 < b1 else 1)
    weights = np.linspace(w0, w1, n_w) if n_w > 1 else np.array([(w0 + w1) / 2])
    scores = np.linspace(b0, b1, n_b) if n_b > 1 else np.array([(b0 + b1) / 2])
    return [(round(float(w), 4), round(float(b), 4)) for w in weights for b in scores]


def _check_tunable(options: DecoderOptions, vocab) -> None:
    check_options(options, vocab)
    if options.decoder == "greedy" or not options.lm:
        raise W2vtkError("tuning the LM weight needs a beam decoder (--decoder) and an LM (--lm)")


def tune_weights(logprobs: Sequence[np.ndarray], refs: Sequence[Sequence[str]], vocab, options: DecoderOptions,
                 points: Sequence[tuple[float, float]], jobs: int = 1, to_tokens=None,
                 progress: bool = True) -> list[Trial]:
    """Decode the set once per (lm_weight, word_score) point and count errors; trials in point order.

    `to_tokens(words) -> tokens` maps hypotheses to scored tokens (phone folding); default: words.
    """
    from tqdm import tqdm

    _check_tunable(options, vocab)
    trials: list[Trial] = []
    with DecoderPool(vocab, jobs) as pool:
        for w, b in tqdm(points, desc="LM-weight trials", unit="trial", disable=not progress):
            words = pool.decode(logprobs, options.with_weights(w, b))
            hyps = [to_tokens(x) for x in words] if to_tokens else words
            total, _ = score_corpus(refs, hyps)
            trials.append(Trial(w, b, total))
            log.info("lm_weight %.4g word_score %.4g: %.2f%%", w, b, trials[-1].rate)
    return trials


def best_trial(trials: Sequence[Trial]) -> Trial:
    """Lowest error rate; ties go to the earlier trial."""
    return min(enumerate(trials), key=lambda it: (it[1].rate, it[0]))[1]


def trials_table(trials: Sequence[Trial], metric: str) -> str:
    """A TSV table of the trials, in the order run, the best marked with `*`."""
    best = best_trial(trials)
    lines = [f"trial\tlm_weight\tword_score\t{metric}\terrors\tsub\tdel\tins\tbest"]
    for i, t in enumerate(trials, 1):
        lines.append(f"{i}\t{t.lm_weight:g}\t{t.word_score:g}\t{t.rate:.4f}\t{t.counts.errors}\t{t.counts.sub}\t"
                     f"{t.counts.dels}\t{t.counts.ins}\t{'*' if t is best else ''}")
    return "\n".join(lines) + "\n"


def tune_lm(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, subset: str, out: str | os.PathLike,
            options: DecoderOptions, trials: int = 32, lm_weight_range: tuple[float, float] = (0.0, 5.0),
            word_score_range: tuple[float, float] = (-5.0, 5.0), search: str = "random", seed: int = 1,
            jobs: int = 1, cache_dir: str | os.PathLike | None = None, max_tokens: int | None = None,
            batch_size: int | None = None, fold_phones: bool = True, keep_sil: bool = True,
            device: str | None = None) -> dict:
    """Tune on `DATA/<subset>`; write `out` (JSON: best lm_weight, word_score and its error rate) and
    the trials table beside it (`<out stem>.trials.tsv`). Returns the JSON's content."""
    from w2vtk.decode import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, cached_logprobs, load_acoustic_model,
                              metric_for, read_references, scoring_tokens)
    from w2vtk.manifest import read_manifest

    out = Path(out)
    points = trial_points(trials, lm_weight_range, word_score_range, search, seed)
    am = load_acoustic_model(checkpoint, device)
    _check_tunable(options, am.vocab)  # before the acoustic model's work
    manifest = read_manifest(Path(data_dir) / f"{subset}.tsv")
    refs = read_references(data_dir, subset, manifest, am.vocab, fold_phones, keep_sil)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / "logprobs-cache"
    logprobs = cached_logprobs(am, manifest, cache_dir, max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                               batch_size=batch_size or DEFAULT_BATCH_SIZE)
    metric = metric_for(am.vocab)
    results = tune_weights(logprobs, refs, am.vocab, options, points, jobs,
                           to_tokens=lambda w: scoring_tokens(w, am.vocab, fold_phones, keep_sil))
    best = best_trial(results)
    table = out.with_name(f"{out.stem}.trials.tsv")
    atomic_write_text(table, trials_table(results, metric))
    summary = {"lm_weight": best.lm_weight, "word_score": best.word_score, metric: round(best.rate, 4),
               "errors": best.counts.errors, "ref_tokens": best.counts.ref_tokens, "subset": subset,
               "trials": len(results), "search": search, "lm_weight_range": list(lm_weight_range),
               "word_score_range": list(word_score_range), "decoder": options.decoder, "beam": options.beam,
               "lm": options.lm, "lexicon": options.lexicon, "checkpoint": str(checkpoint),
               "trials_table": table.name}
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    return summary
