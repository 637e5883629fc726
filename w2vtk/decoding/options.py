"""What a CTC decoder is asked to do: `DecoderOptions`, and the checks made before any work starts."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from w2vtk.errors import W2vtkError
from w2vtk.text import Vocabulary

DECODERS = ("greedy", "pyctcdecode", "flashlight", "flashlight-lexicon-free")


class DecodingError(W2vtkError):
    """Decoder options that cannot work together, or log-probabilities of the wrong shape."""


@dataclass(frozen=True)
class DecoderOptions:
    """Decoder choice and search settings.

    lm_weight multiplies the LM's log10 probability (fairseq's and the paper's convention: the
    LibriSpeech 4-gram is used with weights around 2); word_score is added per emitted word
    (negative values favour fewer words). Both are in the same units for both beam decoders.
    beam_threshold prunes hypotheses scoring this far below the best (None: each decoder's own
    default, 25 for both flashlight decoders and 10 for pyctcdecode); beam_size_token limits the tokens expanded
    per frame (None: all). token_min_logp: in each frame, tokens less likely than this (natural log)
    are not expanded unless they are the frame's best (pyctcdecode's pruning, -5 by default, applied
    to both beam decoders; None: expand all tokens). Trained CTC models are so peaked that this
    rarely changes a result and makes the search several times faster.
    """

    decoder: str = "greedy"
    lm: str | None = None
    lexicon: str | None = None
    lm_weight: float = 2.0
    word_score: float = -1.0
    beam: int = 50
    beam_threshold: float | None = None
    beam_size_token: int | None = None
    token_min_logp: float | None = -5.0
    unk_score: float = -math.inf
    sil_score: float = 0.0

    def with_weights(self, lm_weight: float, word_score: float) -> "DecoderOptions":
        return dataclasses.replace(self, lm_weight=float(lm_weight), word_score=float(word_score))

    def describe(self) -> str:
        if self.decoder == "greedy":
            return "greedy"
        lm = Path(self.lm).name if self.lm else "no LM"
        return (f"{self.decoder} beam {self.beam}, {lm}, lm_weight {self.lm_weight:g}, "
                f"word_score {self.word_score:g}")


def check_options(options: DecoderOptions, vocab: Vocabulary) -> None:
    """Cheap checks in the calling process, so that bad input fails before worker processes start."""
    from w2vtk.lm import check_lm_file, read_lexicon

    if options.decoder not in DECODERS:
        raise DecodingError(f"unknown decoder {options.decoder!r}; use one of {', '.join(DECODERS)}")
    if options.decoder == "greedy":
        return
    if options.beam < 1:
        raise DecodingError(f"beam {options.beam}: must be at least 1")
    if options.beam_size_token is not None and options.beam_size_token < 1:
        raise DecodingError(f"beam size token {options.beam_size_token}: must be at least 1")
    if options.lm is not None:
        check_lm_file(options.lm)
    if options.lexicon is not None:
        read_lexicon(options.lexicon)
    if options.decoder == "flashlight-lexicon-free":
        if options.lexicon is not None:
            raise DecodingError("the lexicon-free flashlight decoder uses no lexicon: leave out --lexicon, or use "
                                "--decoder flashlight")
        if vocab.word_separator is None:
            raise DecodingError(f"the lexicon-free flashlight decoder needs a word boundary symbol; the model's "
                                f"{vocab.kind} labels have none: use --decoder pyctcdecode")
    if options.decoder == "flashlight" and options.lexicon is None:
        if options.lm is None:
            raise DecodingError("the flashlight decoder needs a lexicon (--lexicon) or an ARPA LM to take "
                                "its words from")
        if check_lm_file(options.lm).kind == "binary":
            raise DecodingError(f"{options.lm}: a KenLM binary has no readable word list for the flashlight "
                                "decoder's lexicon: give --lexicon (`w2vtk lm lexicon`) or the ARPA file")
        if vocab.kind != "ltr":
            raise DecodingError(f"the flashlight decoder spells LM words with letters, but the model's labels "
                                f"are {vocab.kind!r}: give a lexicon (--lexicon) in those units or use "
                                "--decoder pyctcdecode")


def check_logprobs(logprobs: np.ndarray, vocab: Vocabulary, what: str = "log-probabilities") -> np.ndarray:
    """A C-contiguous float32 (frame, vocab) array, or DecodingError saying what is wrong."""
    arr = np.ascontiguousarray(logprobs, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != len(vocab):
        raise DecodingError(f"{what} have shape {tuple(arr.shape)}; expected (frames, {len(vocab)}) for the "
                            f"{len(vocab)}-symbol {vocab.kind} vocabulary")
    return arr


@dataclass
class Hypothesis:
    """One decoder hypothesis with the scores needed to rescore it elsewhere.

    am: the acoustic log-probability (natural log) of its best CTC path; lm: the LM's log10 probability
    of its words, sentence end included (0 without an LM); score: the decoder's own total, by which it
    ranks hypotheses (flashlight: am + lm_weight * lm + word_score * words; pyctcdecode: its combined
    score, which also charges partial and out-of-vocabulary words). spans: the words on the frame axis
    (w2vtk.word_timing.WordSpan), for times and confidences.
    """

    words: list[str]
    am: float
    lm: float
    score: float
    spans: list = dataclasses.field(default_factory=list)

    def record(self) -> dict:
        """The N-best JSON entry: text, am, lm, words (the count), score."""
        return {"text": " ".join(self.words), "am": round(self.am, 4), "lm": round(self.lm, 4),
                "words": len(self.words), "score": round(self.score, 4)}


class CtcDecoder(Protocol):
    """Decodes one utterance's (frame, vocab) log-probabilities to words, or to its `nbest` best
    hypotheses (distinct word sequences, best first; the first gives `decode`'s words)."""

    def decode(self, logprobs: np.ndarray) -> list[str]: ...

    def decode_nbest(self, logprobs: np.ndarray, nbest: int = 1) -> list[Hypothesis]: ...


def distinct(hyps: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    """The first `nbest` hypotheses with distinct words (several CTC paths can spell the same words)."""
    seen, out = set(), []
    for h in hyps:
        key = tuple(h.words)
        if key not in seen:
            seen.add(key)
            out.append(h)
        if len(out) == nbest:
            break
    return out


def symbols_without_specials(vocab: Vocabulary) -> tuple[np.ndarray, list[str]]:
    """Columns of the label symbols (blank first, `<pad>`, `</s>`, `<unk>` left out) and their symbols.

    Beam decoders that only know the blank and label symbols see these columns; the special
    symbols never occur in targets, so their probability is negligible in a trained model.
    """
    from w2vtk.text import BLANK_INDEX, SPECIAL_SYMBOLS

    keep = [BLANK_INDEX] + list(range(len(SPECIAL_SYMBOLS), len(vocab)))
    return np.array(keep, dtype=np.int64), [vocab.symbols[i] for i in keep]

