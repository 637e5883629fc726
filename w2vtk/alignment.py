"""Forced alignment of known transcripts to CTC frames.

    transcript tokens (letters with `|`, phones) + (frame, vocab) log-probabilities
        --(Viterbi over the CTC graph of exactly those tokens, the search of
          torchaudio.functional.forced_align with ties broken to a best path; for letters the word
          separator also stands for pauses)--> one token or blank per frame
        --(w2vtk.word_timing)--> timed words and tokens

`align_subset` aligns a prepared subset and writes words.ctm, tokens.ctm and one Praat TextGrid per
utterance; for TIMIT it also measures the phone boundaries against the corpus' .PHN files.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from w2vtk.errors import W2vtkError
from w2vtk.text import BLANK_INDEX, SPECIAL_SYMBOLS, Vocabulary
from w2vtk.word_timing import FrameClock, TimedWord, WordSpan, path_spans, spell, timed_words, token_runs

log = logging.getLogger(__name__)


class AlignmentError(W2vtkError):
    """A transcript that cannot be aligned: symbols outside the vocabulary, or too little audio."""


def forced_path(logprobs: np.ndarray, token_ids: Sequence[int], separator: int | None = None) -> np.ndarray:
    """(frame, vocab) log-probabilities and the transcript's token ids -> (frame,) the token (or blank)
    each frame takes on the most likely CTC path that spells exactly those tokens.

    `separator`: the word separator `|` of letter transcripts. Models fine-tuned on `.ltr` lines (which
    end with `|`, on the trailing silence) emit it on pauses, at their edges or throughout; the path
    takes a pause as the separator between two words, not as part of a word:
      - a pause before the first word: the separator may also come first (when that path is the more
        likely one); otherwise that pause could only be blank or the first word's first letter;
      - a pause with `|` at both edges and blanks between (`||___||`, two separators to greedy
        decoding): each of the separator's frames may be `|` or blank (the better of the two scores
        it), so the whole pause is the one separator between the two words (the path gives it `|`
        throughout) and its middle is not pushed onto one.

    Needs at least one frame per token plus one per pair of equal neighbours (the blank between).
    """
    ids = [int(i) for i in token_ids]
    need = len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))
    if len(logprobs) < need:
        raise AlignmentError(f"{len(logprobs)} frames for {len(ids)} tokens (at least {need} needed)")
    if not ids:
        return np.full(len(logprobs), BLANK_INDEX, dtype=np.int64)
    if separator is None:
        return ctc_viterbi(logprobs, ids)[0]
    emission = np.array(logprobs, dtype=np.float64)
    emission[:, separator] = np.maximum(emission[:, separator], emission[:, BLANK_INDEX])
    led = ids[0] != separator
    return ctc_viterbi(emission, [separator] + ids if led else ids, optional_first=led)[0]


def ctc_viterbi(emission: np.ndarray, ids: Sequence[int], optional_first: bool = False) -> tuple[np.ndarray, float]:
    """(frame, vocab) scores and a token sequence -> (frame,) the token (or blank) of each frame on the
    best-scoring CTC path that spells the sequence, and that path's score.

    The search torchaudio.functional.forced_align does (states: a blank before, between and after the
    tokens; each frame stays in its state or moves on by one, or by two past a blank between different
    tokens), with each state taking a best predecessor. forced_align takes the state's own previous
    score when its two other predecessors tie, a worse path; exact ties are common here: saturated
    posteriors give log-probabilities of exactly 0, and the separator's frames score as the better of
    `|` and blank. `optional_first`: the path may also start past ids[0].
    """
    ids = np.asarray(ids, dtype=np.int64)
    frames, states = len(emission), 2 * len(ids) + 1
    labels = np.full(states, BLANK_INDEX, dtype=np.int64)
    labels[1::2] = ids
    skip_ok = np.zeros(states, dtype=bool)  # state s may be entered from s - 2
    skip_ok[3::2] = ids[1:] != ids[:-1]
    em = np.asarray(emission, dtype=np.float64)[:, labels]  # (frame, state)
    score = np.full(states, -np.inf)
    starts = [0, 1, 2, 3] if optional_first else [0, 1]
    starts = [s for s in starts if s < states]
    score[starts] = em[0, starts]
    back = np.zeros((frames, states), dtype=np.int8)  # 0: stayed, 1: from s - 1, 2: from s - 2
    candidates = np.full((3, states), -np.inf)
    for t in range(1, frames):
        candidates[0] = score
        candidates[1, 1:] = score[:-1]
        candidates[2, 2:] = np.where(skip_ok[2:], score[:-2], -np.inf)
        back[t] = candidates.argmax(axis=0)
        score = np.take_along_axis(candidates, back[t][None].astype(np.int64), 0)[0] + em[t]
    state = states - 1 if score[-1] >= score[-2] else states - 2  # ends on the last token or the blank after it
    best = float(score[state])
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = labels[state]
        state -= int(back[t, state])
    return path, best


def word_tokens(words: Sequence[str], vocab: Vocabulary) -> list[int]:
    """The tokens that spell `words`: letters with `|` after every word (as in .ltr files), phones,
    or sentencepiece pieces. AlignmentError names a word the vocabulary cannot spell."""
    ids: list[int] = []
    for w in words:
        spelled = spell(w, vocab)
        if spelled is None:
            raise AlignmentError(f"{w!r} has symbols outside the model's {vocab.kind} vocabulary")
        ids += spelled
        if vocab.word_separator:
            ids.append(vocab.index(vocab.word_separator))
    return ids


def align_words(logprobs: np.ndarray, words: Sequence[str], vocab: Vocabulary) -> list[WordSpan]:
    """Spans of `words` (in order) on the frame axis, from a forced alignment of their spelling."""
    spans = path_spans(forced_path(logprobs, word_tokens(words, vocab), _separator(vocab)), vocab)
    return [WordSpan(w, s.start, s.end, s.token_ids) for w, s in zip(words, spans)]


def _separator(vocab: Vocabulary) -> int | None:
    """The word separator's id (letters), None for vocabularies without one."""
    return vocab.index(vocab.word_separator) if vocab.word_separator else None


