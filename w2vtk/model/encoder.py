"""Building blocks of wav2vec 2.0: the CNN feature encoder and the Transformer context network.

Lengths travel beside the tensors: `forward(x, lengths) -> (y, lengths)`. A padding mask is True on
padded frames. Shapes: wav (batch, sample); features (batch, frame, feature); inside the CNN,
(batch, channel, frame) as nn.Conv1d wants them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.model.config import conv_output_lengths


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


# -- the CNN feature encoder ------------------------------------------------------------------------------
class ChannelNorm(nn.Module):
    """BASE's first-layer normalisation: GroupNorm with one group per channel, over time (fairseq's and
    transformers' parameter names: weight, bias), with the statistics taken over each utterance's valid
    frames. fairseq and transformers normalise over the whole padded length, so padding changes every
    frame; over an utterance's own frames a padded batch equals its items alone, and without padding
    this is GroupNorm."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """x: (batch, channel, frame); lengths: (batch,) valid frames or None -> (batch, channel, frame), fp32."""
        x = x.float()  # statistics over thousands of frames: fp32 even under autocast, as GroupNorm
        if lengths is None:
            var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
        else:
            valid = (~lengths_to_padding_mask(lengths, x.shape[-1]))[:, None, :].to(x.dtype)
            count = lengths.clamp(min=1).to(x.dtype)[:, None, None]
            mean = (x * valid).sum(-1, keepdim=True) / count
            var = ((x - mean) * valid).pow(2).sum(-1, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None] + self.bias[:, None]


class ConvBlock(nn.Module):
    """Conv1d -> optional norm (ChannelNorm over time, or LayerNorm over channels) -> GELU."""

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
        return None if lengths is None else conv_output_lengths(lengths, [[0, self.kernel, self.stride]])

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x: (batch, in_channel, frame) -> (batch, out_channel, frame'), lengths (batch,) | None."""
        lengths = self.output_lengths(lengths)
        x = self.conv(x)
        if isinstance(self.norm, ChannelNorm):
            x = self.norm(x, lengths)
        elif self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
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
        x = wav[:, None, :]
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


# -- the Transformer context network ------------------------------------------------------------------------
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
        self.kernel, self.groups = kernel, groups
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, frame, dim) with padded frames zeroed -> (batch, frame, dim) positional term."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, :-self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(q k^T / sqrt(d)) v, with dropout on the attention
    probabilities in training, through torch's scaled_dot_product_attention.

    The query, key and value projections are one fused Linear (a single matmul); imports and
    exports split it into fairseq's / transformers' q_proj, k_proj, v_proj.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def heads_of(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (batch, frame, dim) -> q, k, v, each (batch, head, frame, head_dim)."""
        batch, frames, dim = x.shape
        qkv = self.in_proj(x).view(batch, frames, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (batch, frame, dim); attn_mask: (batch, 1, 1, frame) bool, True = attend, or None."""
        batch, frames, dim = x.shape
        q, k, v = self.heads_of(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

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
        self.dropout = nn.Dropout(dropout)
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
        self.dropout = nn.Dropout(dropout)
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
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            # drawn on the host from torch's CPU generator: no wait on the device
            if not (self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop):
                x = layer(x, attn_mask)
            if hidden is not None:
                hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden
