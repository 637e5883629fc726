"""Building blocks of wav2vec 2.0: the CNN feature extractor and the Transformer context network.

Lengths travel beside the tensors: `forward(x, lengths) -> (y, lengths)`. A padding mask is True on
padded frames. Shapes: wav (batch, sample); features (batch, frame, feature).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.model import phase_planes
from w2vtk.model.attention import attention_with_dropout
from w2vtk.model.channel_norm import ChannelNorm, channel_normed_conv
from w2vtk.model.dropout import Dropout, draws_cheap_mask, dropout
from w2vtk.model.linear import Linear, gelu_of_fresh, linear, needs_grad, plain_fp32


def conv_output_lengths(lengths: Tensor, conv_layers: list[list[int]]) -> Tensor:
    """Frames out of the CNN for `lengths` samples: floor((L - kernel) / stride) + 1 per layer, at least 0."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


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
    weight's gradient from them, so neither pass copies windows (1.5x the input for kernel 3, stride
    2) or scatters their gradient back.

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


class _Kernel3Stride2Conv(torch.autograd.Function):
    """The kernel-3, stride-2 convolution of BASE's and LARGE's CNN layers 2-5 with a sixth fewer
    multiplications, by Winograd's minimal filtering F(2, 2) over pairs of output frames.

    y[t] = W0 x[2t] + W1 x[2t+1] + W2 x[2t+2]. The odd frames meet one tap (W1, one GEMM over all
    outputs); over the even frames the output pair (2s, 2s + 1) is a 2-tap filter of x[4s], x[4s+2],
    x[4s+4], which takes three products instead of four:

        y[2s]   = W0 (x[4s] - x[4s+2]) + (W0 + W2) x[4s+2]
        y[2s+1] = W2 (x[4s+4] - x[4s+2]) + (W0 + W2) x[4s+2]

    so each pass (forward, input gradient, weight gradient) runs GEMMs over 2.5 rows of C x C
    products per output instead of 3. The differences are one element-wise pass over half the
    input; everything else reads and writes strided views in place, as in `_OverlappingConv`.
    Needs at least two output frames.

    x: (batch, frame, channel); w: (out, 3 * channel), taps major; bias: (out,) or None.
    Returns (batch, n, out) with n = (frame - 3) // 2 + 1.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        x = x.contiguous()
        batch, frames, channels = x.shape
        n = (frames - 3) // 2 + 1
        pairs = n // 2
        w0, w1, w2 = w[:, :channels], w[:, channels:2 * channels], w[:, 2 * channels:]
        w02 = (w0 + w2).t()
        out = x.new_empty(batch, n, w.shape[0])
        for b in range(batch):
            xb, yb = x[b], out[b]
            diffs = _tap_differences(xb, pairs)
            even, odd = _run_rows(yb, 0, 1, 2, pairs), _run_rows(yb, 1, 1, 2, pairs)
            mid = _run_rows(xb, 2, 1, 4, pairs)
            _product_into(even, mid, w02, bias)
            odd.copy_(even)
            torch.addmm(even, diffs[:, 0], w0.t(), out=even)
            torch.addmm(odd, diffs[:, 1], w2.t(), out=odd)
            if n % 2:  # the last output has no partner: its even taps directly
                last = yb[n - 1:]
                _product_into(last, xb[2 * n - 2:2 * n - 1], w0.t(), bias)
                torch.addmm(last, xb[2 * n:2 * n + 1], w2.t(), out=last)
            torch.addmm(yb, _run_rows(xb, 1, 1, 2, n), w1.t(), out=yb)
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        batch, n, _ = grad.shape
        channels = x.shape[2]
        pairs = n // 2
        w0, w1, w2 = w[:, :channels], w[:, channels:2 * channels], w[:, 2 * channels:]
        # the gradient of the shared product (W0 + W2) x[4s+2] gathers both outputs of the pair
        grad_pairs = grad[:, 0:2 * pairs:2] + grad[:, 1:2 * pairs:2]  # (batch, pair, out)
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            w02 = w0 + w2
            grad_x = torch.empty_like(x)
            grad_x[:, 2 * n + 1:].zero_()  # frames no window reads
            for b in range(batch):
                gb, gx = grad[b], grad_x[b]
                even, odd = _run_rows(gb, 0, 1, 2, pairs), _run_rows(gb, 1, 1, 2, pairs)
                first = _run_rows(gx, 0, 1, 4, pairs + 1)  # frames 4s: first tap of output 2s, last of 2s - 1
                mid = _run_rows(gx, 2, 1, 4, pairs)  # frames 4s + 2: last tap of 2s, first of 2s + 1
                torch.mm(grad_pairs[b], w02, out=mid)
                torch.mm(even, w0, out=first[:pairs])
                mid.sub_(first[:pairs])
                from_odd = torch.mm(odd, w2)
                mid.sub_(from_odd)
                first[pairs].zero_()
                first[1:].add_(from_odd)
                if n % 2:
                    last = gb[n - 1:]
                    torch.addmm(gx[2 * n - 2:2 * n - 1], last, w0, out=gx[2 * n - 2:2 * n - 1])
                    torch.mm(last, w2, out=gx[2 * n:2 * n + 1])
                torch.mm(gb, w1, out=_run_rows(gx, 1, 1, 2, n))
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)
            g0, g1, g2 = grad_w[:, :channels], grad_w[:, channels:2 * channels], grad_w[:, 2 * channels:]
            for b in range(batch):  # the shared product's gradient first, into both outer taps
                mid = _run_rows(x[b], 2, 1, 4, pairs)
                _product_into(g0, grad_pairs[b].t(), mid, g0 if b > 0 else None)
            g2.copy_(g0)
            for b in range(batch):
                gb, xb = grad[b], x[b]
                diffs = _tap_differences(xb, pairs)
                torch.addmm(g0, _run_rows(gb, 0, 1, 2, pairs).t(), diffs[:, 0], out=g0)
                torch.addmm(g2, _run_rows(gb, 1, 1, 2, pairs).t(), diffs[:, 1], out=g2)
                if n % 2:
                    last = gb[n - 1:].t()
                    torch.addmm(g0, last, xb[2 * n - 2:2 * n - 1], out=g0)
                    torch.addmm(g2, last, xb[2 * n:2 * n + 1], out=g2)
                _product_into(g1, gb.t(), _run_rows(xb, 1, 1, 2, n), g1 if b > 0 else None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1))
        return grad_x, grad_w, grad_bias


def _tap_differences(x: Tensor, pairs: int) -> Tensor:
    """One utterance's frames (frame, channel), contiguous -> (pair, 2, channel): x[4s] - x[4s+2] and
    x[4s+4] - x[4s+2] for each pair s of output frames of `_Kernel3Stride2Conv`."""
    channels = x.shape[1]
    outer = x.as_strided((pairs, 2, channels), (4 * channels, 4 * channels, 1), x.storage_offset())
    mid = x.as_strided((pairs, 1, channels), (4 * channels, 0, 1), x.storage_offset() + 2 * channels)
    return outer - mid


def conv1d_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """A 1-D convolution (no padding) as matrix products over the input windows.

    x: (batch, sample) for one input channel, else (batch, frame, channel); weight: (out, in, kernel)
    as in nn.Conv1d. Returns (batch, frame', out).

    The CNN's kernels are short (2-10) and its strides equal or close to them; GEMMs over the
    windows run near the machine's matmul peak (and in bf16 under autocast), where oneDNN's direct
    convolution of these shapes is slower and reorders its inputs, and they give the (batch, frame,
    channel) layout that LayerNorm and the next layer want. Windows that do not overlap are a
    reshape of x; other ones are read in place (`_OverlappingConv`), and kernel 3 with stride 2
    takes a sixth fewer products in fp32 with 512 channels or more (`_Kernel3Stride2Conv`; with
    fewer channels, or in bf16, whose GEMMs are fast, its extra element-wise pass costs as much as
    it saves or more).
    """
    out_ch, in_ch, kernel = weight.shape
    if x.dim() == 2:  # one input channel: the windows are a strided view of the waveform
        cols, w = x.unfold(1, kernel, stride), weight.view(out_ch, kernel)
        return linear(cols, w, bias)
    w = weight.transpose(1, 2).reshape(out_ch, kernel * in_ch)  # windows laid out (kernel, channel)
    batch, frames, _ = x.shape
    n = (frames - kernel) // stride + 1
    if kernel == stride:  # windows tile the frames: a plain reshape
        return linear(x[:, :n * kernel].reshape(batch, n, kernel * in_ch), w, bias)
    if kernel == 3 and stride == 2 and n >= 2 and in_ch >= 512 and plain_fp32(x):
        # fewer channels: the products shrink faster than the added element-wise pass (break-even at 256)
        return _Kernel3Stride2Conv.apply(x, w, bias)
    if torch.is_autocast_enabled(x.device.type):  # the casts F.linear would make, outside the Function
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w, bias = x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _OverlappingConv.apply(x, w, bias, kernel, stride)


class ConvBlock(nn.Module):
    """Conv1d -> optional norm (channel norm over time, or LayerNorm over channels) -> GELU.

    The convolution runs as a matrix product (`conv1d_as_matmul`; with the channel norm,
    `channel_normed_conv` folds the norm into it); the nn.Conv1d module only holds the parameters.
    Activations are (batch, frame, channel) throughout.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool,
                 norm: str | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        if norm == "channel":
            self.norm = ChannelNorm(out_channels)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels)
        else:
            self.norm = None

    def output_lengths(self, lengths: Tensor | None) -> Tensor | None:
        """Valid input frames (batch,) -> valid output frames, None for None."""
        if lengths is None:
            return None
        return (torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1).clamp(min=0)

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x: (batch, sample) for the first layer, else (batch, frame, channel) -> (batch, frame',
        out_channel), lengths (batch,) | None."""
        lengths = self.output_lengths(lengths)
        if isinstance(self.norm, ChannelNorm):
            return channel_normed_conv(x, self.conv.weight, self.norm, self.stride, lengths), lengths
        x = conv1d_as_matmul(x, self.conv.weight, self.conv.bias, self.stride)
        if self.norm is not None:
            x = self.norm(x)
        return gelu_of_fresh(x), lengths


class FeatureExtractor(nn.Module):
    """The CNN feature encoder: raw waveform -> one feature vector per 20 ms (for the paper's strides)."""

    def __init__(self, conv_layers: list[list[int]], mode: str, bias: bool):
        super().__init__()
        blocks, in_channels = [], 1
        for i, (channels, kernel, stride) in enumerate(conv_layers):
            if mode == "group_norm":
                norm = "channel" if i == 0 else None
            else:
                norm = "layer"
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, bias, norm))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """wav: (batch, sample), lengths: (batch,) | None -> feats (batch, frame, channel), frame lengths.
        At inference on a CPU the frames run in phase planes (w2vtk.model.phase_planes)."""
        if phase_planes.applies(self.conv_layers, wav):
            feats = phase_planes.features_in_phase_planes(self.conv_layers, wav, lengths)
            for block in self.conv_layers:
                lengths = block.output_lengths(lengths)
            return feats, lengths
        x = wav
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x, lengths


