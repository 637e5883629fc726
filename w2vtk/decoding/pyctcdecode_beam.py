"""Lexicon-free beam search with a KenLM n-gram through pyctcdecode (pure Python; the reference
for speed and accuracy comparisons, and the decoder for sentencepiece and phone labels).

pyctcdecode builds words from characters (a space token ends a word) or from `▁`-prefixed pieces.
Our letters map to characters with `|` as the space; sentencepiece pieces are already `▁`-style;
each phone becomes a `▁`-prefixed piece so that every phone is a word (a phone n-gram LM then
scores phone sequences).
"""
from __future__ import annotations

import math

import numpy as np

from w2vtk.decoding.options import DecoderOptions, symbols_without_specials
from w2vtk.text import SENTENCEPIECE_SPACE, Vocabulary

DEFAULT_BEAM_THRESHOLD = 10.0  # pyctcdecode's beam_prune_logp default, negated
_LN10 = math.log(10.0)


def pyctcdecode_labels(vocab: Vocabulary) -> tuple[np.ndarray, list[str], bool]:
    """(columns kept, pyctcdecode labels, BPE style?) for a vocabulary; the blank becomes ""."""
    keep, symbols = symbols_without_specials(vocab)
    labels = [""]
    for s in symbols[1:]:
        if vocab.kind == "ltr":
            labels.append(" " if s == vocab.word_separator else s)
        elif vocab.kind == "phn":
            labels.append(SENTENCEPIECE_SPACE + s)
        else:
            labels.append(s)
    return keep, labels, vocab.kind != "ltr"


def lm_unigrams(options: DecoderOptions) -> list[str] | None:
    """The word list that pyctcdecode uses to score partial words: the lexicon's words, else the ARPA's."""
    from w2vtk.lm import arpa_unigrams, check_lm_file, read_lexicon

    if options.lexicon:
        return list(read_lexicon(options.lexicon))
    if options.lm and check_lm_file(options.lm).kind != "binary":
        return arpa_unigrams(options.lm)
    return None  # pyctcdecode then scores only complete words


class PyctcdecodeBeamDecoder:
    def __init__(self, vocab: Vocabulary, options: DecoderOptions, kenlm_model=None, unigrams=None):
        """`kenlm_model`/`unigrams`: already loaded ones to reuse (see parallel.py's cache)."""
        from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel

        from w2vtk.lm import load_kenlm

        self.options = options
        self.keep, labels, is_bpe = pyctcdecode_labels(vocab)
        language_model = None
        if options.lm:
            if kenlm_model is None:
                kenlm_model = load_kenlm(options.lm)
                unigrams = lm_unigrams(options)
            # pyctcdecode multiplies alpha by ln(10) * log10 p; our lm_weight multiplies log10 p
            language_model = LanguageModel(kenlm_model, unigrams, alpha=options.lm_weight / _LN10,
                                           beta=options.word_score)
        self._decoder = BeamSearchDecoderCTC(Alphabet(labels, is_bpe), language_model)
        threshold = options.beam_threshold if options.beam_threshold is not None else DEFAULT_BEAM_THRESHOLD
        self._prune = -abs(threshold)

    def decode(self, logprobs: np.ndarray) -> list[str]:
        if logprobs.shape[0] == 0:
            return []
        min_logp = self.options.token_min_logp
        text = self._decoder.decode(logprobs[:, self.keep], beam_width=self.options.beam,
                                    beam_prune_logp=self._prune,
                                    token_min_logp=-np.inf if min_logp is None else min_logp)
        return text.split()
