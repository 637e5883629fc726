"""Lexicon beam search with a KenLM n-gram through flashlight-text's C++ LexiconDecoder.

This is the paper's decoder (wav2letter's, behind fairseq's `W2lKenLMDecoder` and torchaudio's
`ctc_decoder`): hypotheses advance through a trie of the lexicon's spellings, so only lexicon words
are produced, and the LM scores each word as it completes. Trie nodes carry the best unigram score
of the words below them ("smearing"), which lets the beam compare partial words fairly.

The lexicon comes from a file (`WORD<TAB>W O R D |`, see `w2vtk lm lexicon`) or, for letter labels,
from the ARPA model's unigrams.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from w2vtk.decoding.options import DecoderOptions, DecodingError, Hypothesis
from w2vtk.errors import W2vtkError
from w2vtk.text import BLANK_INDEX, Vocabulary

log = logging.getLogger(__name__)

DEFAULT_BEAM_THRESHOLD = 25.0  # fairseq's and torchaudio's default
UNK_WORD = "<unk>"
# Emission given to pruned tokens: finite, so that a frame whose every continuation is pruned
# penalises all hypotheses alike instead of ending the search.
PRUNED_LOGP = -1e4


@dataclass
class LexiconSearchGraph:
    """The loaded pieces a LexiconDecoder needs: LM, word dictionary, and the smeared spelling trie."""

    lm: object
    word_dict: object
    trie: object
    unk_word: int
    silence: int
    num_words: int


def _lexicon(vocab: Vocabulary, options: DecoderOptions) -> dict[str, list[list[str]]]:
    from w2vtk.lm import arpa_unigrams, letter_spelling, read_lexicon

    if options.lexicon:
        return read_lexicon(options.lexicon)
    return {w: [letter_spelling(w)] for w in arpa_unigrams(options.lm)}


def load_flashlight_kenlm(path, dictionary):
    """flashlight's KenLM over `dictionary` (words, or the model's tokens), with a one-line error naming
    the file when KenLM cannot read it."""
    from flashlight.lib.text.decoder.kenlm import KenLM

    from w2vtk.lm import KENLM_LOAD_ERRORS, kenlm_load_error

    try:
        return KenLM(str(path), dictionary)
    except KENLM_LOAD_ERRORS as e:
        raise kenlm_load_error(path, e) from None


def build_search_graph(vocab: Vocabulary, options: DecoderOptions) -> LexiconSearchGraph:
    """Load the LM and build the trie (seconds for LibriSpeech's 200k-word 4-gram; done once per process)."""
    from flashlight.lib.text.decoder import SmearingMode, Trie, ZeroLM
    from flashlight.lib.text.dictionary import Dictionary

    from w2vtk.lm import check_lm_file

    lexicon = _lexicon(vocab, options)
    word_dict = Dictionary()
    for word in lexicon:
        word_dict.add_entry(word)
    if UNK_WORD not in lexicon:
        word_dict.add_entry(UNK_WORD)
    unk_word = word_dict.get_index(UNK_WORD)
    word_dict.set_default_index(unk_word)
    if options.lm:
        lm = load_flashlight_kenlm(check_lm_file(options.lm).path, word_dict)
    else:
        lm = ZeroLM()
    # fairseq's choice: `|` (letters) is the silence token, else `</s>`, which a CTC head never emits
    silence = vocab.index(vocab.word_separator) if vocab.word_separator else vocab.index("</s>")
    trie = Trie(len(vocab), silence)
    start = lm.start(False)
    skipped: list[str] = []
    for word, spellings in lexicon.items():
        word_idx = word_dict.get_index(word)
        _, score = lm.score(start, word_idx)
        for spelling in spellings:
            try:
                ids = [vocab.index(tok) for tok in spelling]
            except W2vtkError:
                skipped.append(word)
                continue
            trie.insert(ids, word_idx, score)
    if skipped:
        log.warning("%d lexicon words spelled with symbols outside the model's vocabulary were left out "
                    "(e.g. %s)", len(skipped), ", ".join(skipped[:5]))
    if len(skipped) == sum(len(s) for s in lexicon.values()):
        raise DecodingError(f"no lexicon word can be spelled with the model's {vocab.kind} symbols "
                            f"({options.lexicon or options.lm}); give a lexicon in those units")
    trie.smear(SmearingMode.MAX)
    return LexiconSearchGraph(lm, word_dict, trie, unk_word, silence, len(lexicon))


class FlashlightLexiconDecoder:
    def __init__(self, vocab: Vocabulary, options: DecoderOptions, graph: LexiconSearchGraph | None = None):
        """`graph`: an already built search graph to reuse (see parallel.py's cache)."""
        self.graph = graph or build_search_graph(vocab, options)
        self.options = options
        self.vocab = vocab
        self.num_tokens = len(vocab)
        self._decoders: dict[int, object] = {}  # by beam_size_token

    def _decoder(self, tokens_per_frame: int):
        """flashlight expands the `beam_size_token` most likely tokens of each frame; with token pruning
        no more tokens than survive in any frame are worth expanding, so that count is used."""
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions

        if tokens_per_frame not in self._decoders:
            o = self.options
            threshold = o.beam_threshold if o.beam_threshold is not None else DEFAULT_BEAM_THRESHOLD
            fl_options = LexiconDecoderOptions(
                beam_size=o.beam, beam_size_token=tokens_per_frame, beam_threshold=threshold,
                lm_weight=o.lm_weight, word_score=o.word_score, unk_score=o.unk_score, sil_score=o.sil_score,
                log_add=False, criterion_type=CriterionType.CTC)
            self._decoders[tokens_per_frame] = LexiconDecoder(fl_options, self.graph.trie, self.graph.lm,
                                                              self.graph.silence, BLANK_INDEX, self.graph.unk_word,
                                                              [], False)
        return self._decoders[tokens_per_frame]

    def _search(self, logprobs: np.ndarray) -> list:
        """flashlight's final beam for (frame, vocab) log-probabilities with frames, best first."""
        emissions = np.ascontiguousarray(logprobs, dtype=np.float32)
        tokens_per_frame = self.options.beam_size_token or self.num_tokens
        if self.options.token_min_logp is not None:
            emissions, kept = prune_tokens(emissions, self.options.token_min_logp)
            tokens_per_frame = min(tokens_per_frame, kept)
        return self._decoder(tokens_per_frame).decode(emissions.ctypes.data, len(emissions), self.num_tokens)

    def _words(self, result) -> list[str]:
        entry = self.graph.word_dict.get_entry
        return [entry(i) for i in result.words if i >= 0 and i != self.graph.unk_word]

    def decode(self, logprobs: np.ndarray) -> list[str]:
        results = self._search(logprobs) if logprobs.shape[0] else []
        return self._words(results[0]) if results else []

    def decode_nbest(self, logprobs: np.ndarray, nbest: int = 1) -> list[Hypothesis]:
        """Up to `nbest` of the final beam's hypotheses with distinct words, best first (word spans are
        worked out for these only, not for the whole beam)."""
        from w2vtk.word_timing import path_spans

        frames = logprobs.shape[0]
        hyps: list[Hypothesis] = []
        seen: set[tuple[str, ...]] = set()
        for r in self._search(logprobs) if frames else []:
            words = self._words(r)
            if tuple(words) in seen:
                continue
            seen.add(tuple(words))
            # the path has one padding token before the first frame and one after the last
            path = np.asarray(r.tokens[1:frames + 1], dtype=np.int64)
            spans = path_spans(path, self.vocab)
            if [s.word for s in spans] != words:  # a lexicon whose spellings are not the words' letters
                spans = []
            hyps.append(Hypothesis(words, float(r.emittingModelScore), float(r.lmScore), float(r.score), spans))
            if len(hyps) == nbest:
                break
        return hyps or [Hypothesis([], 0.0, 0.0, 0.0)]


def prune_tokens(logprobs: np.ndarray, min_logp: float) -> tuple[np.ndarray, int]:
    """(frame, vocab) log-probabilities with every token below `min_logp`, except each frame's best,
    set to PRUNED_LOGP (pyctcdecode's token_min_logp rule, applied before the C++ search), and the
    largest number of tokens left in a frame."""
    keep = logprobs >= min_logp
    keep[np.arange(len(logprobs)), logprobs.argmax(axis=1)] = True
    pruned = np.where(keep, logprobs, np.float32(PRUNED_LOGP)).astype(np.float32, copy=False)
    return pruned, int(keep.sum(axis=1).max())
