"""Checkpoints: one dict format for pretraining, fine-tuning and imported weights.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`; a file whose pickle would construct arbitrary objects (and could so
run code) is refused. Writes are atomic: a crash mid-write leaves the previous file intact.

Keys:
    format: "w2vtk"; version: int
    kind: "pretrain" | "finetune" | "import"
    model_config: dict, the ModelConfig fields (architecture; compared on resume and init)
    model: state_dict
    vocab: list[str] | None, the CTC output symbols (index 0 is the blank)
    labels: "ltr" | "phn" | "sp" | None
    sentencepiece: bytes-as-uint8-tensor | None, the serialized sentencepiece model for labels "sp"
    train_config: dict | None, the resolved training config
    trainer: dict | None, optimizer/scheduler/step/RNG/data position (training checkpoints only)
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open

FORMAT = "w2vtk"
VERSION = 1


class CheckpointError(W2vtkError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model it is loaded into."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write `payload` (plus format and version) to `path` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)
    except RuntimeError as e:
        # torch's zip writer reports a failed write (a full disk) as a RuntimeError whose context is the
        # OSError; raise that, so callers see the I/O error they handle.
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a w2vtk checkpoint safely (weights only). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # a zip archive, or an old torch file (pickle protocol 2)
        raise CheckpointError(f"{path}: cannot read checkpoint: not a torch checkpoint (it starts with {magic!r}); "
                              "give a checkpoint written by w2vtk, or convert weights with `w2vtk import`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch's message opens with general advice; the line naming the refused object is the useful one
        unsafe = [ln for ln in lines if any(w in ln for w in ("GLOBAL", "global", "Unsupported", "unrecognized"))]
        if not unsafe:
            raise CheckpointError(f"{path}: cannot read checkpoint ({(lines or [type(e).__name__])[-1][:200]}); "
                                  "the file is truncated or not a torch checkpoint") from None
        detail = unsafe[-1].split(" was not an allowed")[0].split(". Please use")[0]  # not torch's how-to-allow
        raise CheckpointError(
            f"{path}: refused: the file's pickle would construct objects beyond tensors and plain data "
            f"({detail[:200]}), so loading it could run code. Only load checkpoints "
            "written by w2vtk, or convert trusted weights with `w2vtk import`") from None
    except Exception as e:  # weights-only loading runs no code: any other failure is a damaged file
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({detail}); the file "
                              "is truncated or not a torch checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a w2vtk checkpoint; convert transformers or fairseq weights "
                              "with `w2vtk import SRC OUT.pt`")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this w2vtk "
                              f"reads ({VERSION}); upgrade w2vtk")
    return ckpt


def architecture_mismatch(expected: dict[str, Any], found: dict[str, Any],
                          keys: tuple[str, ...] | None = None) -> list[str]:
    """Names of architecture fields that differ, as 'field: expected X, checkpoint has Y'."""
    keys = keys or tuple(sorted(set(expected) | set(found)))
    return [f"{k}: expected {expected.get(k)!r}, checkpoint has {found.get(k)!r}"
            for k in keys if expected.get(k) != found.get(k)]
