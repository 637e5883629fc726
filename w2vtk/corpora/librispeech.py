"""LibriSpeech on disk -> manifests with word and letter labels.

Layout: `LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac`, and per chapter
`<speaker>-<chapter>.trans.txt` whose lines are `<utt-id> UPPERCASE TRANSCRIPT`. Libri-light's
limited-resource splits use the same chapter format (see w2vtk.corpora.librilight).
"""
from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from w2vtk.corpora.common import (AudioItem, HeaderReader, PrepareSummary, SubsetPlan, build_manifests,
                                  check_corpus_dir)
from w2vtk.errors import W2vtkError
from w2vtk.text import TranscriptError, transcript_to_letters

log = logging.getLogger(__name__)
TRANS_SUFFIX = ".trans.txt"
AUDIO_SUFFIX = ".flac"
LETTER_DICT = "dict.ltr.txt"


def read_chapters(directory: Path, root: Path,
                  on_audio: Callable[[list[str]], None] | None = None) -> list[AudioItem]:
    """Every utterance under `directory` (any depth) in LibriSpeech's chapter format, sorted by path.

    Label lines: `wrd` (the transcript) and `ltr` (letters, `|` after each word). A transcript line
    that is malformed or holds characters outside A-Z and apostrophe, and an audio file without a
    transcript line, raise W2vtkError naming the file and line. A transcript line whose audio is
    missing is kept: the header read reports it (and --skip-bad can leave it out). `on_audio` is
    called with each chapter's audio paths as soon as they are known (a HeaderReader's submit, so
    that the headers are read while the walk goes on).
    """
    items: list[AudioItem] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        audio = sorted(f[:-len(AUDIO_SUFFIX)] for f in filenames if f.endswith(AUDIO_SUFFIX))
        transcripts = sorted(f for f in filenames if f.endswith(TRANS_SUFFIX))
        if not audio and not transcripts:
            continue
        here = Path(dirpath)
        if not transcripts:
            raise W2vtkError(f"{here}: {len(audio)} {AUDIO_SUFFIX} files but no *{TRANS_SUFFIX}; "
                             "restore the chapter's transcript or remove the directory")
        lines: dict[str, tuple[str, str]] = {}
        for name in transcripts:
            lines.update(_read_transcript(here / name, lines))
        for utt in audio:
            if utt not in lines:
                _report_missing_line(here, transcripts, utt)
        # paths joined as strings: pathlib's per-file joins and relative_to were a third of a scan
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        folder = dirpath.rstrip(os.sep) + os.sep
        found = [AudioItem(folder + utt + AUDIO_SUFFIX, prefix + utt + AUDIO_SUFFIX, utt.split("-")[0],
                           {"wrd": text, "ltr": letters}) for utt, (text, letters) in lines.items()]
        if on_audio is not None:
            on_audio([it.path for it in found])
        items.extend(found)
    return sorted(items, key=lambda it: it.relpath)


def _read_transcript(path: Path, seen: dict) -> dict[str, tuple[str, str]]:
    """utterance id -> (upper-case transcript, its letter labels) for one *.trans.txt file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise W2vtkError(f"{path}: cannot read transcript ({e.strerror})") from None
    out: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise W2vtkError(f"{path} line {n}: not UTF-8 text; re-extract the corpus") from None
        if not text:
            continue
        utt, _, words = text.partition(" ")
        words = " ".join(words.split())
        if not words:
            raise W2vtkError(f"{path} line {n}: utterance {utt} has no transcript; expected "
                             "`<utt-id> TRANSCRIPT`")
        if utt in out or utt in seen:
            raise W2vtkError(f"{path} line {n}: utterance {utt} appears twice; remove one of its lines")
        try:
            letters = transcript_to_letters(words)
        except TranscriptError as e:
            raise W2vtkError(f"{path} line {n}: {e}; fix the transcript") from None
        out[utt] = (words.upper(), letters)
    return out


def _report_missing_line(here: Path, transcripts: list[str], utt: str) -> None:
    # Point at the transcript and the line where the utterance would sit in sorted order.
    path = here / (transcripts[0] if len(transcripts) == 1 else
                   next((t for t in transcripts if utt.startswith(t[:-len(TRANS_SUFFIX)] + "-")),
                        transcripts[0]))
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids.append(line.split()[0])
    line_no = bisect.bisect_left(sorted(ids), utt) + 1
    raise W2vtkError(f"{path} line {line_no}: missing transcript line for {utt} "
                     f"({here / (utt + AUDIO_SUFFIX)} exists); add the line or remove the audio file")


def find_librispeech_base(corpus_dir: str | Path) -> Path:
    """CORPUS_DIR itself or CORPUS_DIR/LibriSpeech: the directory that holds the subset folders."""
    corpus_dir = check_corpus_dir(corpus_dir, "LibriSpeech subsets (or a LibriSpeech/ folder)")
    nested = corpus_dir / "LibriSpeech"
    return nested if nested.is_dir() else corpus_dir


def find_subsets(base: Path) -> list[str]:
    """Subset folders of `base` that hold at least one chapter transcript."""
    found = []
    for child in sorted(base.iterdir()):
        if child.is_dir() and any(child.glob("*/*/*" + TRANS_SUFFIX)):
            found.append(child.name)
    return found


def prepare_librispeech(corpus_dir: str | Path, out_dir: str | Path, subsets: Sequence[str] | None = None,
                        jobs: int = 1, skip_bad: bool = False) -> PrepareSummary:
    """Write OUT_DIR/<subset>.{tsv,wrd,ltr} for each subset and dict.ltr.txt from the train* ones."""
    base = find_librispeech_base(corpus_dir)
    available = find_subsets(base)
    if not available:
        raise W2vtkError(f"{base}: no LibriSpeech subsets found (expected folders like "
                         "train-clean-100/<speaker>/<chapter>/*.trans.txt)")
    if subsets:
        missing = [s for s in subsets if s not in available]
        if missing:
            raise W2vtkError(f"{base}: no subset {', '.join(missing)}; found {', '.join(available)}")
    chosen = list(subsets) if subsets else available
    with HeaderReader(jobs) as headers:
        plans = [SubsetPlan(name, base / name, read_chapters(base / name, base / name, headers.submit))
                 for name in chosen]
        train = [name for name in chosen if name.startswith("train")]
        if not train:
            log.warning("no training subset (train*) among %s: %s not written", ", ".join(chosen), LETTER_DICT)
        dicts = {LETTER_DICT: ("ltr", train)} if train else {}
        return build_manifests(out_dir, plans, dicts, skip_bad=skip_bad, headers=headers)
