"""The CNN feature encoder at inference on frames stored in phase planes, every product on
contiguous rows.

After the first layer, the paper's CNN has only stride-2 layers: kernel 3 (layers 2-5) and kernel
2 (layers 6-7). A stride-2 layer reads its input's even and odd frames as separate operands, and
with Winograd's minimal filtering over output pairs (`_kernel3`) frames 4s, 4s+1, 4s+2 and 4s+3.
Kept in time order, those are strided rows, which GEMMs read slower than contiguous ones, and whose
results have to be interleaved back. Here the first layer writes frame 2^D q + r of each utterance
to row q of plane bitrev(r) instead (D = the number of stride-2 layers, r < 2^D, bits of r
reversed): the even frames are then the first half of the planes and the odd ones the second, and
so on down, so every operand of every later layer is a run of whole planes, and each layer's two
outputs (its even and odd frames) are already the two halves the next layer reads. After the last
layer one plane remains, in time order.

The first layer's frames are padded to a multiple of 2^D (repeating its last window); the padded
frames only reach outputs past the last valid one of each layer, which are dropped at the end, so
the result equals the time-ordered path's up to rounding. Planes are (plane, batch, row, channel).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.cpu.channel_norm import channel_normed_conv
from w2vtk.cpu.linear import gelu_of_fresh, linear, needs_grad, plain_fp32
from w2vtk.model.config import conv_output_lengths
from w2vtk.model.encoder import ChannelNorm


def applies(blocks: nn.ModuleList, wav: Tensor) -> bool:
    """Whether `features_in_phase_planes` can run `blocks` (ConvBlocks) on `wav` (batch, sample):
    fp32 on a CPU without gradients, one input channel, then stride-2 layers of kernel 3 or 2 with
    a kernel-2 layer last, and at least one output frame."""
    first, rest = blocks[0], list(blocks[1:])
    if not (wav.dim() == 2 and wav.device.type == "cpu" and plain_fp32(wav) and rest):
        return False
    if needs_grad(wav, *(p for b in blocks for p in b.parameters())):
        return False
    if first.conv.in_channels != 1 or rest[-1].kernel != 2:
        return False
    if any(b.stride != 2 or b.kernel not in (2, 3) or isinstance(b.norm, ChannelNorm) for b in rest):
        return False
    return _output_frames(wav.shape[1], blocks) >= 1


def _output_frames(samples: int, blocks: nn.ModuleList) -> int:
    return conv_output_lengths(samples, [[0, block.kernel, block.stride] for block in blocks])


@functools.lru_cache(maxsize=16)
def _bit_reversed(bits: int) -> tuple[int, ...]:
    """r -> r with its `bits` low bits in reverse order, for r < 2^bits."""
    return tuple(int(format(r, f"0{bits}b")[::-1], 2) if bits else 0 for r in range(1 << bits))


def features_in_phase_planes(blocks: nn.ModuleList, wav: Tensor, lengths: Tensor | None) -> Tensor:
    """The CNN's output for `wav` (batch, sample), (batch, frame, channel), as the blocks' own
    forward gives it; `lengths` (batch,) valid samples or None (for the first layer's norm).

    About 10 s of audio at a time (one utterance of 10 s or more): as fast as larger groups, and
    every layer's output and intermediates shrink with the group."""
    group = max(1, _GROUP_FRAMES // max(1, _output_frames(wav.shape[1], blocks[:1])))
    return torch.cat([_group_features(blocks, wav[b:b + group], None if lengths is None else lengths[b:b + group])
                      for b in range(0, wav.shape[0], group)])


_GROUP_FRAMES = 32000  # first-layer frames per group: 10 s


def _group_features(blocks: nn.ModuleList, wav: Tensor, lengths: Tensor | None) -> Tensor:
    """`features_in_phase_planes` for one group of utterances."""
    first, rest = blocks[0], list(blocks[1:])
    depth = len(rest)
    planes = 1 << depth
    n_first = _output_frames(wav.shape[1], blocks[:1])
    rows = -(-n_first // planes)
    # the frame each (plane, row) holds: row q of plane p is frame 2^D q + bitrev(p) (bit reversal
    # is its own inverse), the padding rows repeat the last frame
    phase = torch.tensor(_bit_reversed(depth))
    frames = (torch.arange(rows)[None, :] * planes + phase[:, None]).clamp(max=n_first - 1)  # (plane, row)
    x = _first_layer(first, wav, frames, first.output_lengths(lengths))
    even, odd = x[:planes // 2], x[planes // 2:]
    del x  # each layer's input is freed once the next layer has its output
    for i, block in enumerate(rest):
        if block.kernel == 3:
            even, odd = _kernel3(block, even, odd)
        else:
            y = _activated(block, linear(odd, _tap(block, 1), add=linear(even, _tap(block, 0), block.conv.bias)))
            if i == depth - 1:  # one plane left, in time order
                return y[0, :, :_output_frames(wav.shape[1], blocks)].contiguous()
            even, odd = y[:y.shape[0] // 2], y[y.shape[0] // 2:]
    raise AssertionError("applies() admits only a kernel-2 layer last")


def _first_layer(block: nn.Module, wav: Tensor, frames: Tensor, lengths: Tensor | None) -> Tensor:
    """The first layer's output frames in the (plane, row) order of `frames`: (plane, batch, row, out)."""
    if isinstance(block.norm, ChannelNorm):
        return channel_normed_conv(block, wav, lengths, order=frames)
    weight = block.conv.weight  # (out, 1, kernel)
    out_ch, _, kernel = weight.shape
    ordered = wav.unfold(1, kernel, block.stride)[:, frames].transpose(0, 1)  # (plane, batch, row, kernel)
    return _activated(block, linear(ordered, weight.view(out_ch, kernel), block.conv.bias))


def _tap(block: nn.Module, k: int) -> Tensor:
    """Tap k of the block's kernel, (out, in), contiguous (oneDNN reorders a strided one per call)."""
    return block.conv.weight[:, :, k].contiguous()


def _kernel3(block: nn.Module, even: Tensor, odd: Tensor) -> tuple[Tensor, Tensor]:
    """A kernel-3, stride-2 layer on its input's even and odd planes (each (plane, batch, row, in),
    at least two planes) -> its output's even and odd planes, (plane / 2, batch, row, out) each.

    With xj[s] = input frame 4s + j (the halves of even: j = 0 then 2; of odd: 1 then 3) and
    W = (W0, W1, W2), y[t] = W0 x[2t] + W1 x[2t+1] + W2 x[2t+2]; over the output pair (2s, 2s+1)
    three products instead of four, as the shared (W0 + W2) x2 serves both:
        y[2s]   = W0 (x0[s] - x2[s])   + (W0 + W2) x2[s] + W1 x1[s]
        y[2s+1] = W2 (x0[s+1] - x2[s]) + (W0 + W2) x2[s] + W1 x3[s]
    """
    half = even.shape[0] // 2
    x0, x2, x1, x3 = even[:half], even[half:], odd[:half], odd[half:]
    w0, w1, w2 = _tap(block, 0), _tap(block, 1), _tap(block, 2)
    shared = linear(x2, w0 + w2, block.conv.bias)
    y_even = linear(x1, w1, add=linear(x0 - x2, w0, add=shared))
    y_odd = linear(x3, w1, add=linear(_next_minus(x0, x2), w2, add=shared))
    return _activated(block, y_even), _activated(block, y_odd)


def _next_minus(x: Tensor, y: Tensor) -> Tensor:
    """x[s+1] - y[s] for planes x, y (plane, batch, row, channel) of frames s in phase-plane order;
    the last frame, which has no successor, gets 0 (it only reaches outputs past the valid ones).

    Frame s+1 of the planes' sequence: for even s it is the odd frame s+1, i.e. the second half of
    the planes in order; for odd s, the successor within the even half, recursively; in the last
    plane left (time order), the next row.
    """
    out = torch.empty_like(x)
    planes, at = x.shape[0], 0
    while planes > 1:
        half = planes // 2
        torch.sub(x[half:planes], y[at:at + half], out=out[at:at + half])
        at += half
        planes = half
    torch.sub(x[0, :, 1:], y[at, :, :-1], out=out[at, :, :-1])
    out[at, :, -1].zero_()
    return out


def _activated(block: nn.Module, y: Tensor) -> Tensor:
    """The block's norm (LayerNorm over channels, if any) and GELU on a fresh product."""
    if isinstance(block.norm, nn.LayerNorm):
        y = F.layer_norm(y, block.norm.normalized_shape, block.norm.weight, block.norm.bias, block.norm.eps)
    return gelu_of_fresh(y)
