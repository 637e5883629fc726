"""Greedy (best-path) CTC decoding: the most likely symbol per frame, repeats merged, blanks dropped."""
from __future__ import annotations

import numpy as np

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
