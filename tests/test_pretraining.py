"""The pretraining objective against transformers' Wav2Vec2ForPreTraining, and its invariants."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference_models import hf_model, save_hf, speech_waveforms
from w2vtk.convert import import_weights
from w2vtk.cpu import use_cpu_kernels
from w2vtk.dataset import Batch
from w2vtk.losses import sample_negative_indices
from w2vtk.masking import time_mask, utterance_rngs
from w2vtk.model.wav2vec2 import model_from_checkpoint
from w2vtk.pretraining import PretrainObjective, gumbel_temperature
from w2vtk.training.config import PretrainTaskConfig


def noiseless_gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    """Gumbel softmax with the noise left out, so two implementations pick the same codes."""
    soft = (logits / tau).softmax(dim)
    onehot = torch.zeros_like(logits).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return onehot - soft.detach() + soft if hard else soft


def _train_mode_without_dropout(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # attention modules keep a float
            m.dropout = 0.0
    return model


@pytest.mark.parametrize("style", ["base", "large"])
def test_loss_matches_transformers(style, tmp_path, monkeypatch, synth_librispeech):
    """Same weights, masks and distractors: our contrastive + alpha * diversity (a sum over masked frames)
    equals transformers' `loss`, which is scaled the same way (summed cross-entropy, diversity times
    the number of masked frames). The feature penalty is off: transformers has none. Gumbel noise is
    switched off in both so that they pick the same codes in training mode."""
    monkeypatch.setattr(F, "gumbel_softmax", noiseless_gumbel_softmax)
    hf = hf_model("pretrain", style, seed=3)
    hf.config.layerdrop = 0.0
    hf.config.mask_time_prob = 0.0
    ckpt = import_weights(save_hf(hf, tmp_path / "hf"))
    ckpt["model_config"].update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                                dropout_features=0.0, encoder_layerdrop=0.0)
    ours = use_cpu_kernels(model_from_checkpoint(ckpt), "cpu")  # the reference with W2VTK_CPU_KERNELS=0
    _train_mode_without_dropout(hf)
    _train_mode_without_dropout(ours)
    hf.set_gumbel_temperature(1.7)

    waves = speech_waveforms(synth_librispeech, 2)
    width = min(len(w) for w in waves)
    wav = torch.from_numpy(np.stack([w[:width] for w in waves]))
    b = wav.shape[0]
    t = int(ours.frame_lengths(torch.tensor([width]))[0])
    k = 7
    cfg = PretrainTaskConfig(num_negatives=k, logit_temp=hf.config.contrastive_logits_temperature,
                             diversity_weight=hf.config.diversity_loss_weight, feature_penalty_weight=0.0,
                             latent_temp=(1.7, 1.7, 1.0))
    mask = time_mask([t] * b, t, 0.65, 10, 2, utterance_rngs(0, 0, range(b)))
    n = int(mask[0].sum())
    negatives = sample_negative_indices(n, k, utterance_rngs(0, 0, range(b), stream=1))

    objective = PretrainObjective(ours, cfg, seed=0)
    objective.on_update(0)
    with torch.no_grad():
        noise = torch.zeros(b, n, hf.config.num_codevector_groups, hf.config.num_codevectors_per_group)
        result = objective.loss(Batch(torch.arange(b), wav), torch.from_numpy(mask), negatives, noise)

    # transformers takes distractors as flat indices into (batch * frame), at every frame.
    hf_neg = torch.zeros(b, t, k, dtype=torch.long)
    for i in range(b):
        frames = torch.from_numpy(np.nonzero(mask[i])[0])
        hf_neg[i] = i * t
        hf_neg[i, frames] = i * t + frames[negatives[i]]
    with torch.no_grad():
        out = hf(wav, mask_time_indices=torch.from_numpy(mask), sampled_negative_indices=hf_neg)
    assert result.sample_size == int(mask.sum())
    n_masked = result.sample_size
    # Per masked frame (the loss we log and optimise): within 1e-4.
    assert abs(float(result.loss) / n_masked - float(out.loss) / n_masked) < 1e-4
    # and the pieces: transformers' diversity term is (G*V - perplexity) / (G*V) times masked frames
    assert abs(result.stats["diversity"] - float(out.diversity_loss) / n_masked) < 1e-4
    assert abs(result.stats["contrastive"] - float(out.contrastive_loss) / n_masked) < 1e-4


def test_temperature_anneals_to_its_floor():
    cfg = PretrainTaskConfig(latent_temp=(2.0, 0.5, 0.999995))
    assert gumbel_temperature(cfg, 0) == 2.0
    assert abs(gumbel_temperature(cfg, 100_000) - 2.0 * 0.999995**100_000) < 1e-9
    assert gumbel_temperature(cfg, 10_000_000) == 0.5


def test_objective_masks_are_keyed_by_utterance_and_step():
    from w2vtk.model.config import tiny_config
    from w2vtk.model.wav2vec2 import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config(encoder_layers=1, dropout=0.0, attention_dropout=0.0, dropout_input=0.0,
                                    dropout_features=0.0, encoder_layerdrop=0.0)).eval()
    obj = PretrainObjective(model, PretrainTaskConfig(num_negatives=5), seed=1)
    wav = torch.randn(2, 16000)
    with torch.no_grad():
        a = obj(Batch(torch.tensor([3, 4]), wav), step=5)
        b = obj(Batch(torch.tensor([3, 4]), wav), step=5)
        c = obj(Batch(torch.tensor([3, 4]), wav), step=6)
    assert a.loss.item() == b.loss.item()
    assert a.loss.item() != c.loss.item()
