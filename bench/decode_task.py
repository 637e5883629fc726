"""4-gram beam search over the same CTC log-probabilities: ours against pyctcdecode's defaults.

Log-probabilities are synthetic but shaped like a trained model's: each transcript is laid out as a
CTC path (every letter held for a few frames, blanks between), the path's symbol gets a high logit,
all others Gaussian noise, and some letters are confused with another (the wrong one wins the frame,
the right one stays close), so greedy decoding makes word errors that an LM can repair.

Ours: w2vtk.decoding's flashlight lexicon decoder with its default pruning, over `jobs` processes.
Reference: pyctcdecode's `build_ctcdecoder(labels, arpa)` and `decode(logits, beam_width=50)` with
every other setting at its default (alpha 0.5, beta 1.5, beam_prune_logp -10, token_min_logp -5),
in one process. Ours gets the same LM weight and word bonus in its units (lm_weight multiplies
log10 p, pyctcdecode's alpha multiplies ln p), so the two search for the same best path.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from w2vtk.text import SPECIAL_SYMBOLS, Vocabulary

LETTERS = ["|"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]
PYCTC_ALPHA, PYCTC_BETA = 0.5, 1.5  # pyctcdecode's LanguageModel defaults
BEAM = 50


def vocabulary() -> Vocabulary:
    return Vocabulary(SPECIAL_SYMBOLS + LETTERS, "ltr")


def synthetic_logprobs(text: str, vocab: Vocabulary, rng: np.random.Generator, confusion: float = 0.12,
                       noise: float = 1.5) -> np.ndarray:
    """(frame, vocab) float32 log-probabilities of a confusable CTC path through `text`."""
    # letters with `|` after every word, the last one included, as in the .ltr labels models learn
    tokens = [vocab.index(c) for w in text.split() for c in list(w) + ["|"]]
    letters = [vocab.index(c) for c in LETTERS[1:]]
    path: list[tuple[int, int]] = []  # (frame's symbol, the symbol that wins it)
    path += [(0, 0)] * int(rng.integers(2, 6))
    for tok in tokens:
        shown = tok
        if tok != vocab.index("|") and rng.random() < confusion:
            shown = int(rng.choice([t for t in letters if t != tok]))
        path += [(tok, shown)] * int(rng.integers(1, 4))
        path += [(0, 0)] * int(rng.integers(1, 3))
    path += [(0, 0)] * int(rng.integers(2, 6))
    logits = rng.normal(0.0, noise, size=(len(path), len(vocab))).astype(np.float32)
    logits[:, 1:len(SPECIAL_SYMBOLS)] -= 10.0  # <pad> </s> <unk>: never emitted by a trained model
    for t, (tok, shown) in enumerate(path):
        logits[t, shown] += 9.0
        if shown != tok:
            logits[t, tok] += 8.0
    return (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)


def make_task(cache: Path, corpus: Path, utterances: int, seed: int = 1) -> Path:
    """Write log-probabilities of `utterances` test transcripts and the transcripts to one .npz."""
    from bench.corpus import transcripts

    path = cache / f"decode-{corpus.name}-{utterances}-{seed}.npz"
    if path.exists():
        return path
    texts = [text for _, text in sorted(transcripts(corpus, "test-clean").items())]
    # more utterances than transcripts: the transcripts again, with fresh noise and confusions
    refs = [texts[i % len(texts)] for i in range(utterances)]
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    arrays = {f"u{i}": synthetic_logprobs(text, vocab, rng) for i, text in enumerate(refs)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, refs=np.array(json.dumps(refs)), **arrays)
    tmp.replace(path)
    return path


def load_task(path: str) -> tuple[list[np.ndarray], list[str]]:
    data = np.load(path)
    refs = json.loads(str(data["refs"]))
    return [data[f"u{i}"] for i in range(len(refs))], refs


def word_error_rate(refs: list[str], hyps: list[list[str]]) -> float:
    from w2vtk.scoring import score_corpus

    counts, _ = score_corpus([r.split() for r in refs], hyps)
    return counts.rate()


def build(side: str, spec: dict):
    logprobs, refs = load_task(spec["task"])
    vocab = vocabulary()
    if side == "ours":
        from w2vtk.decoding import DecoderOptions, DecoderPool

        options = DecoderOptions(decoder="flashlight", lm=spec["lm"], beam=BEAM,
                                 lm_weight=PYCTC_ALPHA * math.log(10.0), word_score=PYCTC_BETA)
        pool = DecoderPool(vocab, jobs=spec["jobs"])

        def run():
            hyps = pool.decode(logprobs, options)
            return {"wer": word_error_rate(refs, hyps), "utterances": len(refs)}
        run.close = pool.close
    else:
        from pyctcdecode import build_ctcdecoder

        # pyctcdecode sees the blank ("") and the letters, `|` as a space; not our special symbols
        keep = [0] + list(range(len(SPECIAL_SYMBOLS), len(vocab)))
        labels = [""] + [" " if s == "|" else s for s in LETTERS]
        decoder = build_ctcdecoder(labels, spec["lm"])
        columns = [np.ascontiguousarray(lp[:, keep]) for lp in logprobs]

        def run():
            hyps = [decoder.decode(lp, beam_width=BEAM).split() for lp in columns]
            return {"wer": word_error_rate(refs, hyps), "utterances": len(refs)}
    return run


def greedy_wer(task: str) -> float:
    from w2vtk.decoding.greedy import GreedyDecoder

    logprobs, refs = load_task(task)
    decoder = GreedyDecoder(vocabulary())
    return word_error_rate(refs, [decoder.decode(lp) for lp in logprobs])
