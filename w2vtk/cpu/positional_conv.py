"""The positional convolution by overlap-save, its transforms as real DFT matrix products.

BASE's kernel of 128 taps over 768 channels in 16 groups costs several times the FLOPs of this
route, whose frequency-domain products are small per group; inputs too short to amortise the
kernel's transform keep the direct convolution (the module compares the two FLOP counts).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from w2vtk.cpu.linear import plain_fp32
from w2vtk.model.encoder import ConvPositionalEmbedding


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


class CpuConvPositionalEmbedding(ConvPositionalEmbedding):
    """ConvPositionalEmbedding by `_conv_by_dft` in fp32 on a CPU wherever that takes fewer FLOPs."""

    @property
    def block(self) -> int:
        """Frames per overlap-save block, giving block - kernel + 1 outputs."""
        return 1 << (2 * self.kernel - 1).bit_length()

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, frame, dim) with padded frames zeroed -> (batch, frame, dim) positional term."""
        if plain_fp32(x) and self._dft_flops(*x.shape) < self._direct_flops(*x.shape):
            return F.gelu(self._conv_by_dft(x))
        return super().forward(x)

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
        (`_overlap_save_dfts`): torch.fft's backward for the kernel's transform makes full complex
        transforms of zero-filled buffers. The kernel's spectrum is made again on every call: the
        fused AdamW changes parameters in place without bumping their version counters, which a
        cache would key on.
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
