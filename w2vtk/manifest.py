"""fairseq-style manifests and label files: reading with validation, writing atomically.

A subset `<name>` is a set of line-aligned files in one directory:
  <name>.tsv   line 1: the absolute audio root; then `relpath<TAB>num_samples` (16 kHz samples)
  <name>.wrd   words, <name>.ltr letters with `|` word ends, <name>.phn phones, ... (one line per audio)
and the training subsets' symbols are counted into `dict.<ext>.txt` (`<symbol> <count>`).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text


class ManifestError(W2vtkError):
    """A manifest or label file is missing, malformed or out of step with its audio."""


@dataclass(frozen=True)
class Manifest:
    """The audio of one subset: `paths[i]` (relative to `root`, or absolute) has `sizes[i]` samples."""

    root: Path
    paths: list[str]
    sizes: list[int]
    source: Path | None = None  # the tsv it was read from, for messages

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> Path:
        return self.root / self.paths[i]  # an absolute path replaces the root by design


def check_relpath(relpath: str, where: str) -> None:
    """Refuse paths that climb out of the manifest's root (`../x`, `a/../../x`); absolute is allowed."""
    if not relpath:
        raise ManifestError(f"{where}: empty audio path")
    if ".." not in relpath or os.path.isabs(relpath):  # no parent step, or nothing to escape from
        return
    norm = os.path.normpath(relpath)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise ManifestError(f"{where}: audio path {relpath!r} escapes the manifest root; "
                            "list it relative to the root (or as an absolute path)")


def _decode_lines(path: Path) -> list[str]:
    """Read a text file as UTF-8 lines (without line ends), naming the first bad line if any."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file; run `w2vtk prepare ...` to make it") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory, not a manifest or label file") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for n, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path} line {n}: not UTF-8 text ({e.reason} at byte {e.start} of "
                                "the line); re-save the file as UTF-8") from None
    return out


def read_manifest(tsv: str | Path) -> Manifest:
    """Read and validate `<subset>.tsv`. Raises ManifestError naming the file, line and the fix."""
    tsv = Path(tsv)
    lines = _decode_lines(tsv)
    if not lines or not lines[0].strip():
        raise ManifestError(f"{tsv}: empty manifest; line 1 must be the audio root directory")
    root = Path(lines[0].strip())
    if not root.is_dir():
        raise ManifestError(f"{tsv}: audio root {root} (line 1) does not exist: the corpus was moved "
                            "or renamed; put its new location on line 1 of the tsv, or re-run "
                            "`w2vtk prepare`")
    paths, sizes = [], []
    for n, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ManifestError(f"{tsv} line {n}: expected `relpath<TAB>num_samples`, "
                                f"got {len(fields)} tab-separated fields")
        relpath, size = fields
        try:
            num = int(size)
        except ValueError:
            raise ManifestError(f"{tsv} line {n}: num_samples {size!r} is not an integer") from None
        if num < 0:
            raise ManifestError(f"{tsv} line {n}: num_samples {num} is negative")
        check_relpath(relpath, f"{tsv} line {n}")
        paths.append(relpath)
        sizes.append(num)
    return Manifest(root, paths, sizes, tsv)


def read_labels(path: str | Path, expected_lines: int, manifest: str | Path | None = None) -> list[str]:
    """Read a label file (.ltr, .wrd, .phn, .sp) whose line count must match its manifest's."""
    path = Path(path)
    lines = _decode_lines(path)
    if len(lines) != expected_lines:
        against = f"{manifest} lists" if manifest else "the manifest lists"
        raise ManifestError(f"{path}: {len(lines)} lines, but {against} {expected_lines} audio files; "
                            "the labels are out of step with the audio: re-run `w2vtk prepare`")
    return lines


def _file_text(lines: Iterable[str]) -> str:
    return "".join(line + "\n" for line in lines)


def write_subset(out_dir: str | Path, subset: str, root: str | Path, rows: Sequence[tuple[str, int]],
                 labels: Mapping[str, Sequence[str]]) -> None:
    """Write `<subset>.tsv` and one `<subset>.<ext>` per entry of `labels`, each atomically.

    rows: (relpath, num_samples) in the order of the label lines. Everything is checked before
    the first file is written.
    """
    out_dir = Path(out_dir)
    root = Path(root)
    if not root.is_absolute():
        raise ManifestError(f"audio root {root} must be an absolute path")
    for relpath, num in rows:
        check_relpath(relpath, f"{subset}.tsv")
        if "\t" in relpath or "\n" in relpath:
            raise ManifestError(f"{root / relpath}: tabs and newlines cannot appear in a manifest path")
        if int(num) < 0:
            raise ManifestError(f"{root / relpath}: negative sample count {num}")
    for ext, lines in labels.items():
        if len(lines) != len(rows):
            raise ManifestError(f"{subset}.{ext}: {len(lines)} label lines for {len(rows)} audio files")
        for line in lines:
            if "\n" in line or "\r" in line:
                raise ManifestError(f"{subset}.{ext}: a label line holds a line break: {line!r}")
    atomic_write_text(out_dir / f"{subset}.tsv",
                      _file_text([str(root)] + [f"{p}\t{int(n)}" for p, n in rows]))
    for ext, lines in labels.items():
        atomic_write_text(out_dir / f"{subset}.{ext}", _file_text(lines))


def count_symbols(lines: Iterable[str]) -> Counter:
    """Symbol counts over space-separated label lines."""
    return Counter(" ".join(lines).split())  # one split over all lines, not one per line


def write_dict(path: str | Path, counter: Mapping[str, int]) -> None:
    """fairseq dictionary: `<symbol> <count>`, most frequent first, ties broken by symbol."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    atomic_write_text(path, _file_text(f"{sym} {count}" for sym, count in items))
