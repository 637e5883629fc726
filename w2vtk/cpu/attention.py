"""Self-attention with dropout, written out, for training on a CPU.

With dropout on the probabilities torch's scaled_dot_product_attention takes its generic CPU path,
which copies q, k and v (to fp32 under bf16 autocast) several times per call. Written out, the
products run on the operands as they are, and the dropout mask is the cheap one of `dropout.py`.
The scale goes on q (frames x head_dim) rather than on the scores (frames x frames). Without
dropout (evaluation, or p = 0) the reference's scaled_dot_product_attention runs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from w2vtk.cpu.dropout import dropout
from w2vtk.model.encoder import SelfAttention


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d)) with dropout p, times v. q, k, v: (batch, head, frame, head_dim);
    attn_mask: (batch, 1, 1, frame) bool, True = attend, or None. Returns (batch, head, frame, head_dim)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = dropout(torch.softmax(scores, dim=-1), p)
    return torch.matmul(probs.to(v.dtype), v)


class CpuSelfAttention(SelfAttention):
    """SelfAttention with `attention_with_dropout` in training on a CPU."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if not (self.training and self.dropout > 0 and x.device.type == "cpu"):
            return super().forward(x, attn_mask)
        batch, frames, dim = x.shape
        y = attention_with_dropout(*self.heads_of(x), attn_mask, self.dropout)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))
