"""The matrix-product kernels a step calls, timed at the step's own shapes: the hardware fraction's peak.

A Transformer layer's linear layers are products (rows, in) x (in, out) with rows = utterances x
frames. They run through one of these kernels: `F.linear` (transformers' layers, and ours in bf16
or with gradients of the weight), `torch.mm` into a preallocated output (BLAS without the linear
wrapper), and, where w2vtk.cpu applies it (fp32), oneDNN's inner product (`w2vtk.cpu.linear`). The
fastest of them at any of the shapes is the peak that a step's FLOP rate is divided by: the best
rate this machine reaches on the products the code itself calls.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def candidate_kernels(dtype: torch.dtype) -> dict:
    """name -> f(x (rows, in), weight (out, in), out (rows, out)) computing x @ weight^T."""
    kernels = {"F.linear": lambda x, w, out: F.linear(x, w),
               "torch.mm": lambda x, w, out: torch.mm(x, w.t(), out=out)}
    from w2vtk.cpu import linear

    probe = torch.zeros(1, 1, dtype=dtype)
    if linear._onednn_applies(probe, probe):
        kernels["oneDNN inner product (w2vtk.cpu.linear)"] = lambda x, w, out: linear._inner_product(x, w, None)
    return kernels


def build_products(shapes: list[list[int]], dtype: str, warmup: int):
    """A callable timing every kernel at every (rows, in, out) shape once; each call answers
    {"rates": {"kernel @ rows x in x out": FLOP/s, ...}}. `warmup` untimed calls of each first."""
    dt = getattr(torch, dtype)
    cases = []
    for rows, n_in, n_out in shapes:
        x, w = torch.randn(rows, n_in).to(dt), torch.randn(n_out, n_in).to(dt)
        out = torch.empty(rows, n_out, dtype=dt)
        for name, kernel in candidate_kernels(dt).items():
            cases.append((f"{name} @ {rows} x {n_in} x {n_out}", kernel, x, w, out, 2.0 * rows * n_in * n_out))
    for _, kernel, x, w, out, _ in cases:
        for _ in range(warmup):
            kernel(x, w, out)

    def run():
        rates = {}
        for name, kernel, x, w, out, flops in cases:
            t0 = time.perf_counter()
            kernel(x, w, out)
            rates[name] = flops / (time.perf_counter() - t0)
        return {"rates": rates}
    return run
