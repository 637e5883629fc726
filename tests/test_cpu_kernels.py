"""The CPU kernels (w2vtk.cpu) against the reference modules they replace: the forward and every
gradient, in fp32 and under bf16 autocast; the entry point and its switch."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from w2vtk.cpu import kernels_enabled, use_cpu_kernels
from w2vtk.model import build_model, tiny_config
from w2vtk.model.encoder import ConvPositionalEmbedding, FeatureExtractor, SelfAttention


@pytest.fixture(autouse=True)
def kernels_on(monkeypatch):
    """These tests compare the kernels with the reference whatever W2VTK_CPU_KERNELS says outside."""
    monkeypatch.setenv("W2VTK_CPU_KERNELS", "1")


def cpu_version(module: nn.Module) -> nn.Module:
    """A copy of `module` with the CPU kernels swapped in (and at least one of them)."""
    kernel = use_cpu_kernels(copy.deepcopy(module), "cpu")
    assert any(type(a) is not type(b) for a, b in zip(kernel.modules(), module.modules()))
    return kernel


def perturb(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Parameters away from their initial values (norms away from identity, biases away from 0)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def outputs_and_grads(module: nn.Module, inputs: list[torch.Tensor], call, upstream_seed: int = 9,
                      bf16: bool = False):
    """module's output (fp32) and the gradients of a fixed projection of it w.r.t. the float inputs
    and every parameter."""
    leaves = [x for x in inputs if x.is_floating_point()]
    for x in leaves:
        x.grad = None
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = call(module, *inputs)
    out = out.float()
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed))
    (out * upstream).sum().backward()
    grads = [x.grad for x in leaves] + [p.grad for p in module.parameters()]
    return out.detach(), grads


def assert_same_function(reference: nn.Module, kernel: nn.Module, inputs, call, fp32_tol=1e-4, bf16_tol=None):
    """Forward and all gradients equal in fp32 (to `fp32_tol`) and close under bf16 autocast."""
    for bf16, tol in ((False, fp32_tol), (True, bf16_tol)):
        if tol is None:
            continue
        ref_inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        ker_inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        ref_out, ref_grads = outputs_and_grads(reference, ref_inputs, call, bf16=bf16)
        out, grads = outputs_and_grads(kernel, ker_inputs, call, bf16=bf16)
        torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads):
            assert (g is None) == (r is None)
            if r is not None:
                scale = float(r.abs().max()) or 1.0  # gradients summed over many frames: relative to their size
                torch.testing.assert_close(g / scale, r / scale, rtol=tol, atol=tol)


# -- the entry point ---------------------------------------------------------------------------------------
def test_one_switch_decides_and_the_state_dict_stays(monkeypatch):
    assert kernels_enabled("cpu") and kernels_enabled(torch.device("cpu"))
    assert not kernels_enabled("cuda:0") and not kernels_enabled(torch.device("meta"))
    model = build_model(tiny_config(vocab_size=5))
    keys = list(model.state_dict())
    assert use_cpu_kernels(model, "cuda") is model and type(model.encoder.layers[0].self_attn) is SelfAttention
    use_cpu_kernels(model, "cpu")
    assert list(model.state_dict()) == keys
    assert type(model.encoder.layers[0].self_attn).__name__ == "CpuSelfAttention"
    assert type(model.encoder.layers[0].feed_forward.fc1).__name__ == "OneDnnLinear"
    monkeypatch.setenv("W2VTK_CPU_KERNELS", "0")
    assert not kernels_enabled("cpu")
    plain = build_model(tiny_config())
    use_cpu_kernels(plain, "cpu")
    assert all(type(m).__module__.startswith(("w2vtk.model", "torch.")) for m in plain.modules())


@pytest.mark.parametrize("style", ["base", "large"])
def test_whole_model_with_kernels_equals_the_reference(style):
    """A model with every kernel swapped in computes the reference's CTC logits and parameter
    gradients (dropout off, padded batch), in fp32 and under bf16 autocast; at inference too."""
    extra = dict(extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True) if style == "large" else {}
    cfg = tiny_config(vocab_size=7, conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
                      encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_layers=2, dropout=0.0,
                      attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0, conv_pos=32, **extra)
    torch.manual_seed(0)
    reference = perturb(build_model(cfg), 0.02)
    kernel = cpu_version(reference)
    wav = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5555])
    call = lambda m, w: m.ctc_logits(w, lengths)[0]  # noqa: E731
    assert_same_function(reference, kernel, [wav], call, fp32_tol=2e-4, bf16_tol=0.1)
    with torch.inference_mode():
        torch.testing.assert_close(call(kernel.eval(), wav), call(reference.eval(), wav), rtol=1e-4, atol=1e-4)


# -- linear ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_nn_linear(with_bias):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    reference = nn.Linear(12, 9, bias=with_bias)
    kernel = cpu_version(reference)
    x = torch.randn(3, 12, 5).transpose(1, 2)  # (batch, frame, in), not contiguous
    assert_same_function(reference, kernel, [x], lambda m, x: m(x), fp32_tol=1e-5, bf16_tol=1e-2)
    with torch.inference_mode():
        torch.testing.assert_close(kernel(x), reference(x), rtol=1e-5, atol=1e-5)
    counts = []
    for module in (kernel, reference):
        with FlopCounterMode(display=False) as counter:
            module(x.requires_grad_()).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 3 * 5 * 12 * 9


def test_linear_adds_a_tensor_fused_at_inference_and_as_a_pass_in_training():
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.cpu.linear import linear

    torch.manual_seed(0)
    x = torch.randn(3, 12, 5).transpose(1, 2)
    weight, bias, add = torch.randn(9, 12), torch.randn(9), torch.randn(3, 5, 9)
    ref = F.linear(x, weight, bias) + add
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        torch.testing.assert_close(linear(x, weight, bias, add=add), ref, rtol=1e-5, atol=1e-5)
    assert counter.get_total_flops() == 2 * 3 * 5 * 12 * 9
    add.requires_grad_()
    ours = linear(x, weight, None, add=add)
    (grad,) = torch.autograd.grad(ours.sum(), add)
    torch.testing.assert_close(ours, F.linear(x, weight) + add, rtol=1e-5, atol=1e-5)
    assert torch.equal(grad, torch.ones_like(add))


# -- dropout -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cheap_dropout_drops_p_and_keeps_the_expectation(dtype):
    reference = nn.Dropout(0.1)
    kernel = cpu_version(reference)
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, dtype=dtype, requires_grad=True)
    y = kernel(x)
    out = y.detach().float()
    assert y.dtype == dtype
    dropped = float((out == 0).float().mean())
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard error is 0.0003
    assert float(out.mean()) == pytest.approx(1.0, abs=0.005)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - 6554 / 65536)), rtol=1e-2)  # p rounded to 2**-16
    y.float().sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(kernel(x), y)  # torch's seed decides the mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernel(x.detach()).dtype == reference(x.detach()).dtype
    odd = cpu_version(nn.Dropout(0.5))(torch.ones(3, 7))  # not a multiple of the four draws per word
    assert odd.shape == (3, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}
    assert kernel.eval()(x) is x


# -- attention ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_attention_in_training_equals_scaled_dot_product_attention(padded):
    """With dropout too rare to drop anything (p rounds to 0 on the kernel's 2**-16 grid and SDPA
    drops with probability 1e-9), the written-out attention is SDPA: output and gradients."""
    batch, frames, dim, heads = 3, 7, 12, 2
    mask = torch.arange(frames)[None, None, None, :] < torch.tensor([7, 4, 6])[:, None, None, None]
    mask = mask if padded else None
    torch.manual_seed(0)
    reference = SelfAttention(dim, heads, 1e-9).train()
    kernel = cpu_version(reference)
    x = torch.randn(batch, frames, dim)
    assert_same_function(reference, kernel, [x], lambda m, x: m(x, mask), fp32_tol=1e-5, bf16_tol=0.05)


def test_attention_dropout_masks_the_probabilities():
    """With p = 0.3 the kernel is softmax(q k^T / sqrt(d)), times the 0/1 mask of `keep_mask_into`
    drawn from the same seed and its scale, times v; the mask changes from call to call."""
    from w2vtk.cpu.attention import attention_with_dropout
    from w2vtk.cpu.dropout import keep_mask_into

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3))
    torch.manual_seed(1)
    ours = attention_with_dropout(q, k, v, None, 0.3)
    torch.manual_seed(1)
    keep = torch.empty(2, 3, 5, 5, dtype=torch.float64)
    scale = keep_mask_into(keep, 0.3)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
    torch.testing.assert_close(ours, (probs * keep * scale) @ v)
    assert 0 < float((keep == 0).double().mean()) < 0.6
    assert not torch.equal(attention_with_dropout(q, k, v, None, 0.3), ours)


# -- CNN ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,bias,lengths", [("group_norm", False, [16000, 16000]),
                                               ("group_norm", False, [12345, 7001]),
                                               ("layer_norm", True, [8000, 5555]),
                                               ("group_norm", False, [400, 400])])
def test_cnn_equals_the_reference_cnn(mode, bias, lengths):
    """Matrix products over windows, the first layer's folded norm and, at inference, phase planes:
    the reference CNN's features, lengths and gradients, padded or not, fp32 and bf16."""
    layers = [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2
    torch.manual_seed(0)
    reference = perturb(FeatureExtractor(layers, mode, bias))
    kernel = cpu_version(reference)
    lengths = torch.tensor(lengths)
    wav = torch.randn(len(lengths), int(lengths.max()))
    wav[0, int(lengths[0]):] = 0.3  # padding must not change the statistics
    assert_same_function(reference, kernel, [wav], lambda m, w: m(w, lengths)[0], fp32_tol=1e-4, bf16_tol=0.1)
    with torch.inference_mode():
        feats, frames = kernel(wav, lengths)
        ref, ref_frames = reference(wav, lengths)
    assert torch.equal(frames, ref_frames)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lengths", [[170000, 160005, 9000], [3000, 300]])
def test_phase_planes_equal_the_reference_cnn_in_groups_and_where_they_do_not_apply(lengths):
    """Phase planes in groups of about 10 s, a layout they do not cover (kernel 3 last), and an
    input with no output frame for one utterance."""
    from w2vtk.cpu import phase_planes

    layers = [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2
    torch.manual_seed(0)
    lengths = torch.tensor(lengths)
    wav = torch.randn(len(lengths), int(lengths.max()))
    for cnn_layers in (layers, layers[:-2]):
        reference = perturb(FeatureExtractor(cnn_layers, "group_norm", False)).eval()
        kernel = cpu_version(reference)
        with torch.inference_mode():
            feats, frames = kernel(wav, lengths)
            ref, ref_frames = reference(wav, lengths)
            assert phase_planes.applies(kernel.conv_layers, wav) == (cnn_layers is layers)
        assert torch.equal(frames, ref_frames)
        torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)
    assert not phase_planes.applies(kernel.conv_layers, wav[:, :300])


@pytest.mark.parametrize("kernel,stride,frames", [(3, 2, 41), (3, 2, 4), (2, 2, 41), (10, 5, 41), (4, 1, 41),
                                                  (2, 3, 41)])
def test_conv_as_matmul_equals_conv1d(kernel, stride, frames):
    """Windows that overlap, tile or leave gaps: nn.Conv1d's forward and all three gradients, the
    same FLOPs under FlopCounterMode, and bf16 products under autocast."""
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.cpu.cnn import conv1d_as_matmul

    torch.manual_seed(0)
    conv = nn.Conv1d(8, 6, kernel, stride=stride)
    call_ours = lambda c, x: conv1d_as_matmul(x, c.weight, c.bias, stride)  # noqa: E731
    call_ref = lambda c, x: c(x.transpose(1, 2)).transpose(1, 2)  # noqa: E731
    x = torch.randn(3, frames, 8)
    for bf16, tol in ((False, 1e-5), (True, 0.05)):
        outs = [outputs_and_grads(conv, [x.clone().requires_grad_()], call, bf16=bf16) for call in (call_ours, call_ref)]
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=tol, atol=tol)
        for g, r in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(g, r, rtol=tol, atol=tol * 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv1d_as_matmul(x, conv.weight, conv.bias, stride).dtype == torch.bfloat16
    flops = []
    for call in (call_ours, call_ref):
        with FlopCounterMode(display=False) as counter:
            call(conv, x.requires_grad_()).sum().backward()
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


# -- positional convolution --------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,frames", [(128, 499), (128, 129), (64, 300), (31, 100)])
def test_positional_conv_by_dft_equals_the_convolution(kernel, frames):
    """Overlap-save by DFT matrices: the grouped convolution's output and gradients (the weight
    norm's magnitude and direction, the bias, the input), also after updates by the fused AdamW
    (which changes parameters without bumping their version counters, so nothing may be cached)."""
    torch.manual_seed(0)
    reference = ConvPositionalEmbedding(96, kernel, groups=4)
    kernel_module = cpu_version(reference)
    x = torch.randn(3, frames, 96)
    assert kernel_module._dft_flops(3, frames, 96) < kernel_module._direct_flops(3, frames, 96)  # it takes the DFT
    assert_same_function(reference, kernel_module, [x], lambda m, x: m(x), fp32_tol=1e-4, bf16_tol=0.05)
    optimizer = torch.optim.AdamW(kernel_module.parameters(), lr=0.1, fused=True)
    for _ in range(2):
        with torch.inference_mode():
            ref = ConvPositionalEmbedding.forward(kernel_module, x)
            torch.testing.assert_close(kernel_module(x), ref, rtol=1e-4, atol=1e-4)
        kernel_module(x).sum().backward()
        optimizer.step()


def test_positional_conv_takes_the_dft_path_where_it_counts_fewer_flops():
    from torch.utils.flop_counter import FlopCounterMode

    pos = cpu_version(ConvPositionalEmbedding(768, 128, groups=16))  # BASE
    for batch, frames, dft in [(4, 249, True), (1, 499, True), (1, 100, False)]:
        x = torch.randn(batch, frames, 768)
        with FlopCounterMode(display=False) as counter:
            pos._conv_by_dft(x)
        assert counter.get_total_flops() == pos._dft_flops(batch, frames, 768)
        with FlopCounterMode(display=False) as counter:
            pos(x)
        direct = pos._direct_flops(batch, frames, 768)
        assert counter.get_total_flops() == (pos._dft_flops(batch, frames, 768) if dft else direct)
        assert (counter.get_total_flops() < direct) == dft
