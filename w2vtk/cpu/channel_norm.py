"""BASE's first CNN layer, a one-channel convolution normalised per channel over time, with the
normalisation folded into the convolution's weights: the layer's output, the CNN's largest tensor,
is written once instead of being normalised in further passes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from w2vtk.cpu.linear import needs_grad, plain_fp32
from w2vtk.model.encoder import ChannelNorm, ConvBlock


def fold_channel_norm(windows: Tensor, w: Tensor, norm: ChannelNorm, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """The channel norm folded into the first layer's weights, from the statistics of its input.

    For y = W c + b over windows c: mean(y) = W mean(c) + b and var(y) = diag(W cov(c) W^T), where
    cov(c) is kernel x kernel, taken in float64 over each utterance's valid frames. The normalised
    output is then (scale * W)(c - mean(c)) + beta (the convolution's bias, if any, cancels).

    windows (batch, n, kernel), w (out, kernel) -> the windows' mean (batch, kernel) and the weights
    scaled by the norm, (batch, out, kernel), in w's dtype."""
    batch, n, _ = windows.shape
    c = windows.double()
    if lengths is None:
        mean = c.mean(1)
        centred = c - mean[:, None]
        count = c.new_full((batch,), float(n))
    else:
        valid = (torch.arange(n, device=c.device)[None, :] < lengths[:, None]).to(c.dtype)[:, :, None]
        count = lengths.clamp(min=1).to(c.dtype)
        mean = (c * valid).sum(1) / count[:, None]
        centred = (c - mean[:, None]) * valid
    cov = centred.transpose(1, 2) @ centred / count[:, None, None]  # (batch, kernel, kernel)
    w64 = w.double()
    var = ((w64 @ cov) * w64).sum(-1)  # (batch, out): diag(W cov W^T)
    scale = norm.weight.double() * torch.rsqrt(var + norm.eps)
    return mean.to(windows.dtype), (scale[:, :, None] * w64).to(w.dtype)


def channel_normed_conv(block: ConvBlock, wav: Tensor, lengths: Tensor | None, order: Tensor | None = None,
                        chunk: int = 512) -> Tensor:
    """GELU(ChannelNorm(conv(wav))) of a first layer (one input channel) with the norm folded into
    the convolution (`fold_channel_norm`): one batched GEMM writes the output, and autograd carries
    the gradients of the weight, scale and shift through the small fold.

    wav: (batch, sample); lengths: (batch,) valid output frames or None. Returns (batch, frame, out);
    with `order`, (plane, row) output-frame indices, (plane, batch, row, out) holding those frames
    (for `phase_planes`, without gradients only). Without gradients in fp32 each chunk of output
    rows is written and activated while it is still in cache.
    """
    weight, norm = block.conv.weight, block.norm
    out_ch, _, kernel = weight.shape
    batch = wav.shape[0]
    windows = wav.unfold(1, kernel, block.stride)  # (batch, n, kernel), a view
    n = windows.shape[1]
    if n <= 0:
        return wav.new_empty(batch, 0, out_ch)
    mean, w_scaled = fold_channel_norm(windows, weight.view(out_ch, kernel), norm, lengths)
    if not plain_fp32(wav) or needs_grad(wav, weight, norm.weight, norm.bias):
        if order is not None:
            raise ValueError("channel_normed_conv takes an order of frames only without gradients, in fp32")
        return F.gelu(torch.baddbmm(norm.bias, windows - mean[:, None], w_scaled.transpose(1, 2)))
    planes = order if order is not None else torch.arange(n)[None]
    out = wav.new_empty(planes.shape[0], batch, planes.shape[1], out_ch)
    for b in range(batch):
        ordered = (windows[b] - mean[b])[planes]  # (plane, row, kernel)
        w_t = w_scaled[b].t()
        for p in range(planes.shape[0]):
            for start in range(0, planes.shape[1], chunk):
                rows = out[p, b, start:start + chunk]
                torch.addmm(norm.bias, ordered[p, start:start + chunk], w_t, out=rows)
                torch.ops.aten.gelu_(rows)
    return out if order is not None else out[0]
