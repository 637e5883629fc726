"""espeak-ng's IPA -> TIMIT's 61 phones, split into words, with approximate sample boundaries.

espeak-ng does not report phone timings, so boundaries are approximate: the speech between the
leading and trailing silences is shared out in proportion to typical phone durations, with the
pauses between clauses placed on the silent gaps that espeak-ng leaves at commas.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from w2vtk.audio import SAMPLE_RATE
from w2vtk.synth.espeak import SynthError

# espeak-ng's English IPA (every accent in w2vtk.synth.espeak.ACCENTS) -> TIMIT phones. Stress
# marks are removed and ":" is read as the length mark before the lookup; an r-coloured vowel
# written with a final ɹ is looked up without it and followed by r.
_IPA_TO_TIMIT = {
    "p": ["p"], "b": ["b"], "t": ["t"], "t̪": ["t"], "d": ["d"], "k": ["k"], "ɡ": ["g"], "g": ["g"],
    "f": ["f"], "v": ["v"], "θ": ["th"], "ð": ["dh"], "s": ["s"], "z": ["z"], "ʃ": ["sh"], "ʒ": ["zh"],
    "h": ["hh"], "x": ["k"], "ç": ["hh"], "tʃ": ["ch"], "dʒ": ["jh"], "m": ["m"], "n": ["n"], "ŋ": ["ng"],
    "n̩": ["en"], "l": ["l"], "ɫ": ["l"], "əl": ["el"], "ɹ": ["r"], "r": ["r"], "w": ["w"], "ʍ": ["w"],
    "j": ["y"], "ɾ": ["dx"], "ʔ": ["q"],
    "ə": ["ax"], "ɐ": ["ax"], "ɪ": ["ih"], "ᵻ": ["ix"], "i": ["iy"], "iː": ["iy"], "ɛ": ["eh"],
    "e": ["eh"], "eː": ["ey"], "ei": ["ey"], "eɪ": ["ey"], "eʲ": ["ey"], "æ": ["ae"], "a": ["ae"],
    "aa": ["ae"], "aː": ["aa"], "ɑ": ["aa"], "ɑː": ["aa"], "ɒ": ["aa"], "ɔ": ["ao"], "ɔː": ["ao"],
    "o": ["ow"], "oː": ["ow"], "ʌ": ["ah"], "ʊ": ["uh"], "u": ["uw"], "uː": ["uw"], "ʉ": ["ux"],
    "ʉː": ["ux"], "ɜ": ["er"], "ɜː": ["er"], "ɚ": ["axr"], "aɪ": ["ay"], "əɪ": ["ay"], "ɑɪ": ["ay"],
    "aʊ": ["aw"], "æʊ": ["aw"], "ʌʉ": ["aw"], "oʊ": ["ow"], "əʊ": ["ow"], "əu": ["ow"], "ʌʊ": ["ow"],
    "ɔɪ": ["oy"], "oɪ": ["oy"], "eə": ["eh"], "ɛə": ["eh"], "iə": ["ih", "ax"], "ʊə": ["uh", "ax"],
    "ɑə": ["aa"], "oə": ["ao"], "ɔə": ["ao"], "aɪə": ["ay", "ax"], "aɪɚ": ["ay", "axr"],
    "ʌɹ": ["er"], "əɹ": ["axr"],
}
_CLOSURES = {"p": "pcl", "t": "tcl", "k": "kcl", "b": "bcl", "d": "dcl", "g": "gcl", "ch": "tcl", "jh": "dcl"}


def ipa_to_timit(phoneme: str) -> list[str]:
    """One espeak-ng IPA phoneme -> TIMIT 61-set phones (closures not yet added)."""
    key = phoneme.replace("ˈ", "").replace("ˌ", "").replace(":", "ː")
    if key in _IPA_TO_TIMIT:
        return list(_IPA_TO_TIMIT[key])
    if len(key) > 1 and key.endswith("ɹ") and key[:-1] in _IPA_TO_TIMIT:
        return _IPA_TO_TIMIT[key[:-1]] + ["r"]
    raise SynthError(f"no TIMIT phone for espeak-ng phoneme {phoneme!r}; add it to w2vtk.synth._IPA_TO_TIMIT")


def with_closures(phones: Sequence[str]) -> list[str]:
    """Insert TIMIT's closure before every stop and affricate (`t` -> `tcl t`)."""
    out = []
    for p in phones:
        if p in _CLOSURES:
            out.append(_CLOSURES[p])
        out.append(p)
    return out


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def assign_words(groups: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
                 ) -> list[tuple[list[str], int]]:
    """Split espeak-ng's word groups into one phone list per word: [(phones, index of the group
    the word starts in)].

    espeak-ng joins unstressed words to their neighbours (`on the` -> one group); `references`
    are the words' phones said alone. Groups are aligned to runs of 1-3 words (or two groups to
    one word) by edit distance, and joined groups cut where the pieces best match the references.
    """
    m, n = len(groups), len(references)
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(m + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (n + 1) for _ in range(m + 1)]
    cost[0][0] = 0
    for i in range(m + 1):
        for j in range(n + 1):
            if cost[i][j] == inf:
                continue
            for di, dj in ((1, 1), (1, 2), (1, 3), (2, 1)):
                if i + di > m or j + dj > n:
                    continue
                g = [p for grp in groups[i:i + di] for p in grp]
                r = [p for ref in references[j:j + dj] for p in ref]
                c = cost[i][j] + _edit_distance(g, r) + (dj > 1 or di > 1) * 0.5
                if c < cost[i + di][j + dj]:
                    cost[i + di][j + dj], back[i + di][j + dj] = c, (di, dj)
    if cost[m][n] == inf:
        raise SynthError(f"cannot match {m} espeak-ng word groups to {n} words")
    spans = []
    i, j = m, n
    while i or j:
        di, dj = back[i][j]
        spans.append((i - di, i, j - dj, j))
        i, j = i - di, j - dj
    words: list[tuple[list[str], int]] = []
    for gi, gj, wi, wj in reversed(spans):
        phones = [p for grp in groups[gi:gj] for p in grp]
        words.extend((piece, gi) for piece in _cut(phones, references[wi:wj]))
    return words


