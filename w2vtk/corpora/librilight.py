"""Libri-light's limited-resource fine-tuning splits (`librispeech_finetuning.tgz`) -> manifests.

Layout: `1h/{0..5}/{clean,other}/<speaker>/<chapter>/...` and `9h/{clean,other}/...`, in
LibriSpeech's flac + trans.txt chapter format. The splits of the wav2vec 2.0 paper are
train-10m = 1h/0, train-1h = 1h/0..5, train-10h = 1h/0..5 + 9h.
"""
from __future__ import annotations

import logging
from pathlib import Path

from w2vtk.corpora.common import HeaderReader, PrepareSummary, SubsetPlan, build_manifests, check_corpus_dir
from w2vtk.corpora.librispeech import LETTER_DICT, read_chapters
from w2vtk.errors import W2vtkError

log = logging.getLogger(__name__)

LIBRILIGHT_DIR = "librispeech_finetuning"  # what librispeech_finetuning.tgz extracts to
ONE_HOUR_PARTS = [f"1h/{i}" for i in range(6)]
SPLITS = {
    "train-10m": ONE_HOUR_PARTS[:1],
    "train-1h": ONE_HOUR_PARTS,
    "train-10h": ONE_HOUR_PARTS + ["9h"],
}


def find_librilight_base(corpus_dir: str | Path) -> Path:
    """CORPUS_DIR itself or CORPUS_DIR/librispeech_finetuning: the folder that holds 1h/ and 9h/."""
    corpus_dir = check_corpus_dir(corpus_dir, "Libri-light splits (1h/ and 9h/)")
    nested = corpus_dir / LIBRILIGHT_DIR
    return nested if nested.is_dir() and not (corpus_dir / "1h").is_dir() else corpus_dir


def prepare_librilight(corpus_dir: str | Path, out_dir: str | Path, jobs: int = 1,
                       skip_bad: bool = False) -> PrepareSummary:
    """Write OUT_DIR/{train-10m,train-1h,train-10h}.{tsv,wrd,ltr} and dict.ltr.txt (from the largest).

    Manifest paths are relative to the splits' folder (`1h/0/clean/...`), so the three splits share
    one audio root. A split whose folders are not all there is left out with a warning (a synthesized
    corpus may hold only 1h/0, the 10-minute split); without 1h/0 there is no split at all.
    """
    base = find_librilight_base(corpus_dir)
    missing = [part for part in SPLITS["train-10h"] if not (base / part).is_dir()]
    splits = {name: parts for name, parts in SPLITS.items() if not set(parts) & set(missing)}
    if not splits:
        raise W2vtkError(f"{base}: Libri-light folders {', '.join(missing)} are missing; pass the "
                         "extracted librispeech_finetuning/ folder (holding 1h/0..5 and 9h)")
    if missing:
        log.warning("%s: no %s: writing %s only", base, ", ".join(missing), ", ".join(splits))
    largest = list(splits)[-1]
    with HeaderReader(jobs) as headers:
        parts = {part: read_chapters(base / part, base, headers.submit) for part in splits[largest]}
        for part, items in parts.items():
            if not items:
                raise W2vtkError(f"{base / part}: no utterances; re-extract librispeech_finetuning.tgz")
        plans = [SubsetPlan(name, base, sorted((it for part in members for it in parts[part]),
                                               key=lambda it: it.relpath))
                 for name, members in splits.items()]
        return build_manifests(out_dir, plans, {LETTER_DICT: ("ltr", [largest])}, skip_bad=skip_bad,
                               headers=headers)
