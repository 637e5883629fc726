"""Timed transcripts in the formats speech tools read: NIST CTM and STM (sclite), Praat TextGrid, JSON.

    CTM   `<file> <channel> <start> <duration> <word> <confidence>`, one word a line (seconds)
    STM   `<file> <channel> <speaker> <start> <end> <transcript>`, one segment a line (references)
    TextGrid  Praat's long text format: one interval tier per list of timed items, gaps as empty intervals
"""
from __future__ import annotations

import json
from typing import Sequence

from w2vtk.word_timing import TimedWord

FORMATS = ("text", "json", "ctm", "textgrid")
CHANNEL = "A"


def ctm_lines(file_id: str, words: Sequence[TimedWord]) -> list[str]:
    """CTM lines of one recording, in time order."""
    return [f"{file_id} {CHANNEL} {w.start:.3f} {w.duration:.3f} {w.word} {w.confidence:.4f}" for w in words]


def stm_line(file_id: str, speaker: str, start: float, end: float, words: Sequence[str]) -> str:
    """One STM segment; an empty transcript stays empty, so that sclite counts any word in it as an insertion."""
    return f"{file_id} {CHANNEL} {speaker} {start:.3f} {end:.3f} {' '.join(words)}".rstrip()


def words_json(path: str, words: Sequence[TimedWord], nbest: Sequence[dict] | None = None) -> str:
    """One JSON line: the path, the text, and every word with its start, duration and confidence."""
    record = {"path": path, "text": " ".join(w.word for w in words),
              "words": [{"word": w.word, "start": w.start, "duration": w.duration, "confidence": w.confidence}
                        for w in words]}
    if nbest is not None:
        record["nbest"] = list(nbest)
    return json.dumps(record)


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def textgrid(duration: float, tiers: dict[str, Sequence[TimedWord]]) -> str:
    """A Praat TextGrid (long text format) of `duration` seconds with one interval tier per entry of
    `tiers` (name -> timed items in time order); the time between items becomes empty intervals."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration:.3f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for n, (name, items) in enumerate(tiers.items(), 1):
        intervals: list[tuple[float, float, str]] = []
        t = 0.0
        for w in items:
            start, end = max(t, w.start), min(duration, max(w.end, w.start))
            if end <= start:
                continue
            if start > t:
                intervals.append((t, start, ""))
            intervals.append((start, end, w.word))
            t = end
        if t < duration or not intervals:
            intervals.append((t, duration, ""))
        lines += [f"    item [{n}]:", '        class = "IntervalTier"', f"        name = {_quote(name)}",
                  "        xmin = 0", f"        xmax = {duration:.3f}", f"        intervals: size = {len(intervals)}"]
        for i, (a, b, text) in enumerate(intervals, 1):
            lines += [f"        intervals [{i}]:", f"            xmin = {a:.3f}", f"            xmax = {b:.3f}",
                      f"            text = {_quote(text)}"]
    return "\n".join(lines) + "\n"


def read_ctm(path) -> dict[str, list[TimedWord]]:
    """{file id: its timed words in file order} of a CTM file; W2vtkError names a malformed line."""
    from pathlib import Path

    from w2vtk.errors import W2vtkError

    out: dict[str, list[TimedWord]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise W2vtkError(f"{path}: no such CTM file; `w2vtk decode`, `transcribe --format ctm` or `align` write "
                         "them") from None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;"):
            continue
        try:
            conf = float(fields[5]) if len(fields) > 5 else 1.0
            word = TimedWord(fields[4], float(fields[2]), float(fields[3]), conf)
        except (IndexError, ValueError):
            raise W2vtkError(f"{path}:{n}: expected `file channel start duration word [confidence]`, got "
                             f"{line.strip()!r}") from None
        out.setdefault(fields[0], []).append(word)
    return out
