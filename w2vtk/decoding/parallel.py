"""Decoding many utterances in worker processes, each of which loads the LM once.

The beam decoders are single-threaded (flashlight's C++ search holds the GIL), so utterances are
spread over processes. A worker keeps its loaded resources (LM, trie, unigram list) between
calls: LM-weight tuning re-runs the search many times with other weights at no loading cost.
Workers are started with "spawn": a forked copy of a process that has run torch can deadlock.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import numpy as np
from tqdm import tqdm

from w2vtk.decoding.options import (CtcDecoder, DecoderOptions, DecodingError, Hypothesis, check_logprobs,
                                    check_options)
from w2vtk.text import Vocabulary

log = logging.getLogger(__name__)

# Per-process cache: resource key -> loaded resources; one entry, as a new LM replaces the old one.
_RESOURCES: dict[tuple, object] = {}
_WORKER_VOCAB: Vocabulary | None = None


def _resources(key: tuple, build):
    if key not in _RESOURCES:
        for old in _RESOURCES.values():
            if hasattr(old, "cleanup"):
                old.cleanup()  # pyctcdecode keeps its LMs in a class-level registry until then
        _RESOURCES.clear()
        _RESOURCES[key] = build()
    return _RESOURCES[key]


def make_decoder(vocab: Vocabulary, options: DecoderOptions) -> CtcDecoder:
    """A decoder for `options`, reusing this process's loaded LM and trie when they match."""
    key = (options.decoder, options.lm, options.lexicon, vocab.kind, tuple(vocab.symbols))
    if options.decoder == "greedy":
        from w2vtk.decoding.greedy import GreedyDecoder

        return GreedyDecoder(vocab)
    if options.decoder == "pyctcdecode":
        from w2vtk.decoding.pyctcdecode_beam import PyctcdecodeBeamDecoder, build_search

        search = _resources(key, lambda: build_search(vocab, options))
        return PyctcdecodeBeamDecoder(vocab, options, search=search)
    if options.decoder == "flashlight-lexicon-free":
        from w2vtk.decoding.flashlight_lexicon_free import FlashlightLexiconFreeDecoder, build_token_graph

        graph = _resources(key, lambda: build_token_graph(vocab, options))
        return FlashlightLexiconFreeDecoder(vocab, options, graph=graph)
    from w2vtk.decoding.flashlight_beam import FlashlightLexiconDecoder, build_search_graph

    graph = _resources(key, lambda: build_search_graph(vocab, options))
    return FlashlightLexiconDecoder(vocab, options, graph=graph)


def _init_worker(vocab: Vocabulary) -> None:
    # Only stores the vocabulary: loading (which can fail on a bad file) happens in the first task,
    # so that the error reaches the caller as it is.
    global _WORKER_VOCAB
    _WORKER_VOCAB = vocab


def _decode_one(decoder: CtcDecoder, logprobs: np.ndarray, nbest: int | None):
    """Words (nbest None) or up to `nbest` hypotheses."""
    return decoder.decode(logprobs) if nbest is None else decoder.decode_nbest(logprobs, nbest)


def _decode_chunk(task: tuple[DecoderOptions, list[np.ndarray], int | None]) -> list:
    options, chunk, nbest = task
    decoder = make_decoder(_WORKER_VOCAB, options)
    return [_decode_one(decoder, lp, nbest) for lp in chunk]


class DecoderPool:
    """Decodes lists of (frame, vocab) log-probability arrays, in `jobs` processes (1: in this one).

    Use as a context manager; `decode` may be called many times with different options.
    """

    def __init__(self, vocab: Vocabulary, jobs: int = 1):
        self.vocab = vocab
        self.jobs = max(1, int(jobs))
        self._pool = None

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def decode(self, logprobs: Sequence[np.ndarray], options: DecoderOptions,
               progress: bool = False) -> list[list[str]]:
        """Words for every utterance, in input order."""
        return self._run(logprobs, options, None, progress)

    def decode_nbest(self, logprobs: Sequence[np.ndarray], options: DecoderOptions, nbest: int = 1,
                     progress: bool = False) -> list[list[Hypothesis]]:
        """Up to `nbest` hypotheses (with scores and word spans) for every utterance, in input order."""
        if nbest < 1:
            raise DecodingError(f"--nbest {nbest}: must be at least 1")
        return self._run(logprobs, options, nbest, progress)

    def _run(self, logprobs: Sequence[np.ndarray], options: DecoderOptions, nbest: int | None,
             progress: bool) -> list:
        check_options(options, self.vocab)
        arrays = [check_logprobs(lp, self.vocab, f"log-probabilities of utterance {i}")
                  for i, lp in enumerate(logprobs)]
        bar = tqdm(total=len(arrays), desc=f"decoding ({options.decoder})", unit="utt", disable=not progress)
        if self.jobs == 1 or options.decoder == "greedy" or len(arrays) < 2:
            decoder = make_decoder(self.vocab, options)
            out = []
            for lp in arrays:
                out.append(_decode_one(decoder, lp, nbest))
                bar.update()
            bar.close()
            return out
        if self._pool is None:
            self._start_pool(options)
        # small chunks keep the workers evenly busy; each carries the options
        size = max(1, min(32, len(arrays) // (self.jobs * 8)))
        tasks = [(options, arrays[i:i + size], nbest) for i in range(0, len(arrays), size)]
        out = []
        try:
            for words in self._pool.map(_decode_chunk, tasks):
                out.extend(words)
                bar.update(len(words))
        except BrokenProcessPool:
            self._pool = None
            raise DecodingError("a decoding process died (out of memory? each loads the LM): use fewer --jobs "
                                "or a KenLM binary LM") from None
        finally:
            bar.close()
        return out

    def _start_pool(self, options: DecoderOptions) -> None:
        if options.lm:
            from w2vtk.lm import check_lm_file

            if check_lm_file(options.lm).kind != "binary":
                log.warning("each of the %d decoding processes loads the ARPA file %s into its own memory; "
                            "a KenLM binary (`w2vtk lm binary`) loads faster and is shared", self.jobs, options.lm)
        self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(self.vocab,))

def decode_batch(logprobs: Sequence[np.ndarray], vocab: Vocabulary, options: DecoderOptions, jobs: int = 1,
                 progress: bool = False) -> list[list[str]]:
    """Decode many utterances in one call: (frame, vocab) log-probabilities -> words per utterance."""
    with DecoderPool(vocab, jobs) as pool:
        return pool.decode(logprobs, options, progress=progress)
