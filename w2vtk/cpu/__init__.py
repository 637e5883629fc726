"""CPU kernels for the reference model in `w2vtk.model`, applied from outside it.

`use_cpu_kernels(model, device)` is the one entry point: when `kernels_enabled(device)` says so (a
CPU device, and `W2VTK_CPU_KERNELS` not set to 0), it swaps each module of a built model for its CPU
subclass, which keeps the parameters, their names and the state dict, and computes the same function
up to rounding (the dropout masks come from other random bits). Each subclass falls back to the
reference forward where its kernel does not apply (another device, another dtype).

    reference module (w2vtk.model)   CPU subclass                                   module
    nn.Linear                        OneDnnLinear: products by oneDNN                linear.py
    nn.Dropout                       CheapDropout: masks from 16 random bits         dropout.py
    SelfAttention                    CpuSelfAttention: attention with dropout        attention.py
                                     written out, in training
    FeatureExtractor                 CpuFeatureExtractor: the CNN as matrix          cnn.py,
                                     products over (batch, frame, channel), the      phase_planes.py
                                     first layer's norm folded into its weights,
                                     at inference on frames in phase planes
    ConvPositionalEmbedding          CpuConvPositionalEmbedding: overlap-save by     positional_conv.py
                                     DFT matrix products

The process-wide host memory policy of the `w2vtk` command lives here too (`host_memory.py`).
This module imports torch only when a model is given to it, so the CLI can import it cheaply.
"""
from __future__ import annotations

import os

ENV = "W2VTK_CPU_KERNELS"


def kernels_enabled(device) -> bool:
    """Whether the CPU kernels serve a model on `device` (a torch.device or a string): the one place
    that decides. `W2VTK_CPU_KERNELS=0` runs the reference model on a CPU too."""
    kind = device if isinstance(device, str) else device.type
    return kind.split(":")[0] == "cpu" and os.environ.get(ENV, "1") != "0"


def use_cpu_kernels(model, device):
    """Swap the CPU kernels into `model` (an nn.Module built from w2vtk.model) in place when
    `kernels_enabled(device)`; returns the model."""
    if not kernels_enabled(device):
        return model
    swaps = _swaps()
    for module in model.modules():
        cpu_class = swaps.get(type(module))
        if cpu_class is not None:
            module.__class__ = cpu_class
    return model


def set_host_memory_policy(inference: bool) -> None:
    """The `w2vtk` command's memory policy, set at its start: freed memory kept for reuse, and for
    commands whose work is a forward pass without gradients (`inference`), large tensors on huge
    pages. Off with W2VTK_CPU_KERNELS=0, as the rest of this layer."""
    if os.environ.get(ENV, "1") == "0":
        return
    from w2vtk.cpu.host_memory import back_large_tensors_with_huge_pages, keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages
    if inference:  # before the model's weights are allocated
        back_large_tensors_with_huge_pages()


def _swaps() -> dict:
    from torch import nn

    from w2vtk.cpu.attention import CpuSelfAttention
    from w2vtk.cpu.cnn import CpuFeatureExtractor
    from w2vtk.cpu.dropout import CheapDropout
    from w2vtk.cpu.linear import OneDnnLinear
    from w2vtk.cpu.positional_conv import CpuConvPositionalEmbedding
    from w2vtk.model.encoder import ConvPositionalEmbedding, FeatureExtractor, SelfAttention

    return {nn.Linear: OneDnnLinear, nn.Dropout: CheapDropout, SelfAttention: CpuSelfAttention,
            FeatureExtractor: CpuFeatureExtractor, ConvPositionalEmbedding: CpuConvPositionalEmbedding}
