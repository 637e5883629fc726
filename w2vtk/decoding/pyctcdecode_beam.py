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

from w2vtk.decoding.options import DecoderOptions, Hypothesis, distinct, symbols_without_specials
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


def build_search(vocab: Vocabulary, options: DecoderOptions):
    """A pyctcdecode BeamSearchDecoderCTC with the LM and its unigram trie loaded (the slow part, done
    once per process; weights are set per call)."""
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel

    from w2vtk.lm import load_kenlm

    _, labels, is_bpe = pyctcdecode_labels(vocab)
    language_model = None
    if options.lm:
        language_model = LanguageModel(load_kenlm(options.lm), lm_unigrams(options))
    return BeamSearchDecoderCTC(Alphabet(labels, is_bpe), language_model)


class PyctcdecodeBeamDecoder:
    def __init__(self, vocab: Vocabulary, options: DecoderOptions, search=None):
        """`search`: an already built `build_search` result to reuse (see parallel.py's cache)."""
        self.options = options
        self.vocab = vocab
        self.keep, _, _ = pyctcdecode_labels(vocab)
        self._search = search or build_search(vocab, options)
        threshold = options.beam_threshold if options.beam_threshold is not None else DEFAULT_BEAM_THRESHOLD
        self._prune = -abs(threshold)

    def _set_weights(self) -> None:
        # pyctcdecode multiplies alpha by ln(10) * log10 p; our lm_weight multiplies log10 p. Set on every
        # call: the search (and its LM) is shared by the decoders of one process.
        self._search.reset_params(alpha=float(self.options.lm_weight / _LN10), beta=float(self.options.word_score))

    def _token_min_logp(self) -> float:
        return -np.inf if self.options.token_min_logp is None else self.options.token_min_logp

    def decode(self, logprobs: np.ndarray) -> list[str]:
        if logprobs.shape[0] == 0:
            return []
        self._set_weights()
        text = self._search.decode(logprobs[:, self.keep], beam_width=self.options.beam,
                                   beam_prune_logp=self._prune, token_min_logp=self._token_min_logp())
        return text.split()

    def decode_nbest(self, logprobs: np.ndarray, nbest: int = 1) -> list[Hypothesis]:
        """Up to `nbest` of the final beam's hypotheses, best first (pyctcdecode merges equal texts)."""
        from w2vtk.word_timing import spans_from_frames

        if logprobs.shape[0] == 0:
            return [Hypothesis([], 0.0, 0.0, 0.0)]
        self._set_weights()
        beams = self._search.decode_beams(logprobs[:, self.keep], beam_width=self.options.beam,
                                          beam_prune_logp=self._prune, token_min_logp=self._token_min_logp())
        model = self._search._language_model
        kenlm_model = getattr(model, "_kenlm_model", None) if model is not None else None
        hyps = []
        for text, _, word_frames, am, total in beams:
            words = text.split()
            lm = float(kenlm_model.score(text, bos=True, eos=True)) if kenlm_model is not None else 0.0
            hyps.append(Hypothesis(words, float(am), lm, float(total), spans_from_frames(word_frames, self.vocab)))
        return distinct(hyps, nbest)