@functools.lru_cache(maxsize=8)
def _overlap_save_dfts(n: int, kernel: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Real DFT matrices for overlap-save over blocks of n frames with a kernel of `kernel` taps,
    F = n // 2 + 1 frequencies, real parts stacked over imaginary ones (fp32, made in float64):

    - kernel (2F, kernel): the kernel's conjugate spectrum, [cos; sin](2 pi f k / n);
    - block (2F, n): a block's spectrum, [cos; -sin](2 pi f t / n);
    - inverse (n - kernel + 1, 2F): the first n - kernel + 1 frames of the inverse real DFT (the
      imaginary parts of frequency 0 and n/2 drop out, as in irfft).
    """
    with torch.inference_mode(False):  # plain tensors, which autograd may save, even if made at inference
        freq = torch.arange(n // 2 + 1, dtype=torch.float64)

        def angles(frames: int) -> Tensor:  # (F, frames)
            return 2 * torch.pi * torch.outer(freq, torch.arange(frames, dtype=torch.float64)) / n

        kernel_dft = torch.cat([torch.cos(angles(kernel)), torch.sin(angles(kernel))])
        block_dft = torch.cat([torch.cos(angles(n)), -torch.sin(angles(n))])
        count = torch.full_like(freq, 2.0)  # each frequency stands for itself and its unstored mirror,
        count[0] = 1.0  # except 0
        if n % 2 == 0:
            count[-1] = 1.0  # and n/2
        out = angles(n - kernel + 1).t()
        inverse = torch.cat([torch.cos(out) * count, -torch.sin(out) * count], 1) / n
        return tuple(m.to(device=device, dtype=torch.float32) for m in (kernel_dft, block_dft, inverse))


class ConvPositionalEmbedding(nn.Module):
    """Relative positions from a grouped convolution over time (weight-normalised over the kernel axis).

    An even kernel with padding kernel//2 yields one frame too many; the last one is dropped so that
    frame t sees frames t-k/2 .. t+k/2-1.

    On a CPU in fp32 the convolution runs by overlap-save in the frequency domain (`_conv_by_dft`)
    wherever that takes fewer FLOPs: BASE's kernel of 128 taps over 768 channels in 16 groups costs
    18.9 GFLOP per 4 x 10 s directly, which oneDNN runs in 85 ms, and 5.5 GFLOP this way, in 44 ms;
    forward and backward of a training step (4 x 5 s) take 84 ms against 192 ms. Inputs shorter
    than about 300 frames in all keep the convolution: the kernel's transform costs 2.4 GFLOP
    whatever their length.
    """

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq's init: variance 4 / (kernel * dim) before the weight norm splits magnitude and direction
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0
        self.kernel, self.groups = kernel, groups
        self.block = 1 << (2 * kernel - 1).bit_length()  # frames per block, giving block - kernel + 1 outputs

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, frame, dim) with padded frames zeroed -> (batch, frame, dim) positional term."""
        if x.device.type == "cpu" and plain_fp32(x) and self._dft_flops(*x.shape) < self._direct_flops(*x.shape):
            return F.gelu(self._conv_by_dft(x))
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, :-self.trim]
        return F.gelu(y).transpose(1, 2)

    def _direct_flops(self, batch: int, frames: int, dim: int) -> int:
        """The grouped convolution's, over its frames + trim output frames."""
        return 2 * batch * (frames + self.trim) * dim * (dim // self.groups) * self.kernel

    def _dft_flops(self, batch: int, frames: int, dim: int) -> int:
        """The matrix products of `_conv_by_dft`: the kernel's transform (the same for any input, so
        short inputs go to the direct convolution), then per block the input's transform, the
        channel mixing and the inverse."""
        n, kernel = self.block, self.kernel
        step, spectrum = n - kernel + 1, 2 * (n // 2 + 1)  # real and imaginary rows
        units = batch * -(-frames // step)
        per_block = 2 * spectrum * n * dim + 4 * spectrum * dim * (dim // self.groups) + 2 * step * spectrum * dim
        return 2 * spectrum * kernel * dim * (dim // self.groups) + units * per_block

    def _conv_by_dft(self, x: Tensor) -> Tensor:
        """The convolution by overlap-save: y[t] = bias + sum_k W[k] x[t + k - kernel//2], t < frame.

        x: (batch, frame, dim) -> (batch, frame, dim). Each block of `self.block` input frames gives
        block - kernel + 1 output frames free of wrap-around; per frequency and group, the channels
        mix by one small complex matrix product. The transforms are real matrix products
        (`_overlap_save_dfts`), all in fp32: torch.fft's backward for the kernel's transform makes
        full complex transforms of zero-filled 768 x 48 x 256 buffers, 60-70 ms per BASE update
        where the matrix product takes 12 ms and its backward 11, and the kernel's spectrum (38 MB)
        is made again on every call, as the fused AdamW changes parameters in place without bumping
        their version counters, which a cache would key on.
        """
        batch, frames, dim = x.shape
        n, kernel, groups = self.block, self.kernel, self.groups
        per_group = dim // groups
        step = n - kernel + 1
        blocks = -(-frames // step)
        x = F.pad(x, (0, 0, kernel // 2, (blocks - 1) * step + n - kernel // 2 - frames))
        kernel_dft, block_dft, inverse = _overlap_save_dfts(n, kernel, x.device)
        freqs = n // 2 + 1
        # (2 = re/im, freq * group, out, in): the weight is (group * out, in, kernel)
        spectrum = kernel_dft @ self.conv.weight.reshape(-1, kernel).t()
        spectrum = spectrum.view(2, freqs * groups, per_group, per_group)
        xf = torch.matmul(block_dft, x.unfold(1, n, step).transpose(2, 3))  # (batch, block, 2 * freq, dim)
        units = batch * blocks
        # (freq * group, in, 2 * units): per frequency and group, the real parts of all blocks, then the imaginary
        xf = xf.view(units, 2, freqs * groups, per_group).permute(2, 3, 1, 0).reshape(freqs * groups, per_group, -1)
        products = torch.matmul(spectrum, xf)  # (2, freq * group, out, 2 * units): re/im of spectrum x re/im of x
        real = products[0, :, :, :units] - products[1, :, :, units:]
        imag = products[0, :, :, units:] + products[1, :, :, :units]
        yf = torch.stack([real, imag]).view(2 * freqs, dim * units)
        y = (inverse @ yf).view(step, dim, batch, blocks).permute(2, 3, 0, 1).reshape(batch, blocks * step, dim)
        return y[:, :frames] + self.conv.bias


class SelfAttention(nn.Module):
    """Multi-head self-attention through torch's scaled_dot_product_attention, or with dropout on
    the probabilities in training, written out.

    The query, key and value projections are one fused Linear (a single matmul); imports and
    exports split it into fairseq's / transformers' q_proj, k_proj, v_proj.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (batch, frame, dim); attn_mask: (batch, 1, 1, frame) bool, True = attend, or None."""
        batch, frames, dim = x.shape
        qkv = self.in_proj(x)
        dropout_on = self.training and self.dropout > 0
        if dropout_on and plain_fp32(qkv) and draws_cheap_mask(qkv, self.dropout):
            return self.out_proj(attention_with_dropout(qkv, self.heads, self.dropout, attn_mask))
        qkv = qkv.view(batch, frames, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # one gradient op (a stack), where indexing zero-fills qkv's size thrice
        if dropout_on:
            y = self._attention_with_dropout(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))

    def _attention_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """softmax(q k^T / sqrt(d)) with dropout, times v; q, k, v: (batch, head, frame, head_dim).

        The same computation as scaled_dot_product_attention's, written out, for bf16 autocast and
        other devices (fp32 on a CPU takes `attention_with_dropout`): with dropout, torch takes its
        generic path on CPU, which copies q, k and v (to fp32 under bf16 autocast) several times per
        call; this one costs a third less per bf16 training step.
        The scale goes on q, about a quarter of the scores' size for 249 frames of 64 dimensions
        (bit-identical results when 1 / sqrt(head_dim) is a power of 2, as for 64).
        """
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = dropout(torch.softmax(scores, dim=-1), self.dropout)
        return torch.matmul(probs.to(v.dtype), v)


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.activation_dropout = Dropout(activation_dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, dim) -> (batch, frame, dim)."""
        hidden = linear(x, self.fc1.weight, self.fc1.bias, activation="gelu")
        return self.dropout(self.fc2(self.activation_dropout(hidden)))


class EncoderLayer(nn.Module):
    """One Transformer block, post-LN (BASE) or pre-LN (`layer_norm_first`, LARGE)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layer_norm_first: bool):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.feed_forward = FeedForward(dim, ffn_dim, activation_dropout, dropout)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (batch, frame, dim) -> (batch, frame, dim)."""
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    """Context network: positional conv added to the input, then the Transformer layers.

    Post-LN (BASE) normalises right after adding the positional term; pre-LN (LARGE) after the last
    layer. LayerDrop skips whole layers at random during training.
    """

    def __init__(self, dim: int, layers: int, ffn_dim: int, heads: int, conv_pos: int, conv_pos_groups: int,
                 dropout: float, attention_dropout: float, activation_dropout: float, layerdrop: float,
                 layer_norm_first: bool):
        super().__init__()
        self.layer_norm_first, self.layerdrop = layer_norm_first, layerdrop
        self.pos_conv = ConvPositionalEmbedding(dim, conv_pos, conv_pos_groups)
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout, layer_norm_first)
            for _ in range(layers))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """x: (batch, frame, dim), padded frames already zeroed; padding_mask (batch, frame) True = padding.

        Returns the output (batch, frame, dim) and, if asked, hidden states: [0] the input of layer 1
        (after the positional term, and for post-LN the LayerNorm), [l] the output of layer l (for
        pre-LN the last one before the final LayerNorm, as transformers reports it).
        """
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        attn_mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            attn_mask = ~padding_mask[:, None, None, :]
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            if not (self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop):
                x = layer(x, attn_mask)
            if hidden is not None:
                hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden
