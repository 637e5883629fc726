"""Error rates (WER, CER, PER) with the exact counts NIST's sclite reports, and sclite's files.

sclite aligns a reference with a hypothesis by dynamic programming with weighted edits
(correct 0, insertion 3, deletion 3, substitution 4) and reports the substitutions, deletions
and insertions of the alignment it finds, not a plain unit-cost Levenshtein minimum: the two can
differ on some sentences, so published error rates depend on the weights and on how ties are
broken. `align` uses sclite's weights and its tie-breaking (substitution before deletion before
insertion on equal cost, where a deletion ties with an insertion the insertion wins), so its
counts equal sclite's. Tokens compare exactly (sclite folds case unless run with `-s`; our
transcripts are upper case).

CER follows `sclite -c`: words are split into characters and the spaces between them are not
tokens.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text

# sclite's word-distance weights (word.c: wwd_WORD)
INS_COST = 3
DEL_COST = 3
SUB_COST = 4

# backpointer codes
_SUB, _DEL, _INS = 0, 1, 2


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts summed over utterances; `ref_tokens` is the number of reference tokens."""

    ref_tokens: int = 0
    sub: int = 0
    dels: int = 0
    ins: int = 0
    sentences: int = 0
    sentence_errors: int = 0

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins

    @property
    def correct(self) -> int:
        return self.ref_tokens - self.sub - self.dels

    def rate(self) -> float | None:
        """Error rate in percent, None when there are no reference tokens (undefined)."""
        if self.ref_tokens == 0:
            return 0.0 if self.errors == 0 else None
        return 100.0 * self.errors / self.ref_tokens

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(self.ref_tokens + other.ref_tokens, self.sub + other.sub, self.dels + other.dels,
                           self.ins + other.ins, self.sentences + other.sentences,
                           self.sentence_errors + other.sentence_errors)


@dataclass(frozen=True)
class Alignment:
    """One utterance's alignment: `pairs` of (ref token or None, hyp token or None), in order.

    A pair with both tokens is a match or a substitution; (tok, None) a deletion; (None, tok) an insertion.
    """

    pairs: tuple[tuple[str | None, str | None], ...]

    @property
    def counts(self) -> ErrorCounts:
        sub = sum(1 for r, h in self.pairs if r is not None and h is not None and r != h)
        dels = sum(1 for r, h in self.pairs if h is None)
        ins = sum(1 for r, h in self.pairs if r is None)
        ref = sum(1 for r, _ in self.pairs if r is not None)
        return ErrorCounts(ref, sub, dels, ins, 1, int(sub + dels + ins > 0))


