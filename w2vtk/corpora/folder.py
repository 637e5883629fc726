"""A folder of unlabelled audio -> train.tsv and valid.tsv for self-supervised pretraining."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from w2vtk.corpora.common import AudioItem, PrepareSummary, SubsetPlan, build_manifests, check_corpus_dir, find_files
from w2vtk.errors import W2vtkError


def split_valid(count: int, valid_percent: float, seed: int) -> set[int]:
    """Indices of the validation files: round(count * valid_percent) of them (at least one when the
    fraction is positive and there are two files or more), drawn with a seeded shuffle."""
    if not 0 <= valid_percent < 1:
        raise W2vtkError(f"--valid-percent {valid_percent} must be in [0, 1), e.g. 0.01 for 1%")
    num_valid = round(count * valid_percent)
    if valid_percent > 0 and num_valid == 0 and count >= 2:
        num_valid = 1
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[:num_valid])


def prepare_audio_folder(audio_dir: str | Path, out_dir: str | Path, extensions: Sequence[str] = ("flac", "wav"),
                         valid_percent: float = 0.01, seed: int = 1, jobs: int = 1,
                         skip_bad: bool = False) -> PrepareSummary:
    """Every audio file under AUDIO_DIR (by extension, recursively) -> OUT_DIR/{train,valid}.tsv."""
    root = check_corpus_dir(audio_dir, "audio files")
    files = find_files(root, extensions)
    if not files:
        raise W2vtkError(f"{root}: no audio files with extension {', '.join(extensions)}; "
                         "check the folder or pass --ext")
    valid = split_valid(len(files), valid_percent, seed)
    items = [AudioItem(str(p), p.relative_to(root).as_posix(), None) for p in files]
    plans = [SubsetPlan("train", root, [it for i, it in enumerate(items) if i not in valid]),
             SubsetPlan("valid", root, [it for i, it in enumerate(items) if i in valid])]
    return build_manifests(out_dir, plans, {}, jobs=jobs, skip_bad=skip_bad)
