"""Lexicon beam search over the same CTC log-probabilities: ours against torchaudio's `ctc_decoder`.

Both are flashlight's C++ LexiconDecoder behind a Python front: ours is w2vtk.decoding's `flashlight`
decoder, the reference torchaudio.models.decoder.ctc_decoder. Both get the same lexicon file (every
word of the 4-gram, spelled `W O R D |`), the same ARPA 4-gram, the same beam (50), hypothesis
threshold (25), LM weight, word score, unknown-word score (-inf: lexicon words only) and silence
score, every token expanded in every frame (ours without its token pruning), so both run the same
search and must give the same words. Both run `jobs` processes: ours its `DecoderPool`, torchaudio's
decoder one per process of a pool of the same size, fed the same chunks of utterances.
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench import decode_task
from bench.decode_task import load_task, vocabulary, word_error_rate

SEARCH = {"beam": 50, "beam_threshold": 25.0, "lm_weight_log10": 2.0, "word_score": -1.0, "unk_score": -math.inf,
          "sil_score": 0.0, "token_min_logp": None, "beam_size_token": None}

_DECODER = None  # torchaudio's decoder of this pool process


def search() -> dict:
    return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in SEARCH.items()}


def _chunks(arrays: list, jobs: int) -> list[list]:
    """The chunks DecoderPool cuts (small ones keep the processes evenly busy)."""
    size = max(1, min(32, len(arrays) // (jobs * 8)))
    return [arrays[i:i + size] for i in range(0, len(arrays), size)]


def _torchaudio_decoder(lexicon: str, lm: str):
    from torchaudio.models.decoder import ctc_decoder

    s = SEARCH
    return ctc_decoder(lexicon=lexicon, tokens=vocabulary().symbols, lm=lm, nbest=1, beam_size=s["beam"],
                       beam_size_token=s["beam_size_token"], beam_threshold=s["beam_threshold"],
                       lm_weight=s["lm_weight_log10"], word_score=s["word_score"], unk_score=s["unk_score"],
                       sil_score=s["sil_score"], log_add=False, blank_token="<s>", sil_token="|", unk_word="<unk>")


def _start_torchaudio(lexicon: str, lm: str) -> None:
    global _DECODER
    _DECODER = _torchaudio_decoder(lexicon, lm)


def _torchaudio_words(chunk: list[np.ndarray]) -> list[list[str]]:
    import torch

    out = []
    for lp in chunk:
        hyps = _DECODER(torch.from_numpy(lp).unsqueeze(0))[0]
        out.append([w for w in hyps[0].words if w != "<unk>"] if hyps else [])
    return out


def build(side: str, spec: dict):
    logprobs, refs = load_task(spec["task"])
    vocab = vocabulary()
    s = SEARCH
    if side == "ours":
        from w2vtk.decoding import DecoderOptions

        options = DecoderOptions(decoder="flashlight", lm=spec["word_lm"], lexicon=spec["lexicon"], beam=s["beam"],
                                 beam_threshold=s["beam_threshold"], beam_size_token=s["beam_size_token"],
                                 token_min_logp=s["token_min_logp"], lm_weight=s["lm_weight_log10"],
                                 word_score=s["word_score"], unk_score=s["unk_score"], sil_score=s["sil_score"])
        return decode_task.ours(vocab, logprobs, refs, options, spec["jobs"])
    jobs = spec["jobs"]
    if jobs > 1:  # spawned, as DecoderPool's: torch is imported in this process
        executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_torchaudio, initargs=(spec["lexicon"], spec["word_lm"]))
    else:
        _start_torchaudio(spec["lexicon"], spec["word_lm"])

    def run():
        if jobs > 1:
            hyps = [words for chunk in executor.map(_torchaudio_words, _chunks(logprobs, jobs)) for words in chunk]
        else:
            hyps = _torchaudio_words(logprobs)
        return {"wer": word_error_rate(refs, hyps), "utterances": len(refs)}
    if jobs > 1:
        run.close = lambda: executor.shutdown(wait=True, cancel_futures=True)
    return run
