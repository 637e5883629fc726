"""The decoding benchmarks' task: CTC log-probabilities of the held-out test transcripts, and scoring.

Log-probabilities are synthetic but shaped like a trained model's: each transcript is laid out as a
CTC path (every letter held for a few frames, blanks between), the path's symbol gets a high logit,
all others Gaussian noise, and some letters are confused with another (the wrong one wins the frame,
the right one stays close), so greedy decoding makes word errors that an LM can repair. The
transcripts are those of the synthesized corpus' test-clean, whose sentences lm-text.txt never holds
(`w2vtk synth librispeech` sets them aside), so some of their words are outside the LM's vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from w2vtk.text import SPECIAL_SYMBOLS, Vocabulary

LETTERS = ["|"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]


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


def greedy_wer(task: str) -> float:
    from w2vtk.decoding.greedy import GreedyDecoder

    logprobs, refs = load_task(task)
    decoder = GreedyDecoder(vocabulary())
    return word_error_rate(refs, [decoder.decode(lp) for lp in logprobs])


def oov_rate(refs: list[str], lm_text: Path) -> float:
    """Percentage of the transcripts' words that lm-text.txt never holds."""
    from w2vtk.synth.texts import oov_rate as rate

    vocabulary = {w for line in lm_text.read_text(encoding="utf-8").splitlines() for w in line.split()}
    return rate(refs, vocabulary)


def sentences_in(refs: list[str], lm_text: Path) -> int:
    """How many of the distinct transcripts are sentences of lm-text.txt (0 for held-out text)."""
    lines = set(lm_text.read_text(encoding="utf-8").splitlines())
    return sum(r in lines for r in set(refs))


def ours(vocab: Vocabulary, logprobs: list[np.ndarray], refs: list[str], options, jobs: int):
    """One repetition of our decoding: `options` (a w2vtk.decoding.DecoderOptions) over `jobs` processes,
    scored against `refs`; its `close` ends the pool."""
    from w2vtk.decoding import DecoderPool

    pool = DecoderPool(vocab, jobs=jobs)

    def run():
        hyps = pool.decode(logprobs, options)
        return {"wer": word_error_rate(refs, hyps), "utterances": len(refs)}
    run.close = pool.close
    return run

