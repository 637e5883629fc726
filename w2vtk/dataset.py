"""Training data: manifest-backed datasets, length-bucketed batches under a sample budget, collation.

Pretraining batches are cropped to their shortest item (fairseq), so they need no padding; fine-tuning
batches are padded and carry lengths, from which the model derives frame padding masks. All randomness
(batch order, crop offsets) is keyed by (seed, epoch, item), so a resumed or distributed run reads
exactly what an uninterrupted single-process run reads.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from w2vtk.audio import read_audio
from w2vtk.errors import W2vtkError
from w2vtk.manifest import Manifest, read_labels, read_manifest

log = logging.getLogger(__name__)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the copy: from pinned memory to a GPU."""
    if torch.device(device).type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclass
class Batch:
    """ids: (B,) manifest line indices; wav: (B, S) float32; lengths: (B,) samples, or None when
    every item has S samples; targets: flat int64 label ids; target_lengths: (B,), for CTC.
    host: after `to(device)`, the same batch in host memory, whose ids and lengths the training
    objectives read without waiting for the device."""

    ids: torch.Tensor
    wav: torch.Tensor
    lengths: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None
    host: "Batch | None" = field(default=None, repr=False, compare=False)

    def _map(self, move) -> "Batch":
        return Batch(*(None if t is None else move(t) for t in (self.ids, self.wav, self.lengths, self.targets,
                                                                 self.target_lengths)))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory, whose copies to a GPU run asynchronously (the DataLoader's
        pin_memory=True calls this in its pinning thread)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> "Batch":
        """The tensors on `device` (asynchronous copies from pinned memory); `host` keeps this batch."""
        moved = self._map(lambda t: t.to(device, non_blocking=True))
        moved.host = self.host if self.host is not None else self
        return moved

    @property
    def num_samples(self) -> int:
        """Audio samples in the batch, read from the host copy."""
        b = self.host if self.host is not None else self
        return int(b.lengths.sum()) if b.lengths is not None else b.wav.numel()


