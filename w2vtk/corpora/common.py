"""What every corpus preparation shares: parallel header reads, bad-file handling, writing a set
of subsets with their dictionaries, and the closing summary.

A corpus module only has to say which audio files make up each subset and what their label lines
are (an `AudioItem` each); `build_manifests` does the rest, so every corpus behaves the same:
all inputs are checked before the first output is written, and every output is atomic.
"""
from __future__ import annotations

from collections import Counter

import logging
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from w2vtk.audio import SAMPLE_RATE, AudioError, audio_info
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.manifest import count_symbols, write_dict, write_subset
from w2vtk.text import LETTERS, PHONES_39, PHONES_48, PHONES_61, WORD_SEPARATOR

log = logging.getLogger(__name__)
SKIPPED_FILE = "skipped.txt"


@dataclass(frozen=True)
class AudioItem:
    """One utterance: its audio, where it goes in the manifest, and its label lines by extension."""

    path: str  # absolute (a string: building a Path per file was a tenth of a LibriSpeech scan)
    relpath: str  # relative to the subset's root
    speaker: str | None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubsetPlan:
    """A subset to write: its name (`train-clean-100`), audio root and utterances in output order."""

    name: str
    root: Path
    items: Sequence[AudioItem]


@dataclass(frozen=True)
class SubsetSummary:
    name: str
    files: int
    samples: int
    speakers: int | None  # None when the corpus has no notion of speakers

    @property
    def hours(self) -> float:
        return self.samples / SAMPLE_RATE / 3600


