"""Frame-level representations of audio files from one Transformer layer, saved as .npy files."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from w2vtk.audio import read_audio
from w2vtk.checkpoint import load_checkpoint
from w2vtk.cpu import use_cpu_kernels
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open
from w2vtk.model import Wav2Vec2Model, model_from_checkpoint, normalize_waveform

log = logging.getLogger(__name__)


def layer_output(model: Wav2Vec2Model, wav: np.ndarray, layer: int) -> np.ndarray:
    """One waveform (sample,) at 16 kHz -> (frame, dim) float32 hidden state `layer` (transformers'
    indexing: 0 = Transformer input, l = output of layer l)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(wav).to(device)[None]
    if model.cfg.normalize:
        x = normalize_waveform(x)
    with torch.inference_mode():
        feats = model.extract_features(x)
        out = model.encode(feats.features, output_hidden_states=True)
    return out.hidden_states[layer][0].float().cpu().numpy()


def extract(checkpoint: str | os.PathLike, layer: int | None, out_dir: str | os.PathLike,
            audio: Sequence[str | os.PathLike], device: str | None = None) -> list[Path]:
    """Write OUT_DIR/<stem>.npy of shape (frame, dim) for every audio file; returns the paths written.

    `layer` None means the last layer. `device` None: CUDA when available, else the CPU.
    """
    from w2vtk.device import inference_device

    ckpt = load_checkpoint(checkpoint)
    device = inference_device(device)
    model = use_cpu_kernels(model_from_checkpoint(ckpt, checkpoint), device).to(device).eval()
    layers = model.cfg.encoder_layers
    layer = layers if layer is None else layer
    if not 0 <= layer <= layers:
        raise W2vtkError(f"--layer {layer} is out of range: {checkpoint} has {layers} Transformer layers, so use "
                         f"0 (the Transformer input) to {layers}")
    out_dir = Path(out_dir)
    targets: dict[Path, Path] = {}
    for path in map(Path, audio):
        target = out_dir / f"{path.stem}.npy"
        if target in targets:
            raise W2vtkError(f"{path} and {targets[target]} would both be written to {target}; extract files "
                             "with the same name into different --out folders")
        targets[target] = path
    for target, path in tqdm(targets.items(), desc="extract", unit="file", disable=len(targets) < 2):
        wav = read_audio(path)
        try:
            features = layer_output(model, wav, layer)
        except W2vtkError as e:
            raise W2vtkError(f"{path}: {e}") from None
        with atomic_open(target, "wb") as f:
            np.save(f, features)
    log.info("wrote %d feature files (layer %d, dim %d) to %s", len(targets), layer, model.cfg.encoder_embed_dim,
             out_dir)
    return list(targets)
