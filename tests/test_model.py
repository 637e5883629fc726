"""The model: config, lengths, padding invariance, input checks, masks, quantizer, gradient scaling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_models import speech_waveforms
from w2vtk.errors import W2vtkError
from w2vtk.model import (ARCH_KEYS, ModelConfig, base_config, build_model, large_config, normalize_waveform, tiny,
                         tiny_config)


def small(**kw) -> ModelConfig:
    values = dict(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, encoder_embed_dim=48,
                  encoder_layers=2, encoder_ffn_embed_dim=96, encoder_attention_heads=4, conv_pos=16,
                  conv_pos_groups=4, final_dim=16, latent_vars=8, latent_groups=2, dropout=0.0,
                  attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0, encoder_layerdrop=0.0)
    values.update(kw)
    return ModelConfig(**values)


def model_of(style: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    extra = dict(extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True) if style == "large" else {}
    return build_model(small(**extra, **kw)).eval()


@pytest.fixture(scope="module")
def waveforms(synth_librispeech) -> list[np.ndarray]:
    return speech_waveforms(synth_librispeech, 3)


def pad(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


# -- config ------------------------------------------------------------------------------------------------
def test_paper_configs_have_the_papers_sizes():
    for cfg, millions in ((base_config(), 95.0), (large_config(), 317.4)):
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg).parameters())
        assert abs(n / 1e6 - millions) < 0.1
    assert base_config().receptive_field == 400 and large_config().layer_norm_first
    assert tiny_config(encoder_layers=2).encoder_layers == 2


def test_config_round_trip_and_errors():
    cfg = tiny_config(vocab_size=30)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(W2vtkError, match="unknown model config key.*encoder_layer\\b"):
        ModelConfig.from_dict({**cfg.to_dict(), "encoder_layer": 3})
    with pytest.raises(W2vtkError, match="encoder_attention_heads 5 must divide encoder_embed_dim 256"):
        tiny_config(encoder_attention_heads=5)
    with pytest.raises(W2vtkError, match="conv_pos_groups 7"):
        tiny_config(conv_pos_groups=7)
    with pytest.raises(W2vtkError, match="extractor_mode"):
        tiny_config(extractor_mode="batch_norm")
    assert set(ARCH_KEYS) <= set(cfg.to_dict())


# -- lengths and input checks ------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(400, 4000), min_size=1, max_size=3))
def test_frame_lengths_equal_the_conv_arithmetic(lengths):
    model = _LENGTHS_MODEL
    wav, lens = pad([np.zeros(n, dtype=np.float32) for n in lengths])
    with torch.no_grad():
        out = model.extract_features(wav, lens)
    expected = []
    for n in lengths:
        for _, k, s in model.cfg.conv_layers:
            n = (n - k) // s + 1
        expected.append(n)
    assert out.frame_lengths.tolist() == expected == model.frame_lengths(lens).tolist()
    assert out.features.shape[1] == max(expected)
    assert out.padding_mask.sum(1).tolist() == [max(expected) - e for e in expected]
    alone = model.feature_extractor(wav[:1, : lengths[0]])[0]
    assert alone.shape[1] == expected[0]  # the real convolution agrees


_LENGTHS_MODEL = build_model(small())


def test_zero_length_and_too_short_input_are_clear_errors():
    model = model_of("base")
    with pytest.raises(W2vtkError, match="zero-length input"):
        model.extract_features(torch.zeros(1, 0))
    with pytest.raises(W2vtkError, match="utterance 1: zero-length"):
        model.extract_features(torch.zeros(2, 800), torch.tensor([800, 0]))
    with pytest.raises(W2vtkError, match="input of 399 samples is shorter than the model's receptive field of 400"):
        model.extract_features(torch.zeros(1, 399))
    with pytest.raises(W2vtkError, match="shape \\(batch, sample\\)"):
        model.extract_features(torch.zeros(400))
    assert model.extract_features(torch.zeros(1, 400)).features.shape[1] == 1


# -- padding ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["base", "large"])
def test_padded_batch_equals_each_utterance_alone(style, waveforms):
    model = model_of(style, vocab_size=7)
    wav, lengths = pad(waveforms)
    assert len(set(lengths.tolist())) == 3
    with torch.no_grad():
        feats = model.extract_features(wav, lengths)
        enc = model.encode(feats.features, feats.padding_mask, output_hidden_states=True)
        logits, frames = model.ctc_logits(wav, lengths)
        for i, w in enumerate(waveforms):
            x = torch.from_numpy(w)[None]
            alone = model.extract_features(x)
            alone_enc = model.encode(alone.features, output_hidden_states=True)
            n = int(frames[i])
            assert n == alone.features.shape[1]
            assert torch.allclose(feats.features[i, :n], alone.features[0], atol=1e-5)
            for h, h_alone in zip(enc.hidden_states, alone_enc.hidden_states):
                assert torch.allclose(h[i, :n], h_alone[0], atol=1e-5)
            assert torch.allclose(logits[i, :n], model.ctc_logits(x)[0][0], atol=1e-5)


@pytest.mark.parametrize("style", ["base", "large"])
def test_inference_paths_of_the_cnn_equal_its_training_path(style, waveforms):
    """Without gradients the first layer writes and activates its output chunk by chunk, and the
    other layers activate in place; with them every step is an autograd op. Both give the same
    features, for equal lengths and for a padded batch."""
    model = model_of(style)
    n = min(len(w) for w in waveforms)
    wav = torch.from_numpy(np.stack([w[:n] for w in waveforms]))
    with torch.no_grad():
        fast, _ = model.feature_extractor(wav)
    slow, _ = model.feature_extractor(wav)  # parameters require gradients: the training path
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    padded, lengths = pad(waveforms)
    padded[0, lengths[0]:] = 0.3  # padding must not change the statistics of either path
    with torch.no_grad():
        fast, fast_lengths = model.feature_extractor(padded, lengths)
    slow, slow_lengths = model.feature_extractor(padded, lengths)
    assert torch.equal(fast_lengths, slow_lengths)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,bias,lengths", [("group_norm", False, [16000, 16000]),
                                               ("group_norm", False, [12345, 7001]),
                                               ("layer_norm", True, [8000, 5555]), ("group_norm", False, [400, 400]),
                                               ("group_norm", False, [170000, 160005, 9000])])
def test_cnn_in_phase_planes_equals_the_time_ordered_layers(mode, bias, lengths):
    """At inference on a CPU the CNN runs with its frames in bit-reversed phase planes: the features
    and lengths of the layers run one by one in time order, for frame counts that are not a multiple
    of the planes (down to one output frame), with padding and in groups of about 10 s; a layout it
    does not cover runs the time-ordered path."""
    from w2vtk.model import phase_planes
    from w2vtk.model.encoder import FeatureExtractor

    layers = [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2
    torch.manual_seed(0)
    cnn = FeatureExtractor(layers, mode, bias).eval()
    with torch.no_grad():
        for p in cnn.parameters():  # norms away from identity, biases away from 0
            p.add_(torch.randn_like(p) * 0.1)
    lengths = torch.tensor(lengths)
    wav = torch.randn(len(lengths), int(lengths.max()))
    with torch.inference_mode():
        assert phase_planes.applies(cnn.conv_layers, wav)
        feats, frames = cnn(wav, lengths)
        ref, ref_frames = wav, lengths
        for block in cnn.conv_layers:
            ref, ref_frames = block(ref, ref_frames)
    assert torch.equal(frames, ref_frames)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    assert not phase_planes.applies(FeatureExtractor(layers[:-1], mode, bias).conv_layers, wav)  # kernel 3 last
    assert not phase_planes.applies(cnn.conv_layers, wav[:, :300])  # no output frame


@pytest.mark.parametrize("kernel,stride,frames,channels", [
    (3, 2, 41, 512), (3, 2, 44, 512), (3, 2, 5, 512), (3, 2, 4, 512), (3, 2, 41, 8),
    (2, 2, 41, 8), (10, 5, 41, 8), (4, 1, 41, 8), (2, 3, 41, 8)])
def test_conv_as_matmul_equals_conv1d_with_its_gradients(kernel, stride, frames, channels):
    """Windows that overlap, tile or leave gaps, and kernel 3 / stride 2 over 512 channels by minimal
    filtering with an even or odd number of outputs: the forward and all three gradients are
    nn.Conv1d's, and FlopCounterMode counts the work that runs (the benchmark's GEMM fraction relies
    on it): the convolution's, or for minimal filtering 2.5 rows of products per output frame
    instead of 3."""
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.model.encoder import conv1d_as_matmul

    torch.manual_seed(0)
    x = torch.randn(3, frames, channels, requires_grad=True)  # (batch, frame, channel)
    weight = (torch.randn(6, channels, kernel) / channels ** 0.5).requires_grad_()
    bias = torch.randn(6, requires_grad=True)
    ours = conv1d_as_matmul(x, weight, bias, stride)
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), weight, bias, stride=stride).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, (x, weight, bias), upstream)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), upstream)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    flops = []
    for conv in (lambda: conv1d_as_matmul(x, weight, bias, stride),
                 lambda: torch.nn.functional.conv1d(x.transpose(1, 2), weight, bias, stride=stride)):
        with FlopCounterMode(display=False) as counter:
            conv().sum().backward()
        flops.append(counter.get_total_flops())
    n = ref.shape[1]
    if (kernel, stride) == (3, 2) and n >= 2 and channels >= 512:  # per pass: odd taps, 3 per pair, 2 unpaired
        assert flops[0] * 3 * n == flops[1] * (n + 3 * (n // 2) + 2 * (n % 2))
    else:
        assert flops[0] == flops[1] > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv1d_as_matmul(x, weight, bias, stride)
    assert low.dtype == torch.bfloat16  # the GEMMs ran in bf16, as F.linear's would
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.2)
    grads = torch.autograd.grad(low.float(), (x, weight, bias), upstream)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=0.05, atol=0.5)


@pytest.mark.parametrize("kernel,frames", [(128, 499), (128, 129), (128, 7), (64, 300), (31, 100)])
def test_positional_conv_by_dft_equals_the_convolution(kernel, frames):
    """In fp32 on a CPU the positional convolution runs by overlap-save with DFT matrices where that
    takes fewer FLOPs: the grouped convolution's output and gradients, with and without gradients,
    also after updates by the fused AdamW (which changes parameters without bumping their version
    counters, so nothing may be cached on them); the module's own choice of path agrees too."""
    from w2vtk.model.encoder import ConvPositionalEmbedding

    torch.manual_seed(0)
    pos = ConvPositionalEmbedding(96, kernel, groups=4)
    x = torch.randn(3, frames, 96, requires_grad=True)

    def convolution():  # the module's parameters through nn.Conv1d
        return torch.nn.functional.gelu(pos.conv(x.transpose(1, 2))[:, :, :frames]).transpose(1, 2)

    def by_dft():
        return torch.nn.functional.gelu(pos._conv_by_dft(x))

    upstream = torch.randn(3, frames, 96)
    ours, ref = by_dft(), convolution()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pos(x), ref, rtol=1e-5, atol=1e-5)
    params = [x, *pos.parameters()]
    for g, r in zip(torch.autograd.grad(ours, params, upstream), torch.autograd.grad(ref, params, upstream)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    optimizer = torch.optim.AdamW(pos.parameters(), lr=0.1, fused=True)
    for _ in range(2):
        with torch.inference_mode():
            torch.testing.assert_close(by_dft(), convolution(), rtol=1e-5, atol=1e-5)
        (by_dft() * upstream).sum().backward()
        optimizer.step()


def test_positional_conv_takes_the_dft_path_where_it_counts_fewer_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.model.encoder import ConvPositionalEmbedding

    pos = ConvPositionalEmbedding(768, 128, groups=16)  # BASE
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


def test_dropout_drops_p_and_keeps_the_expectation():
    from w2vtk.model.dropout import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout(x, 0.1)
    out = y.detach()
    dropped = float((out == 0).float().mean())
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard error is 0.0003
    assert float(out.mean()) == pytest.approx(1.0, abs=0.005)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - 6554 / 65536)))  # p rounded to 2**-16
    y.sum().backward()
    assert torch.equal(x.grad, out)  # the gradient is the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)  # torch's seed decides the mask
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    odd = dropout(torch.ones(3, 7), 0.5)  # a size that is not a multiple of the four draws per word
    assert odd.shape == (3, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}
    module = Dropout(0.5).eval()
    assert module(x) is x


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_f_linear_with_its_gradients(activation, with_bias):
    """w2vtk.model.linear (oneDNN where it applies): F.linear's output, and its gradients for a
    strided 3-D input, with and without gradients, and the same FLOPs under FlopCounterMode."""
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.model.linear import _ONEDNN, linear

    class OpsSeen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x = torch.randn(3, 12, 5).transpose(1, 2).requires_grad_()  # (batch, frame, in), not contiguous
    weight = torch.randn(9, 12, requires_grad=True)
    bias = torch.randn(9, requires_grad=True) if with_bias else None

    def reference(x, weight, bias):
        y = F.linear(x, weight, bias)
        return F.gelu(y) if activation == "gelu" else y

    upstream = torch.randn(3, 5, 9)
    with OpsSeen() as seen:
        ours = linear(x, weight, bias, activation)
        grads = torch.autograd.grad(ours, [t for t in (x, weight, bias) if t is not None], upstream)
    ref = reference(x, weight, bias)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, weight, bias) if t is not None], upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, weight, bias, activation), ref.detach(), rtol=1e-5, atol=1e-5)
    assert (torch.ops.mkldnn._linear_pointwise in seen.ops) == _ONEDNN
    counts = []
    for forward in (linear, reference):
        with FlopCounterMode(display=False) as counter:
            forward(x, weight, bias).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 3 * 5 * 12 * 9
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps F.linear's casts
        assert linear(x, weight, bias).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="activation"):
        linear(x, weight, bias, "relu")


