"""Word start times, durations and confidences from CTC frames.

A CTC frame t is computed from the samples [t * stride, t * stride + receptive_field) (320 and 400 for
the paper's CNN, taken from the model's config). A frame stands for the `stride` samples around the
centre of its window, so frame t spans

    [t * stride + (receptive_field - stride) / 2,  (t + 1) * stride + (receptive_field - stride) / 2)

and a word whose tokens are emitted on frames s .. e-1 starts at the start of frame s and ends at the
end of frame e-1.

A word's confidence is the lowest, over the word's tokens (letters, phones or pieces), of the highest
posterior probability the model gives that token on one of the word's frames: a word is as sure as its
least sure token. It lies in [0, 1] and is 1 only when every token is certain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from w2vtk.text import BLANK_INDEX, SENTENCEPIECE_SPACE, SPECIAL_SYMBOLS, Vocabulary


@dataclass(frozen=True)
class TimedWord:
    """A word with its time in seconds from the start of the audio and its confidence in [0, 1]."""

    word: str
    start: float
    duration: float
    confidence: float

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class WordSpan:
    """A word on the frame axis: its frames [start, end) and the ids of its tokens."""

    word: str
    start: int
    end: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class FrameClock:
    """Seconds of CTC frames, from the CNN's stride and receptive field (in samples)."""

    stride: int
    receptive_field: int
    sample_rate: int = 16000

    @classmethod
    def of(cls, cfg) -> "FrameClock":
        """From a w2vtk.model.ModelConfig."""
        return cls(cfg.frame_stride, cfg.receptive_field)

    @property
    def offset(self) -> float:
        """Seconds from the start of frame 0's window to the start of the time frame 0 stands for."""
        return (self.receptive_field - self.stride) / 2 / self.sample_rate

    @property
    def hop(self) -> float:
        return self.stride / self.sample_rate

    def time(self, frame: int | float) -> float:
        """The start of frame `frame` (or the end of frame `frame - 1`), in seconds."""
        return frame * self.hop + self.offset

    def frame(self, seconds: float) -> int:
        """The frame whose time span holds `seconds` (at least 0)."""
        return max(0, int(np.floor((seconds - self.offset) / self.hop)))


def token_runs(path: np.ndarray) -> list[tuple[int, int, int]]:
    """(frame,) token ids of a CTC path -> (token id, first frame, end frame) of every run of one
    non-blank token; a token repeated across a blank gives two runs, as CTC collapsing does."""
    path = np.asarray(path)
    if len(path) == 0:
        return []
    change = np.flatnonzero(np.diff(path)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(path)]])
    return [(int(path[s]), int(s), int(e)) for s, e in zip(starts, ends) if path[s] != BLANK_INDEX]


def path_spans(path: np.ndarray, vocab: Vocabulary) -> list[WordSpan]:
    """Words of a CTC path with their frames: letters split at `|`, sentencepiece pieces at `▁`, and
    every phone a word. Special symbols are skipped, as `Vocabulary.to_words` skips them."""
    spans: list[WordSpan] = []
    current: list[tuple[int, int, int]] = []

    def close() -> None:
        if current:
            text = "".join(vocab.symbols[i] for i, _, _ in current).replace(SENTENCEPIECE_SPACE, "")
            spans.append(WordSpan(text, current[0][1], current[-1][2], tuple(i for i, _, _ in current)))
            current.clear()

    separator = vocab.index(vocab.word_separator) if vocab.word_separator else None
    for run in token_runs(path):
        token = run[0]
        if token < len(SPECIAL_SYMBOLS):
            continue
        if token == separator:
            close()
            continue
        if vocab.kind == "phn" or (vocab.kind == "sp" and vocab.symbols[token].startswith(SENTENCEPIECE_SPACE)):
            close()
        current.append(run)
    close()
    return spans


def word_confidence(logprobs: np.ndarray, span: WordSpan) -> float:
    """The lowest, over the span's tokens, of the token's highest posterior on the span's frames."""
    frames = logprobs[span.start:span.end]
    if len(frames) == 0 or not span.token_ids:
        return 0.0
    best = frames[:, list(span.token_ids)].max(axis=0)
    return float(np.clip(np.exp(best.min()), 0.0, 1.0))


def timed_words(spans: Sequence[WordSpan], logprobs: np.ndarray, clock: FrameClock,
                first_frame: int = 0) -> list[TimedWord]:
    """Spans over (frame, vocab) log-probabilities -> words with seconds and confidences. `first_frame`:
    the frame index of `logprobs[0]` in the whole recording."""
    out = []
    for span in spans:
        start = clock.time(first_frame + span.start)
        out.append(TimedWord(span.word, round(start, 3), round(clock.time(first_frame + span.end) - start, 3),
                             round(word_confidence(logprobs, span), 4)))
    return out


def spell(word: str, vocab: Vocabulary) -> tuple[int, ...] | None:
    """Token ids of one word: its letters, the phone itself, or the fewest sentencepiece pieces (the
    first `▁`-prefixed). None when the vocabulary cannot spell it."""
    index = {s: i for i, s in enumerate(vocab.symbols)}
    if vocab.kind == "ltr":
        ids = [index.get(c) for c in word]
        return None if None in ids else tuple(ids)
    if vocab.kind == "phn":
        return (index[word],) if word in index else None
    text = SENTENCEPIECE_SPACE + word
    best: list[tuple[int, ...] | None] = [()] + [None] * len(text)  # fewest pieces spelling text[:i]
    for end in range(1, len(text) + 1):
        for start in range(end):
            piece = index.get(text[start:end])
            if piece is not None and best[start] is not None and (
                    best[end] is None or len(best[start]) + 1 < len(best[end])):
                best[end] = best[start] + (piece,)
    return best[-1]


def spans_from_frames(words: Sequence[tuple[str, tuple[int, int]]], vocab: Vocabulary) -> list[WordSpan]:
    """(word, (first frame, end frame)) pairs, as a decoder reports them -> spans with spelled tokens.
    A word that the vocabulary cannot spell keeps its frames, with no tokens (confidence 0)."""
    return [WordSpan(w, int(s), max(int(e), int(s) + 1), spell(w, vocab) or ()) for w, (s, e) in words]