def align(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Align token sequences the way sclite does (weights 4/3/3, sclite's tie-breaking).

    The cost matrix is filled one reference token (row) at a time with NumPy: substitution and
    deletion come from the previous row; the chain of insertions along a row is a running minimum,
    cost[b] = min_k (cand[k] + 3 (b - k)), computed with `np.minimum.accumulate`.
    """
    n, m = len(ref), len(hyp)
    symbol_ids: dict[str, int] = {}
    ref_ids = np.array([symbol_ids.setdefault(t, len(symbol_ids)) for t in ref], dtype=np.int64)
    hyp_ids = np.array([symbol_ids.setdefault(t, len(symbol_ids)) for t in hyp], dtype=np.int64)
    back = np.empty((n + 1, m + 1), dtype=np.int8)
    back[0, :] = _INS
    back[:, 0] = _DEL
    cols = np.arange(m + 1, dtype=np.int64)
    prev = cols * INS_COST
    for a in range(1, n + 1):
        sub = prev[:-1] + np.where(hyp_ids == ref_ids[a - 1], 0, SUB_COST)
        dele = prev[1:] + DEL_COST
        sub_wins = sub <= dele
        cand = np.empty(m + 1, dtype=np.int64)
        cand[0] = prev[0] + DEL_COST
        cand[1:] = np.where(sub_wins, sub, dele)
        cur = np.minimum.accumulate(cand - INS_COST * cols) + INS_COST * cols
        ins = cur[:-1] + INS_COST
        take_ins = (ins < cand[1:]) | ((ins == cand[1:]) & ~sub_wins)
        back[a, 1:] = np.where(take_ins, _INS, np.where(sub_wins, _SUB, _DEL))
        prev = cur
    pairs: list[tuple[str | None, str | None]] = []
    a, b = n, m
    while a > 0 or b > 0:
        op = back[a, b]
        if op == _SUB:
            pairs.append((ref[a - 1], hyp[b - 1]))
            a, b = a - 1, b - 1
        elif op == _DEL:
            pairs.append((ref[a - 1], None))
            a -= 1
        else:
            pairs.append((None, hyp[b - 1]))
            b -= 1
    pairs.reverse()
    return Alignment(tuple(pairs))


def characters(words: Sequence[str]) -> list[str]:
    """The character tokens of a word sequence, as `sclite -c` splits them (spaces are not tokens)."""
    return [c for w in words for c in w]


def score_corpus(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> tuple[ErrorCounts, list[Alignment]]:
    """Total counts and per-utterance alignments of line-aligned token sequences."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    alignments = [align(r, h) for r, h in zip(refs, hyps)]
    total = sum((al.counts for al in alignments), ErrorCounts())
    return total, alignments


def summary_dict(counts: ErrorCounts, metric: str) -> dict:
    """The JSON report: {metric: %, errors, ref_tokens, sub, del, ins} (metric "wer", "cer" or "per")."""
    rate = counts.rate()
    return {metric: None if rate is None else round(rate, 4), "errors": counts.errors,
            "ref_tokens": counts.ref_tokens, "sub": counts.sub, "del": counts.dels, "ins": counts.ins,
            "sentences": counts.sentences, "sentence_errors": counts.sentence_errors}


def summary_line(counts: ErrorCounts, metric: str) -> str:
    rate = counts.rate()
    shown = "n/a" if rate is None else f"{rate:.2f}%"
    return (f"{metric.upper()} {shown} ({counts.errors} errors / {counts.ref_tokens} tokens: "
            f"{counts.sub} sub, {counts.dels} del, {counts.ins} ins; "
            f"{counts.sentence_errors}/{counts.sentences} sentences with errors)")


def format_alignment(utt_id: str, al: Alignment) -> str:
    """sclite-style REF/HYP/Eval lines (sclite's `pralign` layout); `*` fills the side that has no token."""
    cols_ref, cols_hyp, cols_eval = [], [], []
    for r, h in al.pairs:
        rr, hh = r if r is not None else "*" * len(h or ""), h if h is not None else "*" * len(r or "")
        width = max(len(rr), len(hh), 1)
        tag = " " if r == h else ("I" if r is None else "D" if h is None else "S")
        cols_ref.append(rr.ljust(width))
        cols_hyp.append(hh.ljust(width))
        cols_eval.append(tag.ljust(width))
    c = al.counts
    return (f"id: ({utt_id})\nScores: (#C #S #D #I) {c.correct} {c.sub} {c.dels} {c.ins}\n"
            f"REF:  {' '.join(cols_ref)}\nHYP:  {' '.join(cols_hyp)}\nEval: {' '.join(cols_eval)}\n")


def errors_report(utt_ids: Sequence[str], alignments: Sequence[Alignment], metric: str, top: int = 30) -> str:
    """errors.txt: totals, the most frequent substitutions/deletions/insertions, then every alignment."""
    total = sum((al.counts for al in alignments), ErrorCounts())
    subs: collections.Counter = collections.Counter()
    dels: collections.Counter = collections.Counter()
    inss: collections.Counter = collections.Counter()
    for al in alignments:
        for r, h in al.pairs:
            if r is None:
                inss[h] += 1
            elif h is None:
                dels[r] += 1
            elif r != h:
                subs[f"{r} -> {h}"] += 1
    lines = [summary_line(total, metric), ""]
    for title, counter in (("substitutions (ref -> hyp)", subs), ("deletions", dels), ("insertions", inss)):
        lines.append(f"most frequent {title}:")
        lines.extend(f"  {n:6d}  {item}" for item, n in counter.most_common(top))
        if not counter:
            lines.append("  (none)")
        lines.append("")
    lines.append("alignments:")
    lines.append("")
    for utt, al in zip(utt_ids, alignments):
        lines.append(format_alignment(utt, al))
    return "\n".join(lines)


def write_trn(path: str | os.PathLike, utt_ids: Sequence[str], sentences: Iterable[Sequence[str]]) -> None:
    """sclite's trn format: one `tok tok tok (utt_id)` line per utterance."""
    lines = []
    for utt, toks in zip(utt_ids, sentences):
        if any(c in utt for c in "() \t\n"):
            raise W2vtkError(f"utterance id {utt!r} cannot be written to a trn file: it contains a space "
                             "or parenthesis; rename the audio file")
        lines.append(" ".join([*toks, f"({utt})"]))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_trn(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a trn file into {utt_id: tokens}; a malformed line raises W2vtkError naming file and line."""
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        if not line.endswith(")") or "(" not in line:
            raise W2vtkError(f"{path}:{lineno}: not a trn line (expected `words (utt_id)`): {line[:80]!r}")
        text, _, utt = line[:-1].rpartition("(")
        out[utt] = text.split()
    return out