class AudioDataset(torch.utils.data.Dataset):
    """Items of one manifest, optionally with encoded label sequences.

    `crop=True` (pretraining): a batch is cut to its shortest item, at most max_sample_size samples,
    at a random offset per item; only that window is decoded. `crop=False` (fine-tuning): whole items.
    Items shorter than `min_sample_size` are left out: pass at least the model's receptive field
    (`ModelConfig.receptive_field`), as shorter audio yields no frame.
    """

    def __init__(self, manifest: Manifest, *, labels: Sequence[Sequence[int]] | None = None,
                 crop: bool, max_sample_size: int, min_sample_size: int, normalize: bool, seed: int):
        self.manifest = manifest
        self.labels = labels
        self.crop = crop
        self.max_sample_size = max_sample_size
        self.normalize = normalize
        self.seed = seed
        self.epoch = 0
        sizes = np.asarray(manifest.sizes, dtype=np.int64)
        keep = sizes >= min_sample_size  # callers include the model's receptive field
        if labels is not None:
            keep &= np.array([len(t) > 0 for t in labels])
        self.indices = np.nonzero(keep)[0]
        self.skipped = int(len(sizes) - len(self.indices))
        if len(self.indices) == 0:
            raise W2vtkError(f"{manifest.source}: no utterance is at least {min_sample_size} samples "
                             "long (with a non-empty label); lower data.min_sample_size or check the manifest")
        self.sizes = sizes[self.indices]  # sizes of the kept items, positions are dataset indices

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        """Load and collate one batch (the DataLoader calls this with a whole batch of positions)."""
        try:
            return self._load(positions)
        except W2vtkError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            # In a worker process torch would re-raise it with the worker's traceback in its message;
            # handed over as data, `make_loader` raises it in the main process as it is.
            return e

    def _load(self, positions: Sequence[int]) -> Batch:
        positions = list(positions)
        ids = [int(self.indices[p]) for p in positions]
        sizes = [int(self.sizes[p]) for p in positions]
        if self.crop:
            target = min(min(sizes), self.max_sample_size)
            wavs = []
            for i, size in zip(ids, sizes):
                rng = np.random.default_rng([self.seed, self.epoch, i, 7])
                start = int(rng.integers(0, size - target + 1)) if size > target else 0
                wavs.append(self._read(i, start, target))
            wav = torch.from_numpy(np.stack(wavs))
            return Batch(torch.tensor(ids), wav)
        wavs = [self._read(i) for i in ids]
        lengths = torch.tensor([len(w) for w in wavs])
        wav = torch.zeros(len(wavs), int(lengths.max()))
        for j, w in enumerate(wavs):
            wav[j, : len(w)] = torch.from_numpy(w)
        batch = Batch(torch.tensor(ids), wav, lengths)
        if self.labels is not None:
            tgt = [self.labels[i] for i in ids]
            batch.targets = torch.tensor([t for seq in tgt for t in seq], dtype=torch.long)
            batch.target_lengths = torch.tensor([len(seq) for seq in tgt])
        return batch

    def _read(self, i: int, start: int = 0, num: int | None = None) -> np.ndarray:
        wav = read_audio(self.manifest.abspath(i), start=start, num_samples=num)
        if num is not None and len(wav) < num:
            # The header promised more samples than the file holds: a truncated file.
            raise W2vtkError(f"{self.manifest.abspath(i)}: holds {start + len(wav)} samples but "
                             f"{self.manifest.source} says {self.manifest.sizes[i]}; re-run `w2vtk prepare`")
        if self.normalize:
            # Per-utterance zero mean, unit variance (fairseq normalises before cropping; over a
            # crop of several seconds the statistics are the same for practical purposes).
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)
        return wav.astype(np.float32, copy=False)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar-length items under a budget of `max_tokens` audio samples per batch.

    Items are sorted by length (ties broken at random per epoch) and cut greedily into batches
    whose padded (or cropped) cost stays within the budget; the batch order is shuffled per epoch.
    Under DDP every rank computes the same list and takes every world-th batch; the tail is dropped
    so ranks do the same number of steps. `start` skips batches already done (resume).
    """

    def __init__(self, sizes: np.ndarray, max_tokens: int, max_sample_size: int, *, crop: bool,
                 seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.sizes = np.minimum(sizes, max_sample_size) if crop else np.asarray(sizes)
        self.max_tokens = max_tokens
        self.crop = crop
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        too_long = self.sizes > max_tokens
        if too_long.any():
            raise W2vtkError(f"{int(too_long.sum())} utterance(s) hold more than data.max_tokens={max_tokens} "
                             f"samples (longest {int(self.sizes.max())}); raise data.max_tokens or lower "
                             "data.max_sample_size")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self) -> list[list[int]]:
        """All batches of this epoch for this rank."""
        rng = np.random.default_rng([self.seed, self.epoch, 11])
        tiebreak = rng.random(len(self.sizes)) if self.shuffle else np.arange(len(self.sizes))
        order = np.lexsort((tiebreak, self.sizes))
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0
        for i in order:
            size = int(self.sizes[i])
            # Sorted ascending, so the newest item is the longest: padded cost = count * size.
            if cur and (len(cur) + 1) * max(longest, size) > self.max_tokens:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(int(i))
            longest = max(longest, size)
        if cur:
            batches.append(cur)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0:
            raise W2vtkError(f"only {len(batches)} batch(es) for {self.world_size} processes; use more data "
                             "or a smaller data.max_tokens")
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start:]

    def __len__(self) -> int:
        return len(self.batches()) - self.start


def load_dataset(data_dir: str | Path, subset: str, *, crop: bool, max_sample_size: int, min_sample_size: int,
                 normalize: bool, seed: int, label_ext: str | None = None,
                 encode=None) -> AudioDataset:
    """`DATA/<subset>.tsv` (and `DATA/<subset>.<label_ext>` encoded with `encode(line) -> ids`)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir / f"{subset}.tsv")
    labels = None
    if label_ext is not None:
        lines = read_labels(data_dir / f"{subset}.{label_ext}", len(manifest.paths))
        labels = []
        for n, line in enumerate(lines, start=1):
            try:
                labels.append(encode(line))
            except W2vtkError as e:
                dictionary = data_dir / f"dict.{label_ext}.txt"
                fix = (f"; the model's outputs are the symbols of {dictionary} (counted over the training subsets): "
                       "add the symbol there and train anew, or fix the label") if dictionary.is_file() else ""
                raise W2vtkError(f"{data_dir / f'{subset}.{label_ext}'}:{n}: {e}{fix}") from None
    ds = AudioDataset(manifest, labels=labels, crop=crop, max_sample_size=max_sample_size,
                      min_sample_size=min_sample_size, normalize=normalize, seed=seed)
    if ds.skipped:
        log.info("%s: left out %d of %d utterances shorter than %d samples or with empty labels",
                 subset, ds.skipped, len(manifest.paths), min_sample_size)
    return ds


def make_loader(ds: AudioDataset, sampler: BucketBatchSampler, num_workers: int,
                pin_memory: bool = False) -> Iterator[Batch]:
    """Batches from a DataLoader whose workers prefetch whole batches. It has its own torch Generator so
    creating it does not consume the global RNG (which dropout and Gumbel noise use; resumes must stay
    exact). A W2vtkError met in a worker (a corrupt audio file) is raised here with its one-line message."""
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=_identity,
        prefetch_factor=2 if num_workers > 0 else None, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0))
    for batch in loader:
        if isinstance(batch, W2vtkError):
            raise batch
        yield batch


def _identity(batch: Batch) -> Batch:
    return batch
