"""Lexicon-free beam search over the same CTC log-probabilities: ours against pyctcdecode.

Ours: w2vtk.decoding's `flashlight-lexicon-free` decoder (flashlight's C++ LexiconFreeDecoder) with a
letter 6-gram of lm-text.txt, in `jobs` processes (`DecoderPool`). Reference: pyctcdecode with the
word 4-gram of the same text and its unigrams, `decode_batch` over a pool of `jobs` processes.
Both search with the same beam (50), the same hypothesis pruning (10 below the best: pyctcdecode's
default `beam_prune_logp`) and the same token pruning (tokens under log-probability -5 skipped
unless best in their frame: pyctcdecode's default `token_min_logp`). Each decoder's LM weight and
word score were chosen on a tuning set drawn with another seed (`TUNED`; bench/README.md).
"""
from __future__ import annotations

import math

import numpy as np

from bench import decode_task
from bench.decode_task import LETTERS, load_task, vocabulary, word_error_rate

BEAM = 50
BEAM_THRESHOLD = 10.0
TOKEN_MIN_LOGP = -5.0
# LM weight (on log10 p) and word score of each side: the best of a grid on 150 utterances drawn with
# seed 7 (the timed ones use seed 1); pyctcdecode's alpha 0.5 multiplies ln p
TUNED = {"ours": (4.0, 0.0), "ref": (0.5 * math.log(10.0), 5.0)}


def search(side: str) -> dict:
    lm_weight, word_score = TUNED[side]
    return {"beam": BEAM, "beam_threshold": BEAM_THRESHOLD, "token_min_logp": TOKEN_MIN_LOGP,
            "lm_weight_log10": lm_weight, "word_score": word_score}


def build(side: str, spec: dict):
    logprobs, refs = load_task(spec["task"])
    vocab = vocabulary()
    lm_weight, word_score = TUNED[side]
    if side == "ours":
        from w2vtk.decoding import DecoderOptions

        options = DecoderOptions(decoder="flashlight-lexicon-free", lm=spec["letter_lm"], beam=BEAM,
                                 beam_threshold=BEAM_THRESHOLD, token_min_logp=TOKEN_MIN_LOGP,
                                 lm_weight=lm_weight, word_score=word_score)
        return decode_task.ours(vocab, logprobs, refs, options, spec["jobs"])
    import multiprocessing

    from pyctcdecode import build_ctcdecoder

    from w2vtk.text import SPECIAL_SYMBOLS

    # pyctcdecode sees the blank ("") and the letters, `|` as a space; not our special symbols
    keep = [0] + list(range(len(SPECIAL_SYMBOLS), len(vocab)))
    labels = [""] + [" " if s == "|" else s for s in LETTERS]
    # alpha multiplies ln p: our weights are on log10 p
    decoder = build_ctcdecoder(labels, spec["word_lm"], alpha=lm_weight / math.log(10.0), beta=word_score)
    columns = [np.ascontiguousarray(lp[:, keep]) for lp in logprobs]
    # pyctcdecode's pool must be forked after the decoder is built (its LM is found by the children)
    pool = multiprocessing.get_context("fork").Pool(spec["jobs"]) if spec["jobs"] > 1 else None

    def run():
        texts = decoder.decode_batch(pool, columns, beam_width=BEAM, beam_prune_logp=-BEAM_THRESHOLD,
                                     token_min_logp=TOKEN_MIN_LOGP)
        return {"wer": word_error_rate(refs, [t.split() for t in texts]), "utterances": len(refs)}

    def close():
        if pool is not None:
            pool.terminate()
            pool.join()
    run.close = close
    return run
