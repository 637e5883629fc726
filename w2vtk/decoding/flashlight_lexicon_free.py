"""Lexicon-free beam search with a token n-gram through flashlight-text's C++ LexiconFreeDecoder.

Hypotheses grow one label symbol at a time and the LM scores every symbol as it is emitted, so the
LM must be over the model's own symbols: for letter labels, a letter n-gram whose sentences are
spelled `T H E | C A T |` (`w2vtk lm train --letters`). Any word the letters can spell can come out,
words the LM text never held included. `word_score` is added at every word boundary (`|`), which
ends each word; `lm_weight` multiplies the LM's log10 probability of each symbol.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2vtk.decoding.flashlight_beam import DEFAULT_BEAM_THRESHOLD, load_flashlight_kenlm, prune_tokens
from w2vtk.decoding.options import DecoderOptions, DecodingError, Hypothesis
from w2vtk.text import BLANK_INDEX, SPECIAL_SYMBOLS, Vocabulary


@dataclass
class TokenSearchGraph:
    """What a LexiconFreeDecoder needs loaded: the token LM and the boundary symbol."""

    lm: object
    separator: int


def check_token_lm(lm_path: str, vocab: Vocabulary) -> None:
    """DecodingError unless the LM's vocabulary holds the model's label symbols (a word LM does not)."""
    from w2vtk.lm import load_kenlm

    model = load_kenlm(lm_path)
    labels = vocab.symbols[len(SPECIAL_SYMBOLS):]
    missing = [s for s in labels if s not in model]
    if len(missing) > len(labels) // 2:
        raise DecodingError(f"{lm_path}: the lexicon-free flashlight decoder needs an LM over the model's "
                            f"{vocab.kind} symbols, but {len(missing)} of its {len(labels)} symbols are not in this "
                            "LM (a word LM?); train one with `w2vtk lm train --letters`")


def build_token_graph(vocab: Vocabulary, options: DecoderOptions) -> TokenSearchGraph:
    """Load the token LM, its symbols indexed as the model's outputs (done once per process)."""
    from flashlight.lib.text.decoder import ZeroLM
    from flashlight.lib.text.dictionary import Dictionary

    from w2vtk.lm import check_lm_file

    if vocab.word_separator is None:
        raise DecodingError(f"the lexicon-free flashlight decoder needs a word boundary symbol; the model's "
                            f"{vocab.kind} labels have none: use --decoder pyctcdecode")
    if options.lm:
        info = check_lm_file(options.lm)
        check_token_lm(str(info.path), vocab)
        tokens = Dictionary()
        for symbol in vocab.symbols:
            tokens.add_entry(symbol)
        lm = load_flashlight_kenlm(info.path, tokens)
    else:
        lm = ZeroLM()
    return TokenSearchGraph(lm, vocab.index(vocab.word_separator))


class FlashlightLexiconFreeDecoder:
    def __init__(self, vocab: Vocabulary, options: DecoderOptions, graph: TokenSearchGraph | None = None):
        """`graph`: an already loaded token LM to reuse (see parallel.py's cache)."""
        self.graph = graph or build_token_graph(vocab, options)
        self.options = options
        self.vocab = vocab
        self._decoders: dict[int, object] = {}  # by beam_size_token

    def _decoder(self, tokens_per_frame: int):
        """As FlashlightLexiconDecoder._decoder: at most as many tokens per frame as survive pruning."""
        from flashlight.lib.text.decoder import CriterionType, LexiconFreeDecoder, LexiconFreeDecoderOptions

        if tokens_per_frame not in self._decoders:
            o = self.options
            threshold = o.beam_threshold if o.beam_threshold is not None else DEFAULT_BEAM_THRESHOLD
            fl_options = LexiconFreeDecoderOptions(
                beam_size=o.beam, beam_size_token=tokens_per_frame, beam_threshold=threshold,
                lm_weight=o.lm_weight, sil_score=o.word_score + o.sil_score, log_add=False,
                criterion_type=CriterionType.CTC)
            self._decoders[tokens_per_frame] = LexiconFreeDecoder(fl_options, self.graph.lm, self.graph.separator,
                                                                  BLANK_INDEX, [])
        return self._decoders[tokens_per_frame]

    def _search(self, logprobs: np.ndarray) -> list:
        """flashlight's final beam for (frame, vocab) log-probabilities with frames, best first."""
        emissions = np.ascontiguousarray(logprobs, dtype=np.float32)
        tokens_per_frame = self.options.beam_size_token or len(self.vocab)
        if self.options.token_min_logp is not None:
            emissions, kept = prune_tokens(emissions, self.options.token_min_logp)
            tokens_per_frame = min(tokens_per_frame, kept)
        return self._decoder(tokens_per_frame).decode(emissions.ctypes.data, len(emissions), len(self.vocab))

    def decode(self, logprobs: np.ndarray) -> list[str]:
        return self.decode_nbest(logprobs, 1)[0].words

    def decode_nbest(self, logprobs: np.ndarray, nbest: int = 1) -> list[Hypothesis]:
        """Up to `nbest` of the final beam's hypotheses with distinct words, best first."""
        from w2vtk.word_timing import path_spans

        frames = logprobs.shape[0]
        hyps: list[Hypothesis] = []
        seen: set[tuple[str, ...]] = set()
        for r in self._search(logprobs) if frames else []:
            # the path has one padding token before the first frame and one after the last
            spans = path_spans(np.asarray(r.tokens[1:frames + 1], dtype=np.int64), self.vocab)
            words = [s.word for s in spans]
            if tuple(words) in seen:
                continue
            seen.add(tuple(words))
            hyps.append(Hypothesis(words, float(r.emittingModelScore), float(r.lmScore), float(r.score), spans))
            if len(hyps) == nbest:
                break
        return hyps or [Hypothesis([], 0.0, 0.0, 0.0)]