def test_linear_adds_a_tensor_fused_at_inference_and_as_a_pass_in_training():
    """linear(..., add=t) is F.linear + t: fused into oneDNN's product where nothing needs gradients
    (and counted as the product's FLOPs), an addition after it where something does."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtk.model.linear import linear

    torch.manual_seed(0)
    x = torch.randn(3, 12, 5).transpose(1, 2)  # (batch, frame, in), not contiguous
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
    with pytest.raises(ValueError, match="not both"):
        linear(x, weight, bias, "gelu", add=add)


@pytest.mark.parametrize("padded", [False, True])
def test_attention_with_dropout_equals_the_written_out_attention(padded):
    from w2vtk.model.attention import attention_with_dropout
    from w2vtk.model.encoder import SelfAttention

    batch, frames, dim, heads = 3, 7, 12, 2
    mask = torch.arange(frames)[None, None, None, :] < torch.tensor([7, 4, 6])[:, None, None, None]
    mask = mask if padded else None
    torch.manual_seed(0)
    attn = SelfAttention(dim, heads, 0.3).train()
    x = torch.randn(batch, frames, dim, requires_grad=True)

    def written_out(x):  # the generic path: q, k, v split by view, dropout() on the probabilities
        qkv = attn.in_proj(x).view(batch, frames, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        y = attn._attention_with_dropout(*qkv.unbind(0), mask)
        return attn.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))

    grad_out = torch.randn(batch, frames, dim)
    results = []
    for forward in (attn, written_out):  # the module takes attention_with_dropout in fp32 training
        torch.manual_seed(1)  # the same dropout bits
        y = forward(x, mask) if forward is attn else forward(x)
        x.grad = None
        attn.zero_grad()
        y.backward(grad_out)
        results.append((y.detach(), x.grad, attn.in_proj.weight.grad))
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, atol=1e-6)
    assert (results[0][0] != 0).all()  # dropout zeroes probabilities, not outputs

    # the backward's formula (the mask not kept) against numerical gradients, seeded per call
    qkv = torch.randn(batch, frames, 3 * dim, dtype=torch.float64, requires_grad=True)

    def seeded(qkv):
        torch.manual_seed(2)
        return attention_with_dropout(qkv, heads, 0.3, mask)
    assert torch.autograd.gradcheck(seeded, (qkv,))
    assert not torch.equal(seeded(qkv), attention_with_dropout(qkv, heads, 0.3, mask))  # a new mask per call


def test_normalize_waveform_ignores_padding(waveforms):
    wav, lengths = pad(waveforms)
    out = normalize_waveform(wav, lengths)
    for i, w in enumerate(waveforms):
        n = len(w)
        alone = normalize_waveform(torch.from_numpy(w)[None])[0]
        assert torch.allclose(out[i, :n], alone, atol=1e-5)
        assert abs(float(alone.mean())) < 1e-4 and abs(float(alone.std()) - 1) < 1e-3
        assert not out[i, n:].any()


# -- encode ------------------------------------------------------------------------------------------------
def test_hidden_states_follow_transformers_indexing(waveforms):
    for style in ("base", "large"):
        model = model_of(style)
        with torch.no_grad():
            feats = model.extract_features(torch.from_numpy(waveforms[0])[None])
            enc = model.encode(feats.features, output_hidden_states=True)
        assert len(enc.hidden_states) == model.cfg.encoder_layers + 1
        if style == "base":  # post-LN: the Transformer input is layer-normalised, the output is the last layer's
            assert torch.allclose(enc.hidden_states[0].std(-1, unbiased=False), torch.ones(1), atol=0.05)
            assert torch.equal(enc.hidden_states[-1], enc.x)
        else:  # pre-LN: the final LayerNorm comes after the last hidden state
            assert torch.allclose(model.encoder.layer_norm(enc.hidden_states[-1]), enc.x, atol=1e-6)


def test_time_and_channel_masks():
    model = model_of("base")
    features = torch.randn(2, 30, 32)
    mask_time = torch.zeros(2, 30, dtype=torch.bool)
    mask_time[:, 5:15] = True
    other = features.clone()
    other[:, 5:15] = torch.randn(2, 10, 32)  # masked frames' content must not matter
    with torch.no_grad():
        a = model.encode(features, mask_time=mask_time).x
        b = model.encode(other, mask_time=mask_time).x
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, model.encode(features).x, atol=1e-3)
        mask_channel = torch.zeros(2, 48, dtype=torch.bool)
        mask_channel[:, :10] = True
        x = model.post_extract_proj(features)
        x[:, :, :10] = 0
        expected = model.encoder(x)[0]
        assert torch.allclose(model.encode(features, mask_channel=mask_channel).x, expected, atol=1e-6)


def test_layerdrop_skips_layers_in_training_only():
    model = model_of("base", encoder_layerdrop=0.999)
    features = torch.randn(1, 20, 32)
    model.train()
    torch.manual_seed(0)
    enc = model.encode(features, output_hidden_states=True)
    assert all(torch.equal(h, enc.hidden_states[0]) for h in enc.hidden_states)
    model.eval()
    enc = model.encode(features, output_hidden_states=True)
    assert not torch.equal(enc.hidden_states[1], enc.hidden_states[0])


# -- quantizer --------------------------------------------------------------------------------------------
def test_quantizer_eval_takes_the_argmax_and_training_samples_with_gumbel():
    model = model_of("base")
    feats = torch.randn(3, 40, 32)
    with torch.no_grad():
        out = model.quantize(feats)
        logits = model.quantizer.weight_proj(feats).view(3, 40, 2, 8)
        assert torch.equal(out.codes, logits.argmax(-1))
        codebook = model.quantizer.codevectors.view(2, 8, -1)
        expected = torch.cat([codebook[0][out.codes[..., 0]], codebook[1][out.codes[..., 1]]], -1)
        assert torch.allclose(out.q, model.project_q(expected), atol=1e-6)
        assert out.q.shape == (3, 40, 16) and out.avg_probs.shape == (2, 8)
        assert torch.allclose(out.avg_probs.sum(-1), torch.ones(2))
        assert 1.0 <= float(out.code_perplexity) <= 16.0 and 1.0 <= float(out.prob_perplexity) <= 16.0
    model.train()
    flat = 1e-3 * feats.view(-1, 32)  # near-equal logits: Gumbel sampling rarely picks the argmax
    with torch.no_grad():
        argmax = model.quantizer.weight_proj(flat).view(-1, 2, 8).argmax(-1)
    sampled = model.quantize(flat)
    assert sampled.codes.shape == (120, 2)
    assert (sampled.codes != argmax).float().mean() > 0.5
    sampled.q.pow(2).sum().backward()  # straight-through: gradients reach the logits and the codebooks
    assert model.quantizer.weight_proj.weight.grad.abs().sum() > 0
    assert model.quantizer.codevectors.grad.abs().sum() > 0


def test_gumbel_temperature_shapes_the_gradient_not_the_codes():
    model = model_of("base").train()
    feats = torch.randn(50, 32)
    results = []
    for temperature in (2.0, 0.5):
        model.zero_grad()
        model.quantizer.temperature = temperature
        torch.manual_seed(5)
        out = model.quantize(feats)
        out.q.pow(2).sum().backward()
        results.append((out.codes, model.quantizer.weight_proj.weight.grad.clone()))
    (codes_hot, grad_hot), (codes_cold, grad_cold) = results
    assert torch.equal(codes_hot, codes_cold)  # same noise, same hard choice
    assert not torch.allclose(grad_hot, grad_cold)


def test_given_gumbel_noise_decides_the_training_codes():
    model = model_of("base").train()
    feats = torch.randn(4, 6, 32)
    noise = -torch.empty(4, 6, 2, 8).exponential_(generator=torch.Generator().manual_seed(2)).log()
    with torch.no_grad():
        logits = model.quantizer.weight_proj(feats).view(4, 6, 2, 8)
    a, b = model.quantize(feats, gumbel_noise=noise), model.quantize(feats, gumbel_noise=noise)
    assert torch.equal(a.codes, (logits + noise).argmax(-1)) and torch.equal(a.q, b.q)
    assert not torch.equal(a.codes, logits.argmax(-1))
    # code perplexity counts the noise-free choices (fairseq), here every frame's argmax
    counts = torch.stack([torch.bincount(logits.argmax(-1)[..., g].flatten(), minlength=8) for g in range(2)]) / 24
    expected = torch.exp(-(counts * torch.log(counts + 1e-7)).sum(-1)).sum()
    assert torch.allclose(a.code_perplexity, expected)


def test_quantizer_runs_in_fp32_under_autocast():
    model = model_of("base")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.quantize(torch.randn(2, 10, 32))
    assert out.avg_probs.dtype == torch.float32 and out.prob_perplexity.dtype == torch.float32


# -- gradients into the CNN -------------------------------------------------------------------------------
def _cnn_grad(mult: float) -> torch.Tensor | None:
    model = model_of("base", feature_grad_mult=mult).train()
    torch.manual_seed(3)
    wav = torch.randn(1, 2000)
    feats = model.extract_features(wav)
    (feats.features.pow(2).sum() + feats.penalty).backward()
    return model.feature_extractor.conv_layers[1].conv.weight.grad


def test_feature_grad_mult_scales_the_cnn_gradient():
    full, scaled = _cnn_grad(1.0), _cnn_grad(0.1)
    assert torch.allclose(scaled, 0.1 * full, rtol=1e-4, atol=1e-9)
    assert _cnn_grad(0.0) is None  # frozen: no graph through the CNN at all


def test_penalty_is_the_mean_squared_cnn_output_of_valid_frames():
    model = model_of("base")
    wav, lengths = pad([np.random.default_rng(0).standard_normal(n).astype(np.float32) for n in (3000, 1500)])
    with torch.no_grad():
        out = model.extract_features(wav, lengths)
        raw = [model.feature_extractor(wav[i:i + 1, :n])[0][0] for i, n in enumerate(lengths.tolist())]
    expected = torch.cat(raw).pow(2).mean()
    assert torch.allclose(out.penalty, expected, rtol=1e-5)


def test_tiny_model_learns_a_ctc_task_on_a_cpu():
    """A few optimizer steps reduce a CTC loss: the whole model is trainable end to end."""
    torch.manual_seed(0)
    model = tiny(vocab_size=5, conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
                 encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                 conv_pos=8, conv_pos_groups=4)
    wav = torch.randn(2, 4000)
    targets, target_lengths = torch.tensor([1, 2, 3, 4, 1, 2]), torch.tensor([3, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        logits, _ = model.ctc_logits(wav)
        loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets,
                                            torch.tensor([logits.shape[1]] * 2), target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
