"""Linear layers through oneDNN's inner product on CPUs in fp32.

torch's fp32 `F.linear` on a CPU is a BLAS GEMM; oneDNN's inner-product primitive, which torch ships
for its own graph optimisations (`torch.ops.mkldnn._linear_pointwise`), runs the Transformer's and
the CNN's products faster on some CPUs (bench/README.md). In training the input's gradient goes
through oneDNN too and the weight's stays with BLAS. Results differ from BLAS's by rounding only
(summation order). Under autocast, on other devices and for other dtypes, `F.linear` applies.

Also here: the predicates the CPU kernels share (`plain_fp32`, `needs_grad`) and GELU in place on a
fresh tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

if _ONEDNN and torch.ops.mkldnn._linear_pointwise not in flop_registry:  # once, unless torch counts it
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _inner_product_flops(x_shape, *_, out_shape=None, **__) -> int:
        """What FlopCounterMode counts for oneDNN's product, with or without the fused addition, as
        for the mm it replaces (torch counts nothing for it): x (..., in) -> (..., out)."""
        return 2 * math.prod(x_shape) * out_shape[-1]


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will want gradients through any of `tensors` (None ones skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def plain_fp32(x: Tensor) -> bool:
    """fp32 on a CPU outside autocast: the oneDNN, in-place and out= paths apply."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def gelu_of_fresh(x: Tensor) -> Tensor:
    """GELU of a tensor its caller has just made and nothing else holds: in place (no new buffer)
    where autograd does not need x, e.g. at inference."""
    if plain_fp32(x) and not needs_grad(x):
        return torch.ops.aten.gelu_(x)
    return F.gelu(x)


def _onednn_applies(x: Tensor, weight: Tensor) -> bool:
    return _ONEDNN and plain_fp32(x) and weight.dtype == torch.float32


def _inner_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., in) @ weight (out, in)^T + bias, by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """F.linear with the forward and the input's gradient by oneDNN, the weight's by BLAS.
    x: (..., in); weight: (out, in); bias: (out,) or None. Returns (..., out)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _inner_product(grad, weight.t(), None)  # (..., out) @ (out, in)
        rows = grad.reshape(-1, grad.shape[-1])  # (frames, out)
        if ctx.needs_input_grad[1]:
            grad_w = rows.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_w, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, add: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) (+ add), by oneDNN where it applies; `add`, a tensor of the result's
    shape, is fused into the product where nothing needs gradients, else added after it.
    x: (..., in); weight: (out, in); bias: (out,) or None; add: (..., out) or None. Returns (..., out)."""
    if add is not None:
        if _onednn_applies(x, weight) and not needs_grad(x, weight, bias, add):
            return torch.ops.mkldnn._linear_pointwise.binary(x, add, weight, bias, "add")
        return linear(x, weight, bias) + add
    if not _onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    if not needs_grad(x, weight, bias):
        return _inner_product(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)


class OneDnnLinear(nn.Linear):
    """nn.Linear through `linear` (the same parameters and state-dict names)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