@dataclass(frozen=True)
class PrepareSummary:
    out_dir: Path
    subsets: list[SubsetSummary]
    skipped: list[tuple[str, str]]  # (audio path, reason)

    def table(self) -> str:
        """A few aligned lines for the terminal."""
        rows = [("subset", "files", "hours", "speakers")]
        for s in self.subsets:
            rows.append((s.name, str(s.files), f"{s.hours:.3f}", "-" if s.speakers is None else str(s.speakers)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.append(f"skipped: {len(self.skipped)}"
                     + (f" (listed in {self.out_dir / SKIPPED_FILE})" if self.skipped else ""))
        lines.append(f"written to {self.out_dir}")
        return "\n".join(lines)


def _header_or_error(path: str) -> tuple[int | None, str | None]:
    try:
        return audio_info(path).num_samples, None
    except AudioError as e:
        return None, str(e)


def _headers_of(paths: Sequence[str]) -> list[tuple[int | None, str | None]]:
    return [_header_or_error(p) for p in paths]


class HeaderReader:
    """Audio headers read by `jobs` worker processes while the caller is still finding the files.

    `submit` hands over paths as they turn up (a corpus walk, each folder's files); `results` waits
    for all of them. The workers read one folder's headers while the caller reads the next folder's
    transcripts: on 3042 LibriSpeech files the walk with its transcripts is about a third of a scan,
    and it no longer waits for the headers or they for it. Processes rather than threads: soundfile.info
    holds the GIL, and processes also parallelise the libsndfile fallback (WAV) and cold page-cache
    reads (bench/README.md). With jobs <= 1, or too few files to be worth a worker's start,
    `results` reads them in this process.
    """

    BATCH = 128  # paths per task: smaller ones cost more round trips, larger ones start the workers later

    def __init__(self, jobs: int = 1):
        self.jobs = jobs
        self._seen: set[str] = set()
        self._pending: list[str] = []
        self._tasks: list[tuple[list[str], Future]] = []
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "HeaderReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers; tasks not started are dropped (after an error, nothing waits for them)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def submit(self, paths: Sequence[str]) -> None:
        """Queue the paths not submitted before; a full batch goes to the workers at once."""
        for p in paths:
            if p not in self._seen:
                self._seen.add(p)
                self._pending.append(p)
        if self.jobs > 1 and len(self._pending) >= self.BATCH:
            self._send()

    def _send(self) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs)
        batch, self._pending = self._pending, []
        self._tasks.append((batch, self._pool.submit(_headers_of, batch)))

    def results(self) -> dict[str, tuple[int | None, str | None]]:
        """path -> (num_samples, None) or (None, error message), for every path submitted so far."""
        if self.jobs > 1 and self._pending and (self._tasks or len(self._pending) >= 2 * self.jobs):
            self._send()
        found: dict[str, tuple[int | None, str | None]] = {}
        total = sum(len(batch) for batch, _ in self._tasks) + len(self._pending)
        with tqdm(total=total, desc="audio headers", unit="file", disable=None, leave=False) as bar:
            for batch, task in self._tasks:
                found.update(zip(batch, task.result()))
                bar.update(len(batch))
            for p in self._pending:
                found[p] = _header_or_error(p)
                bar.update(1)
        self._tasks, self._pending = [], []
        return found


def read_headers(paths: Sequence[str], jobs: int = 1) -> list[tuple[int | None, str | None]]:
    """(num_samples, None) or (None, error message) for every path, in order (see HeaderReader)."""
    with HeaderReader(jobs) as reader:
        reader.submit(paths)
        found = reader.results()
    return [found[p] for p in paths]


def build_manifests(out_dir: str | Path, subsets: Sequence[SubsetPlan],
                    dicts: Mapping[str, tuple[str, Sequence[str]]], jobs: int = 1,
                    skip_bad: bool = False, headers: HeaderReader | None = None) -> PrepareSummary:
    """Read every header, then write each subset, the dictionaries and skipped.txt.

    dicts: {"dict.ltr.txt": ("ltr", [subset names to count])}; an utterance listed in several of
    those subsets is counted once. headers: a reader the corpus walk has already handed paths to
    (the rest are submitted here); without one, a reader with `jobs` processes. An unreadable audio
    file raises AudioError naming it, unless skip_bad, in which case it is left out and listed in
    OUT_DIR/skipped.txt. Nothing is written before all inputs have been read.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise W2vtkError(f"{out_dir}: exists and is not a directory; choose another output directory")
    unique = sorted({item.path for s in subsets for item in s.items})
    with headers if headers is not None else HeaderReader(jobs) as reader:
        reader.submit(unique)
        results = reader.results()
    bad = [(p, results[p][1]) for p in unique if results[p][1] is not None]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise AudioError(f"{bad[0][1]}{more}; or pass --skip-bad to leave unreadable files out")
    for p, err in bad:
        log.warning("skipping %s", err)

    kept = {s.name: [it for it in s.items if results[it.path][1] is None] for s in subsets}
    try:
        summaries = _write_outputs(out_dir, subsets, kept, results, dicts)
        if skip_bad:
            atomic_write_text(out_dir / SKIPPED_FILE, "".join(f"{p}\t{err}\n" for p, err in bad))
    except OSError as e:
        raise W2vtkError(f"cannot write to {e.filename or out_dir} ({e.strerror}); check the output "
                         "directory's permissions and free space") from None
    return PrepareSummary(out_dir, summaries, bad)


def _write_outputs(out_dir: Path, subsets: Sequence[SubsetPlan], kept: Mapping[str, list[AudioItem]],
                   results: Mapping[str, tuple[int | None, str | None]],
                   dicts: Mapping[str, tuple[str, Sequence[str]]]) -> list[SubsetSummary]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for s in subsets:
        items = kept[s.name]
        rows = [(it.relpath, results[it.path][0]) for it in items]
        exts = sorted({ext for it in s.items for ext in it.labels})
        write_subset(out_dir, s.name, s.root, rows, {ext: [it.labels[ext] for it in items] for ext in exts})
        speakers = None if any(it.speaker is None for it in items) else len({it.speaker for it in items})
        summaries.append(SubsetSummary(s.name, len(items), sum(n for _, n in rows), speakers))
    for dict_name, (ext, names) in dicts.items():
        counted: dict[str, str] = {}
        for name in names:
            for it in kept[name]:
                counted.setdefault(it.path, it.labels[ext])
        write_dict(out_dir / dict_name, with_alphabet(ext, count_symbols(counted[p] for p in sorted(counted))))
    return summaries


def with_alphabet(ext: str, counts: Counter) -> Counter:
    """Counts plus every symbol of the label alphabet the counts come from, unseen ones at 0.

    A small training set may never use "Z" or a rare phone; a dictionary that still lists them keeps
    dev and test transcripts encodable and the output layer the same for every corpus.
    """
    if ext == "ltr":
        alphabet = LETTERS + [WORD_SEPARATOR]
    elif ext == "phn":
        seen = set(counts)
        alphabet = next((list(s) for s in (PHONES_39, PHONES_48, PHONES_61) if seen <= set(s)), [])
    else:
        alphabet = []
    for symbol in alphabet:
        counts.setdefault(symbol, 0)
    return counts


def find_files(directory: Path, extensions: Sequence[str]) -> list[Path]:
    """Files under `directory` (recursively, following no symlinked directories) whose extension is
    one of `extensions` (case-insensitive, without dots), sorted by path."""
    wanted = {"." + e.lower().lstrip(".") for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in wanted:
                found.append(Path(dirpath) / name)
    return sorted(found)


def check_corpus_dir(path: str | Path, what: str) -> Path:
    """An existing directory, made absolute (symlinks resolved) so manifests carry a stable root."""
    path = Path(path)
    if not path.is_dir():
        raise W2vtkError(f"{path}: no such directory; pass the directory that holds the {what}")
    return path.resolve()