def _cut(phones: list[str], refs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Cut `phones` into len(refs) pieces that best match `refs` (non-empty while phones last)."""
    k = len(refs)
    if k == 1:
        return [phones]
    if len(phones) < k:
        return [phones[i:i + 1] for i in range(k)]
    best, best_cuts = float("inf"), None
    for cuts in combinations(range(1, len(phones)), k - 1):
        bounds = [0, *cuts, len(phones)]
        c = sum(_edit_distance(phones[bounds[t]:bounds[t + 1]], refs[t]) for t in range(k))
        if c < best:
            best, best_cuts = c, bounds
    return [phones[best_cuts[t]:best_cuts[t + 1]] for t in range(k)]


# --- timing ----------------------------------------------------------------------------------
# Relative durations used to share out the speech (TIMIT averages, roughly).
_WEIGHTS = {"pcl": 0.5, "tcl": 0.5, "kcl": 0.5, "bcl": 0.5, "dcl": 0.5, "gcl": 0.5,
            "p": 0.35, "t": 0.35, "k": 0.4, "b": 0.3, "d": 0.3, "g": 0.35, "dx": 0.3, "q": 0.3,
            "ch": 0.8, "jh": 0.7, "s": 0.9, "z": 0.8, "sh": 0.9, "zh": 0.7, "f": 0.8, "v": 0.55,
            "th": 0.7, "dh": 0.45, "hh": 0.6, "m": 0.65, "n": 0.6, "ng": 0.6, "en": 0.7, "l": 0.6,
            "el": 0.8, "r": 0.55, "w": 0.55, "y": 0.5, "ax": 0.55, "ix": 0.55, "axr": 0.7,
            "ay": 1.4, "aw": 1.4, "oy": 1.4, "ey": 1.3, "ow": 1.3, "er": 1.1, "pau": 2.0}
_FRAME = SAMPLE_RATE // 100  # 10 ms


def _silent_frames(wav: np.ndarray) -> np.ndarray:
    frames = len(wav) // _FRAME
    rms = np.sqrt(np.mean(wav[:frames * _FRAME].reshape(frames, _FRAME) ** 2, axis=1) + 1e-12)
    return rms < max(rms.max() * 10 ** (-35 / 20), 1e-4)


def _speech_span(silent: np.ndarray) -> tuple[int, int]:
    voiced = np.flatnonzero(~silent)
    if voiced.size == 0:
        return 1, len(silent) - 1
    return max(int(voiced[0]), 1), min(int(voiced[-1]) + 1, len(silent) - 1)


def _gaps(silent: np.ndarray, start: int, end: int, min_frames: int = 8) -> list[tuple[int, int]]:
    """Runs of >= min_frames silent frames strictly inside [start, end)."""
    gaps, run = [], None
    for f in range(start, end):
        if silent[f] and run is None:
            run = f
        elif not silent[f] and run is not None:
            if f - run >= min_frames:
                gaps.append((run, f))
            run = None
    return gaps


def _share(phones: Sequence[str], start: int, end: int) -> list[int]:
    """Boundaries (len(phones) + 1 sample indices) sharing [start, end) by phone weights."""
    w = np.array([_WEIGHTS.get(p, 1.0) for p in phones])
    edges = start + np.concatenate([[0], np.cumsum(w)]) / w.sum() * (end - start)
    return [int(round(e)) for e in edges]


def align(clauses: Sequence[Sequence[Sequence[str]]], wav: np.ndarray
          ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """Approximate sample boundaries. clauses -> words -> TIMIT phones (closures included).

    Returns the .PHN rows (start, end, phone), h# at both ends and `pau` between clauses, and
    one (start, end) per word.
    """
    silent = _silent_frames(wav)
    first, last = _speech_span(silent)
    start, end = first * _FRAME, min(last * _FRAME, len(wav) - 1)
    gaps = _gaps(silent, first, last)
    # The chunk of audio each clause gets: pinned to the silent gaps when there is one per pause.
    if len(clauses) > 1 and len(gaps) >= len(clauses) - 1:
        longest = sorted(sorted(gaps, key=lambda g: g[0] - g[1])[:len(clauses) - 1])
        chunks, pauses, at = [], [], start
        for a, b in longest:
            chunks.append((at, a * _FRAME))
            pauses.append((a * _FRAME, b * _FRAME))
            at = b * _FRAME
        chunks.append((at, end))
    else:
        weights = [sum(_WEIGHTS.get(p, 1.0) for w in c for p in w) for c in clauses]
        total = sum(weights) + _WEIGHTS["pau"] * (len(clauses) - 1)
        chunks, pauses, at = [], [], float(start)
        for i, wgt in enumerate(weights):
            nxt = at + wgt / total * (end - start)
            chunks.append((int(round(at)), int(round(nxt))))
            if i < len(clauses) - 1:
                after = nxt + _WEIGHTS["pau"] / total * (end - start)
                pauses.append((int(round(nxt)), int(round(after))))
                nxt = after
            at = nxt
    rows = [(0, start, "h#")]
    word_spans = []
    for i, (clause, (a, b)) in enumerate(zip(clauses, chunks)):
        phones = [p for w in clause for p in w]
        edges = _share(phones, a, b)
        k = 0
        for w in clause:
            word_spans.append((edges[k], edges[k + len(w)]))
            for p in w:
                rows.append((edges[k], edges[k + 1], p))
                k += 1
        if i < len(pauses):
            rows.append((pauses[i][0], pauses[i][1], "pau"))
    rows.append((end, len(wav), "h#"))
    return rows, word_spans
