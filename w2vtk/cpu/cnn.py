"""The CNN feature encoder on a CPU: every layer a matrix product over its input windows, activations
(batch, frame, channel) throughout, and BASE's first-layer channel norm folded into its weights.

GEMMs over the windows run near the machine's matmul peak (and in bf16 under autocast), where
oneDNN's direct convolution of these short kernels reorders its inputs, and they give the (batch,
frame, channel) layout that LayerNorm and the next layer want. Windows that tile the frames are a
reshape; overlapping ones are read in place (`_OverlappingConv`). At inference in fp32 the layers
run on frames in phase planes (`phase_planes.py`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from w2vtk.cpu import phase_planes
from w2vtk.cpu.channel_norm import channel_normed_conv
from w2vtk.cpu.linear import gelu_of_fresh, linear
from w2vtk.model.encoder import ChannelNorm, ConvBlock, FeatureExtractor


def _tap_runs(kernel: int, stride: int) -> list[tuple[int, int]]:
    """The kernel's taps as runs of at most `stride` consecutive frames: (first tap, taps) each."""
    return [(start, min(stride, kernel - start)) for start in range(0, kernel, stride)]


def _run_rows(x: Tensor, start: int, taps: int, stride: int, n: int) -> Tensor:
    """(frame, channel) contiguous -> the (n, taps * channel) strided view whose row t holds frames
    stride*t + start .. stride*t + start + taps - 1: BLAS reads and writes it in place."""
    channels = x.shape[1]
    return x.as_strided((n, taps * channels), (stride * channels, 1), x.storage_offset() + start * channels)


def _product_into(out: Tensor, a: Tensor, b: Tensor, start: Tensor | None = None) -> None:
    """out = start + a @ b, or a @ b without `start` (a bias, or `out` itself to accumulate), written
    in place through mm / addmm(out=), which BLAS does for strided views and FlopCounterMode counts
    (it skips addmm_)."""
    if start is None:
        torch.mm(a, b, out=out)
    else:
        torch.addmm(start, a, b, out=out)


class _OverlappingConv(torch.autograd.Function):
    """A convolution of (batch, frame, channel) whose windows overlap (kernel > stride), without
    materialising them: the taps split into runs of `stride` frames (`_tap_runs`), each a strided
    view of x with one row per output frame, which BLAS reads in place; one GEMM per run and
    utterance, accumulated (`_product_into`). The backward writes the input's gradient through the same views, and the
    weight's gradient from them, so neither pass copies windows or scatters their gradient back.

    x: (batch, frame, channel); w: (out, kernel * channel), taps major; bias: (out,) or None.
    Returns (batch, n, out) with n = (frame - kernel) // stride + 1.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, kernel: int, stride: int) -> Tensor:
        x = x.contiguous()
        batch, frames, channels = x.shape
        n = (frames - kernel) // stride + 1
        out = x.new_empty(batch, n, w.shape[0])
        for b in range(batch):
            for i, (start, taps) in enumerate(_tap_runs(kernel, stride)):
                rows = _run_rows(x[b], start, taps, stride, n)
                part = w[:, start * channels:(start + taps) * channels].t()
                _product_into(out[b], rows, part, out[b] if i > 0 else bias)
        ctx.save_for_backward(x, w)
        ctx.kernel, ctx.stride, ctx.has_bias = kernel, stride, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        kernel, stride = ctx.kernel, ctx.stride
        grad = grad.contiguous()
        batch, n, _ = grad.shape
        channels = x.shape[2]
        runs = _tap_runs(kernel, stride)
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            if kernel < stride:  # gaps between the windows: frames no tap reads
                grad_x = torch.zeros_like(x)
            else:
                grad_x = torch.empty_like(x)
                grad_x[:, stride * n:].zero_()  # frames the first run does not write (later taps', or none)
            for b in range(batch):
                for i, (start, taps) in enumerate(runs):  # the first run writes every frame < stride*n
                    rows = _run_rows(grad_x[b], start, taps, stride, n)
                    part = w[:, start * channels:(start + taps) * channels]
                    _product_into(rows, grad[b], part, rows if i > 0 else None)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)
            for start, taps in runs:
                cols = grad_w[:, start * channels:(start + taps) * channels]
                for b in range(batch):
                    rows = _run_rows(x[b], start, taps, stride, n)
                    _product_into(cols, grad[b].t(), rows, cols if b > 0 else None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1))
        return grad_x, grad_w, grad_bias, None, None


def conv1d_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """A 1-D convolution (no padding) as matrix products over the input windows.

    x: (batch, sample) for one input channel, else (batch, frame, channel); weight: (out, in, kernel)
    as in nn.Conv1d. Returns (batch, frame', out).
    """
    out_ch, in_ch, kernel = weight.shape
    if x.dim() == 2:  # one input channel: the windows are a strided view of the waveform
        return linear(x.unfold(1, kernel, stride), weight.view(out_ch, kernel), bias)
    w = weight.transpose(1, 2).reshape(out_ch, kernel * in_ch)  # windows laid out (kernel, channel)
    batch, frames, _ = x.shape
    n = (frames - kernel) // stride + 1
    if kernel == stride:  # windows tile the frames: a plain reshape
        return linear(x[:, :n * kernel].reshape(batch, n, kernel * in_ch), w, bias)
    if torch.is_autocast_enabled(x.device.type):  # the casts F.linear would make, outside the Function
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w, bias = x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _OverlappingConv.apply(x, w, bias, kernel, stride)


def block_forward(block: ConvBlock, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """ConvBlock's function on (batch, frame, channel), or (batch, sample) for the first layer."""
    lengths = block.output_lengths(lengths)
    if isinstance(block.norm, ChannelNorm):
        return channel_normed_conv(block, x, lengths), lengths
    x = conv1d_as_matmul(x, block.conv.weight, block.conv.bias, block.stride)
    if block.norm is not None:
        x = block.norm(x)
    return gelu_of_fresh(x), lengths


class CpuFeatureExtractor(FeatureExtractor):
    """FeatureExtractor by matrix products on (batch, frame, channel); at inference in fp32, in phase planes."""

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if wav.device.type != "cpu" or self.conv_layers[0].conv.in_channels != 1:
            return super().forward(wav, lengths)
        if phase_planes.applies(self.conv_layers, wav):
            feats = phase_planes.features_in_phase_planes(self.conv_layers, wav, lengths)
            for block in self.conv_layers:
                lengths = block.output_lengths(lengths)
            return feats, lengths
        x = wav
        for block in self.conv_layers:
            x, lengths = block_forward(block, x, lengths)
        return x, lengths