def token_spans(path: np.ndarray, vocab: Vocabulary) -> list[WordSpan]:
    """Every non-blank token run of a path (word separators and special symbols left out), as spans."""
    skip = {vocab.index(vocab.word_separator)} if vocab.word_separator else set()
    return [WordSpan(vocab.symbols[t], s, e, (t,)) for t, s, e in token_runs(path)
            if t >= len(SPECIAL_SYMBOLS) and t not in skip]


@dataclass
class UtteranceAlignment:
    """One utterance's timed words and tokens (seconds from the start of its audio)."""

    utt_id: str
    duration: float
    words: list[TimedWord]
    tokens: list[TimedWord]


def align_utterance(logprobs: np.ndarray, labels: Sequence[str], vocab: Vocabulary, clock: FrameClock,
                    utt_id: str, duration: float) -> UtteranceAlignment:
    """Align one label line's symbols (letters with `|`, or phones) to its log-probabilities."""
    ids = []
    for sym in labels:
        try:
            ids.append(vocab.index(sym))
        except W2vtkError:
            raise AlignmentError(f"symbol {sym!r} is outside the model's {vocab.kind} vocabulary") from None
    path = forced_path(logprobs, ids, _separator(vocab))
    return UtteranceAlignment(utt_id, duration, timed_words(path_spans(path, vocab), logprobs, clock),
                              timed_words(token_spans(path, vocab), logprobs, clock))


def phone_boundary_errors(tokens: Sequence[TimedWord], phn_file: Path, sample_rate: int = 16000) -> list[float] | None:
    """|aligned start - labelled start| in seconds for every phone of a TIMIT .PHN file (q left out, as
    `prepare timit` leaves it out); None when the phone counts differ (other folding settings)."""
    from w2vtk.corpora.timit import _timed_lines

    starts = [int(f[0]) / sample_rate for _, f in _timed_lines(phn_file) if f[2] != "q"]
    if len(starts) != len(tokens):
        return None
    return [abs(t.start - s) for t, s in zip(tokens, starts)]


