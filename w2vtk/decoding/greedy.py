"""Greedy (best-path) CTC decoding: the most likely symbol per frame, repeats merged, blanks dropped."""
from __future__ import annotations

import numpy as np

from w2vtk.decoding.options import Hypothesis
from w2vtk.text import BLANK_INDEX, Vocabulary


def greedy_ids(logprobs: np.ndarray) -> list[int]:
    """(frame, vocab) scores -> symbol ids of the best path after CTC collapsing."""
    if logprobs.shape[0] == 0:
        return []
    best = logprobs.argmax(axis=1)
    new = np.ones(len(best), dtype=bool)
    new[1:] = best[1:] != best[:-1]
    return [int(i) for i in best[new] if i != BLANK_INDEX]


class GreedyDecoder:
    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab

    def decode(self, logprobs: np.ndarray) -> list[str]:
        return self.vocab.to_words(greedy_ids(logprobs))

    def decode_nbest(self, logprobs: np.ndarray, nbest: int = 1) -> list[Hypothesis]:
        """The best path only: greedy search keeps no alternatives."""
        from w2vtk.word_timing import path_spans

        path = logprobs.argmax(axis=1) if len(logprobs) else np.zeros(0, dtype=np.int64)
        am = float(logprobs.max(axis=1).sum()) if len(logprobs) else 0.0
        words = self.decode(logprobs)
        return [Hypothesis(words, am, 0.0, am, path_spans(path, self.vocab))]
