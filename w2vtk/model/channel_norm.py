"""BASE's first CNN layer: a one-channel convolution normalised per channel over time, the
normalisation folded into the convolution's weights (`channel_normed_conv`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.model.linear import needs_grad, plain_fp32


class ChannelNorm(nn.Module):
    """The parameters of BASE's first-layer normalisation: GroupNorm with one group per channel, over
    time (fairseq's and transformers' names: weight, bias). `channel_normed_conv` applies it, folded
    into the convolution, over each utterance's valid frames only: fairseq and transformers
    normalise over the whole padded length, so padding changes every frame; taking the statistics
    over an utterance's own frames makes a padded batch equal to its items alone (and identical to
    GroupNorm when there is no padding)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


def channel_normed_conv(wav: Tensor, weight: Tensor, norm: ChannelNorm, stride: int, lengths: Tensor | None,
                        chunk: int = 512) -> Tensor:
    """GELU(ChannelNorm(conv(wav))) for one input channel, the first layer of BASE's CNN.

    wav: (batch, sample); weight: (out, 1, kernel); lengths: (batch,) valid output frames or None.
    Returns (batch, frame, out).

    The first layer's output is the CNN's largest tensor (33 M values for 4 x 5 s, 65 M for 4 x 10 s),
    and normalising it directly passes over it eight times forward and backward. Here the statistics
    come from the input instead: for y = W c + b over windows c, mean(y) = W mean(c) + b and
    var(y) = diag(W cov(c) W^T), where cov(c) is kernel x kernel (10 x 10), taken in float64. The
    normalisation then folds into per-utterance weights, y' = (scale * W)(c - mean(c)) + beta (the
    convolution's bias, if any, cancels), one batched GEMM writes the output, and autograd carries
    the gradients of W, scale and beta through the 10 x 512 fold. Without gradients each chunk of
    output rows (1 MB for 512 channels) is written and activated while it is still in cache.
    """
    out_ch, _, kernel = weight.shape
    batch, samples = wav.shape
    n = (samples - kernel) // stride + 1
    if n <= 0:
        return wav.new_empty(batch, 0, out_ch)
    windows = wav.unfold(1, kernel, stride)  # (batch, n, kernel), a view
    mean, w_scaled = fold_channel_norm(windows, weight.view(out_ch, kernel), norm, lengths)
    if plain_fp32(wav) and not needs_grad(wav, weight, norm.weight, norm.bias):
        out = wav.new_empty(batch, n, out_ch)
        for b in range(batch):
            w_t = w_scaled[b].t()
            for start in range(0, n, chunk):
                rows = out[b, start:start + chunk]
                torch.addmm(norm.bias, windows[b, start:start + chunk] - mean[b], w_t, out=rows)
                torch.ops.aten.gelu_(rows)
        return out
    y = torch.baddbmm(norm.bias, windows - mean[:, None], w_scaled.transpose(1, 2))
    return F.gelu(y)


def fold_channel_norm(windows: Tensor, w: Tensor, norm: ChannelNorm, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """windows (batch, n, kernel), w (out, kernel) -> the windows' mean over each utterance's valid
    frames (batch, kernel) and the weights scaled by the norm, (batch, out, kernel), in w's dtype."""
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
