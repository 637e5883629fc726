"""The torch device inference runs on: the one asked for, else CUDA when available, else the CPU."""
from __future__ import annotations

from w2vtk.errors import W2vtkError


def inference_device(device: str | None = None) -> str:
    """A checked torch device name. None: "cuda" when a CUDA device is available, else "cpu"."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise W2vtkError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise W2vtkError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise W2vtkError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return str(parsed)
