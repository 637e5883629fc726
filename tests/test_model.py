"""The model: config, lengths, padding invariance, input checks, masks, quantizer, gradient scaling.

Models are built as the training and inference commands build them (`use_cpu_kernels`), so these
tests cover the CPU kernels, and with W2VTK_CPU_KERNELS=0 the reference model
(tests/test_cpu_kernels.py compares the two module by module)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_models import speech_waveforms
from w2vtk.cpu import use_cpu_kernels
from w2vtk.errors import W2vtkError
from w2vtk.model import ARCH_KEYS, ModelConfig, base_config, large_config, normalize_waveform, tiny_config
from w2vtk.model import build_model as build_reference


DEVICE = os.environ.get("W2VTK_TEST_DEVICE", "cpu")  # bench/gpu_check.sh sets cuda


@pytest.fixture(autouse=True)
def on_test_device():
    """Tensors made in a test, models included, on the test device."""
    with torch.device(DEVICE):
        yield


def build_model(cfg: ModelConfig):
    """The model as the commands build it for the test device."""
    return use_cpu_kernels(build_reference(cfg), DEVICE)


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
            n = sum(p.numel() for p in build_reference(cfg).parameters())
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
    model = _LENGTHS_MODEL.to(DEVICE)
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
        probs = torch.softmax(logits, -1).view(-1, 2, 8)
        assert torch.allclose(out.avg_probs, probs.mean(0), atol=1e-6)
        # perplexity of a group's distribution p: exp(entropy); the quantizer's sums the G groups'
        code_freq = torch.stack([torch.bincount(out.codes[..., g].flatten(), minlength=8) / 120 for g in (0, 1)])
        for ppl, p in ((out.prob_perplexity, out.avg_probs), (out.code_perplexity, code_freq)):
            entropy = -torch.where(p > 0, p * p.log(), torch.zeros(())).sum(-1)
            assert float(ppl) == pytest.approx(float(entropy.exp().sum()), rel=1e-4)
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
    model = build_model(tiny_config(
        vocab_size=5, conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, encoder_layers=2,
        encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4))
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
