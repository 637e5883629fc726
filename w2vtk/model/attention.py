"""Multi-head attention with dropout on the attention probabilities, for fp32 training on a CPU.

softmax(q k^T / sqrt(d)) with dropout, times v, as one autograd Function over the fused q/k/v
projection's output. Written out with torch's ops, autograd keeps the softmax output, the 0/1 mask
and the dropped probabilities (three tensors of the scores' size per layer) and adds passes to
scale the mask, to stack the three gradients and to lay them out again. Here:

- the mask multiplies the probabilities without its scale, which goes on v instead (a quarter of
  the scores' size for 249 frames of 64 dimensions), and the query's 1 / sqrt(d) on q;
- the softmax runs in place on the scores;
- the backward needs only the probabilities P and the dropped ones D = P * mask: the softmax's
  gradient P * (dP - sum(P * dP)) with dP = dD * mask is dD * D - P * sum(dD * D), because the mask is
  0 or 1 (so the mask itself is not kept);
- q, k and v are read out of the projection's (batch, frame, 3, head, dim) layout, and their
  gradients written back into it, one pass each.

BASE, 4 x 249 frames: 21.6-22.1 -> 16.6-16.9 ms per layer forward and backward, and a quarter less
memory kept for the backward.
"""
from __future__ import annotations

import torch
from torch import Tensor

from w2vtk.model.dropout import keep_mask_into


class _AttentionWithDropout(torch.autograd.Function):
    """qkv: (batch, frame, 3 * dim), the projection's output, q | k | v each head-major;
    attn_mask: (batch, 1, 1, frame) bool, True = attend, or None. Returns (batch, frame, dim), heads
    concatenated as the output projection reads them."""

    @staticmethod
    def forward(ctx, qkv: Tensor, heads: int, p: float, attn_mask: Tensor | None) -> Tensor:
        batch, frames, three_dim = qkv.shape
        head_dim = three_dim // 3 // heads
        parts = qkv.view(batch, frames, 3, heads, head_dim)
        q, k, v = (qkv.new_empty(batch, heads, frames, head_dim) for _ in range(3))
        scores, dropped = (qkv.new_empty(batch * heads, frames, frames) for _ in range(2))
        keep_scale = keep_mask_into(dropped, p)  # the 0/1 mask, times the probabilities below
        torch.mul(parts[:, :, 0].transpose(1, 2), head_dim ** -0.5, out=q)
        k.copy_(parts[:, :, 1].transpose(1, 2))
        torch.mul(parts[:, :, 2].transpose(1, 2), keep_scale, out=v)
        q, k, v = (t.view(batch * heads, frames, head_dim) for t in (q, k, v))
        torch.bmm(q, k.transpose(1, 2), out=scores)
        if attn_mask is not None:
            scores.view(batch, heads, frames, frames).masked_fill_(~attn_mask, float("-inf"))
        probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        dropped.mul_(probs)
        y = torch.bmm(dropped, v)  # (batch * head, frame, head_dim)
        ctx.save_for_backward(q, k, v, probs, dropped)
        ctx.keep_scale = keep_scale
        out = qkv.new_empty(batch, frames, heads, head_dim)
        out.copy_(y.view(batch, heads, frames, head_dim).transpose(1, 2))
        return out.view(batch, frames, heads * head_dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, probs, dropped = ctx.saved_tensors
        batch_heads, frames, head_dim = q.shape
        batch = grad.shape[0]
        heads = batch_heads // batch
        grad_y = grad.new_empty(batch, heads, frames, head_dim)
        grad_y.copy_(grad.view(batch, frames, heads, head_dim).transpose(1, 2))
        grad_y = grad_y.view(batch_heads, frames, head_dim)
        grad_dropped = torch.bmm(grad_y, v.transpose(1, 2))
        grad_v = torch.bmm(dropped.transpose(1, 2), grad_y)
        grad_scores = grad_dropped.mul_(dropped)
        grad_scores.addcmul_(probs, grad_scores.sum(-1, keepdim=True), value=-1.0)
        grad_q = torch.bmm(grad_scores, k)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q)
        grad_qkv = grad.new_empty(batch, frames, 3, heads, head_dim)
        for i, (g, scale) in enumerate(((grad_q, head_dim ** -0.5), (grad_k, 1.0), (grad_v, ctx.keep_scale))):
            torch.mul(g.view(batch, heads, frames, head_dim).transpose(1, 2), scale, out=grad_qkv[:, :, i])
        return grad_qkv.view(batch, frames, 3 * heads * head_dim), None, None, None


def attention_with_dropout(qkv: Tensor, heads: int, p: float, attn_mask: Tensor | None) -> Tensor:
    """Attention over the fused projection's output with dropout p on the probabilities (fp32, CPU;
    the mask by `keep_mask_into`). qkv: (batch, frame, 3 * dim) -> (batch, frame, dim)."""
    return _AttentionWithDropout.apply(qkv, heads, p, attn_mask)
