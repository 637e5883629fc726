"""Sentencepiece subword labels (`--labels sp`): train on the training transcripts, encode, decode.

The model is trained once per experiment (EXP/sentencepiece.model) and stored inside every
fine-tuned checkpoint, so decoding needs nothing else. Piece 0 is sentencepiece's unknown piece; the
CTC vocabulary is w2vtk's four special symbols followed by the other pieces.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import sentencepiece as spm
import torch

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_bytes
from w2vtk.text import SPECIAL_SYMBOLS, Vocabulary


class SubwordModel:
    def __init__(self, model_bytes: bytes):
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)

    @classmethod
    def train(cls, transcripts: list[str], vocab_size: int) -> "SubwordModel":
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(transcripts), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
                character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, num_threads=1,
                minloglevel=2)
        except RuntimeError as e:
            raise W2vtkError(f"sentencepiece could not train {vocab_size} pieces ({str(e).splitlines()[0]}); "
                             "set task.sp_vocab_size lower") from None
        return cls(buf.getvalue())

    @classmethod
    def train_or_load(cls, wrd_path: Path, model_path: Path, vocab_size: int, is_main: bool = True,
                      barrier: Callable[[], None] = lambda: None) -> "SubwordModel":
        """Load `model_path` if an earlier run made it, else train on `wrd_path` (rank 0) and save it."""
        if is_main and not model_path.exists():
            try:
                lines = [line.strip() for line in wrd_path.read_text(encoding="utf-8").splitlines()]
            except FileNotFoundError:
                raise W2vtkError(f"{wrd_path}: no such transcript file; `--labels sp` trains on the .wrd "
                                 "file that `w2vtk prepare` writes") from None
            atomic_write_bytes(model_path, cls.train([x for x in lines if x], vocab_size).model_bytes)
        barrier()
        return cls(model_path.read_bytes())

    @classmethod
    def from_tensor(cls, blob: torch.Tensor) -> "SubwordModel":
        return cls(blob.numpy().tobytes())

    def serialized(self) -> torch.Tensor:
        """The model as a uint8 tensor, storable in a weights-only checkpoint."""
        return torch.from_numpy(np.frombuffer(self.model_bytes, dtype=np.uint8).copy())

    def vocabulary(self) -> Vocabulary:
        pieces = [self.sp.id_to_piece(i) for i in range(1, self.sp.get_piece_size())]
        return Vocabulary(SPECIAL_SYMBOLS + pieces, "sp")

    def encode(self, text: str) -> list[str]:
        """Pieces of `text`; characters the model never saw become "<unk>" (w2vtk's unknown symbol)."""
        return [self.sp.id_to_piece(i) for i in self.sp.encode(text)]