def _phn_file(audio: Path) -> Path | None:
    for suffix in (".PHN", ".phn"):
        if audio.with_suffix(suffix).is_file():
            return audio.with_suffix(suffix)
    return None


def align_subset(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, subset: str,
                 out_dir: str | os.PathLike, device: str | None = None) -> dict:
    """Align `DATA/<subset>` to its transcripts (.ltr letters, or .phn phones for phone models).

    Writes OUT/words.ctm, OUT/tokens.ctm, OUT/textgrid/<utterance>.TextGrid (tiers "words" and
    "tokens") and OUT/align.json (what was aligned; for TIMIT, the phone-boundary error against the
    .PHN files). Returns align.json's content.
    """
    from tqdm import tqdm

    from w2vtk.decode import compute_logprobs, load_acoustic_model, utterance_ids
    from w2vtk.fileio import atomic_write_text
    from w2vtk.manifest import read_labels, read_manifest
    from w2vtk.transcripts import ctm_lines, textgrid

    am = load_acoustic_model(checkpoint, device)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = read_manifest(data_dir / f"{subset}.tsv")
    ext = "phn" if am.vocab.kind == "phn" else am.vocab.kind
    label_file = data_dir / f"{subset}.{ext}"
    if not label_file.is_file():
        raise W2vtkError(f"{label_file}: no such file to align to; run `w2vtk prepare` for this subset")
    lines = read_labels(label_file, len(manifest), data_dir / f"{subset}.tsv")
    ids = utterance_ids(manifest)
    field = am.model.cfg.receptive_field
    for i, size in enumerate(manifest.sizes):
        if size < field:
            raise W2vtkError(f"{manifest.abspath(i)}: {size} samples, shorter than one frame ({field} samples): "
                             f"remove it from {data_dir / f'{subset}.tsv'}")
    for n, line in enumerate(lines, 1):
        bad = sorted({s for s in line.split() if s not in am.vocab.symbols[len(SPECIAL_SYMBOLS):]})
        if bad:
            raise W2vtkError(f"{label_file}:{n}: symbol(s) {' '.join(bad)} are outside the model's {am.vocab.kind} "
                             "vocabulary; align with a model trained on these labels or correct the transcript")
    logprobs = compute_logprobs(am, manifest)
    clock = FrameClock.of(am.model.cfg)
    words_ctm, tokens_ctm, grids, errors = [], [], {}, []
    for i, (lp, line) in enumerate(tqdm(list(zip(logprobs, lines)), desc="aligning", unit="utt")):
        duration = manifest.sizes[i] / 16000
        try:
            al = align_utterance(lp, line.split(), am.vocab, clock, ids[i], duration)
        except AlignmentError as e:
            raise AlignmentError(f"{manifest.abspath(i)} ({label_file}:{i + 1}): {e}; the audio is too short "
                                 "for its transcript: check the pair") from None
        words_ctm += ctm_lines(ids[i], al.words)
        tokens_ctm += ctm_lines(ids[i], al.tokens)
        grids[ids[i]] = textgrid(duration, {"words": al.words, "tokens": al.tokens})
        phn = _phn_file(manifest.abspath(i)) if am.vocab.kind == "phn" else None
        if phn is not None:
            errors += phone_boundary_errors(al.tokens, phn) or []
    atomic_write_text(out_dir / "words.ctm", "".join(line + "\n" for line in words_ctm))
    atomic_write_text(out_dir / "tokens.ctm", "".join(line + "\n" for line in tokens_ctm))
    for utt, grid in grids.items():
        atomic_write_text(out_dir / "textgrid" / f"{utt}.TextGrid", grid)
    summary = {"subset": subset, "checkpoint": str(checkpoint), "utterances": len(lines),
               "words": len(words_ctm), "tokens": len(tokens_ctm)}
    if errors:
        err = np.asarray(errors) * 1000
        summary["phone_boundary"] = {"phones": len(errors), "mean_abs_error_ms": round(float(err.mean()), 1),
                                     "median_abs_error_ms": round(float(np.median(err)), 1),
                                     "within_20ms": round(float((err <= 20).mean()), 4)}
    atomic_write_text(out_dir / "align.json", json.dumps(summary, indent=2) + "\n")
    return summary
