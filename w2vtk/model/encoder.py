"""Building blocks of wav2vec 2.0: the CNN feature extractor and the Transformer context network.

Lengths travel beside the tensors: `forward(x, lengths) -> (y, lengths)`. A padding mask is True on
padded frames. Shapes: wav (batch, sample); features (batch, frame, feature).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.model.dropout import Dropout, dropout


def conv_output_lengths(lengths: Tensor, conv_layers: list[list[int]]) -> Tensor:
    """Frames out of the CNN for `lengths` samples: floor((L - kernel) / stride) + 1 per layer, at least 0."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _plain_fp32(x: Tensor) -> bool:
    """fp32 outside autocast: the in-place and out= inference paths below apply."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _ChannelNormFunction(torch.autograd.Function):
    """Per-(utterance, channel) normalisation over time of (batch, frame, channel), then scale and
    shift per channel. Statistics in fp32, output in the input's dtype. One pass for the statistics
    and one for the output, and three for the gradient: about a third of the traffic of autograd
    through the same formula, without the transposes GroupNorm's (batch, channel, frame) needs."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        xf = _at_least_fp32(x)
        frames = x.shape[1]
        # Sums over time (a reduction over the middle axis) are several times faster than var_mean's
        # there; taking them around each channel's first value keeps the variance exact to ~1e-6
        # even for channels whose mean is far from zero.
        shift = xf[:, :1]
        centred = xf - shift
        mean_shifted = centred.sum(1, keepdim=True) / frames  # (batch, 1, channel)
        var = (centred.square_().sum(1, keepdim=True) / frames - mean_shifted.square()).clamp_min(0.0)
        del centred
        mean = shift + mean_shifted
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight.to(xf.dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        return torch.addcmul(bias.to(xf.dtype) - mean * scale, xf, scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        g, xf = _at_least_fp32(grad), _at_least_fp32(x)
        frames = x.shape[1]
        grad_sum = g.sum(1, keepdim=True)  # (batch, 1, channel)
        grad_dot = torch.linalg.vecdot(g, xf, dim=1).unsqueeze(1)  # sum over time of g * x
        grad_xhat = rstd * (grad_dot - mean * grad_sum)  # sum over time of g * xhat
        grad_weight = grad_xhat.sum((0, 1))
        grad_bias = grad_sum.sum((0, 1))
        # d/dx of w * (x - mean) * rstd: a*g + b*x + c with per-(utterance, channel) a, b, c
        a = rstd * weight.to(xf.dtype)
        b = -a * rstd * grad_xhat / frames
        c = -a * grad_sum / frames - b * mean
        grad_x = torch.addcmul(torch.addcmul(c, xf, b), g, a).to(x.dtype)
        return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


class ChannelNorm(nn.GroupNorm):
    """GroupNorm with one group per channel (BASE's first CNN layer), over the valid frames only,
    on (batch, frame, channel) input.

    fairseq and transformers normalise over the whole padded length, so padding changes every frame;
    taking the statistics over each utterance's own frames makes a padded batch equal to its items
    alone (and identical to GroupNorm when there is no padding).
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, affine=True)

    def _normalize_in_place(self, x: Tensor) -> Tensor:
        """Without gradients: x's own memory becomes the output (x is the convolution's fresh output,
        used nowhere else), with two-pass statistics (the mean, then the centred sum of squares).
        Measured on 4 x 10 s of BASE: 75 ms against 158 ms for the autograd path."""
        frames = x.shape[1]
        mean = x.sum(1, keepdim=True) / frames
        x.sub_(mean)
        var = torch.linalg.vecdot(x, x, dim=1).unsqueeze(1) / frames
        scale = torch.rsqrt(var + self.eps) * self.weight
        return torch.addcmul(self.bias.expand_as(scale), x, scale, out=x)

    def forward(self, x: Tensor, lengths: Tensor | None = None, reuse_input: bool = False) -> Tensor:
        """x: (batch, frame, channel); lengths: (batch,) valid frames or None. reuse_input: x may be
        overwritten with the output (when no gradient is needed)."""
        if lengths is None or bool((lengths == x.shape[1]).all()):
            if reuse_input and _plain_fp32(x) and not _needs_grad(x, self.weight, self.bias):
                return self._normalize_in_place(x)
            return _ChannelNormFunction.apply(x, self.weight, self.bias, self.eps)
        valid = (~lengths_to_padding_mask(lengths, x.shape[1])).to(x.dtype)[:, :, None]
        count = lengths.clamp(min=1).to(x.dtype)[:, None, None]
        mean = (x * valid).sum(1, keepdim=True) / count
        var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight + self.bias


class _FrameWindows(torch.autograd.Function):
    """(batch, frame, channel) -> (batch, n, kernel * channel): window t holds frames stride*t ..
    stride*t + kernel - 1, one after the other. Each window is a contiguous run of the input, so the
    forward is one strided copy; the backward adds the kernel slices back, one strided add each
    (torch's generic unfold backward is several times slower, in bf16 especially)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: int, stride: int) -> Tensor:
        batch, frames, channels = x.shape
        n = (frames - kernel) // stride + 1
        ctx.shape, ctx.kernel, ctx.stride = x.shape, kernel, stride
        x = x.contiguous()
        return x.as_strided((batch, n, kernel * channels), (frames * channels, stride * channels, 1)).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        batch, frames, channels = ctx.shape
        kernel, stride = ctx.kernel, ctx.stride
        n = grad.shape[1]
        grad_x = grad.new_zeros(batch, frames, channels)
        for j in range(kernel):
            grad_x[:, j:j + stride * (n - 1) + 1:stride] += grad[:, :, j * channels:(j + 1) * channels]
        return grad_x, None, None


def frame_windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(batch, frame, channel) -> (batch, n, kernel * channel), the input windows of a convolution."""
    batch, frames, channels = x.shape
    if kernel == stride:  # windows do not overlap: a plain reshape
        n = (frames - kernel) // stride + 1
        return x[:, :n * kernel].reshape(batch, n, kernel * channels)
    return _FrameWindows.apply(x, kernel, stride)


def conv1d_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """A 1-D convolution (no padding) as one matrix product over the input windows.

    x: (batch, sample) for one input channel, else (batch, frame, channel); weight: (out, in, kernel)
    as in nn.Conv1d. Returns (batch, frame', out).

    The CNN's kernels are short (2-10) and its strides equal or close to them, so the windows take
    at most 1.5x the input; one GEMM over them runs near the machine's matmul peak (and in bf16
    under autocast), where oneDNN's direct convolution of these shapes is slower and reorders its
    inputs, and it gives the (batch, frame, channel) layout that LayerNorm and the next layer want.
    """
    out_ch, in_ch, kernel = weight.shape
    if x.dim() == 2:  # one input channel: the windows are a strided view of the waveform
        cols, w = x.unfold(1, kernel, stride), weight.view(out_ch, kernel)
        return F.linear(cols, w, bias)
    w = weight.transpose(1, 2).reshape(out_ch, kernel * in_ch)  # windows laid out (kernel, channel)
    if kernel > stride and _plain_fp32(x) and not _needs_grad(x, weight, bias):
        return _overlapping_conv_without_copies(x, w, bias, kernel, stride)
    return F.linear(frame_windows(x, kernel, stride), w, bias)


def _overlapping_conv_without_copies(x: Tensor, w: Tensor, bias: Tensor | None, kernel: int, stride: int) -> Tensor:
    """conv1d_as_matmul for overlapping windows without materialising them (inference): the taps
    split into runs of `stride` frames, each run a strided view of x with a row every `stride`
    frames, which BLAS reads in place; one GEMM per run and utterance, accumulated.
    x: (batch, frame, channel) contiguous; w: (out, kernel * channel). Returns (batch, n, out)."""
    x = x.contiguous()
    batch, frames, channels = x.shape
    n = (frames - kernel) // stride + 1
    out = x.new_empty(batch, n, w.shape[0])
    runs = [(start, min(stride, kernel - start)) for start in range(0, kernel, stride)]
    for b in range(batch):
        for i, (start, taps) in enumerate(runs):
            rows = x[b].as_strided((n, taps * channels), (stride * channels, 1), x[b].storage_offset()
                                   + start * channels)
            part = w[:, start * channels:(start + taps) * channels].t()
            if i == 0:
                if bias is None:
                    torch.mm(rows, part, out=out[b])
                else:
                    torch.addmm(bias, rows, part, out=out[b])
            else:
                torch.addmm(out[b], rows, part, out=out[b])  # accumulates in place
    return out


class ConvBlock(nn.Module):
    """Conv1d -> optional norm (channel norm over time, or LayerNorm over channels) -> GELU.

    The convolution runs as a matrix product (`conv1d_as_matmul`); the nn.Conv1d module only holds
    the parameters. Activations are (batch, frame, channel) throughout.
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

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x: (batch, sample) for the first layer, else (batch, frame, channel) -> (batch, frame',
        out_channel), lengths (batch,) | None."""
        x = conv1d_as_matmul(x, self.conv.weight, self.conv.bias, self.stride)
        if lengths is not None:
            lengths = (torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1).clamp(min=0)
        if isinstance(self.norm, ChannelNorm):
            x = self.norm(x, lengths, reuse_input=True)
        elif self.norm is not None:
            x = self.norm(x)
        if _plain_fp32(x) and not _needs_grad(x):  # x is this block's own fresh tensor: no second copy
            return torch.ops.aten.gelu_(x), lengths
        return F.gelu(x), lengths


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
        """wav: (batch, sample), lengths: (batch,) | None -> feats (batch, frame, channel), frame lengths."""
        x = wav
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x, lengths


class ConvPositionalEmbedding(nn.Module):
    """Relative positions from a grouped convolution over time (weight-normalised over the kernel axis).

    An even kernel with padding kernel//2 yields one frame too many; the last one is dropped so that
    frame t sees frames t-k/2 .. t+k/2-1.
    """

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq's init: variance 4 / (kernel * dim) before the weight norm splits magnitude and direction
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, frame, dim) with padded frames zeroed -> (batch, frame, dim) positional term."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, :-self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through torch's scaled_dot_product_attention.

    The query, key and value projections are one fused Linear (a single matmul); imports and
    exports split it into fairseq's / transformers' q_proj, k_proj, v_proj.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (batch, frame, dim); attn_mask: (batch, 1, 1, frame) bool, True = attend, or None."""
        batch, frames, dim = x.shape
        qkv = self.in_proj(x).view(batch, frames, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # one gradient op (a stack), where indexing zero-fills qkv's size thrice
        if self.training and self.dropout > 0:
            y = self._attention_with_dropout(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))

    def _attention_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """softmax(q k^T / sqrt(d)) with dropout, times v; q, k, v: (batch, head, frame, head_dim).

        The same computation as scaled_dot_product_attention's, written out: with dropout, torch
        takes its generic path on CPU, which copies q, k and v (to fp32 under bf16 autocast) several
        times per call; this one costs a quarter (fp32) to a third (bf16) less per training step.
        """
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = dropout(torch.softmax(scores, dim=-1), self.dropout)
        return torch.matmul(probs.to(v.dtype), v)


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation_dropout = Dropout(activation_dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, dim) -> (batch, frame, dim)."""
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))


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
