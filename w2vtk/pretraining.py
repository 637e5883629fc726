"""The wav2vec 2.0 pretraining objective on top of the model's building blocks.

For a batch: CNN features -> span masks over frames -> Transformer over the masked sequence; targets
are quantized from the *unmasked* features (after LayerNorm and feature dropout, before the
projection), only at masked frames; each prediction is scored against its target and K distractors
from the same utterance's masked frames. Loss per masked frame:

    contrastive + alpha * diversity + beta * feature_penalty

fairseq sums the contrastive term over frames and scales the other two by the number of masked
frames, then divides gradients by that number; we return the same sum and `sample_size`, and the
trainer divides, so the gradients are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from w2vtk.dataset import Batch
from w2vtk.errors import W2vtkError
from w2vtk.losses import contrastive_logits, contrastive_loss, diversity_loss, sample_negative_indices
from w2vtk.masking import time_mask, utterance_rngs
from w2vtk.model.wav2vec2 import Wav2Vec2Model
from w2vtk.training.config import PretrainTaskConfig


@dataclass
class StepResult:
    """loss: summed over `sample_size` units (masked frames, or target tokens for CTC); stats: floats
    to log, each already a per-unit mean or a count."""

    loss: torch.Tensor
    sample_size: int
    stats: dict[str, float]


def gumbel_temperature(cfg: PretrainTaskConfig, step: int) -> float:
    hi, lo, decay = cfg.latent_temp
    return max(hi * decay**step, lo)


class PretrainObjective:
    """Computes the pretraining loss of `model` on a batch at update `step`."""

    def __init__(self, model: Wav2Vec2Model, cfg: PretrainTaskConfig, seed: int):
        self.model = model
        self.cfg = cfg
        self.seed = seed

    def on_update(self, step: int) -> None:
        """Anneal the Gumbel temperature (fairseq updates it once per update)."""
        self.model.quantizer.temperature = gumbel_temperature(self.cfg, step)

    def __call__(self, batch: Batch, step: int) -> StepResult:
        """Draw this step's masks and distractors (keyed by seed, step and utterance), then score."""
        cfg, m = self.cfg, self.model
        b, width = batch.wav.shape
        lengths = batch.lengths if batch.lengths is not None else torch.full((b,), width)
        frames = m.frame_lengths(lengths.cpu()).tolist()
        ids = batch.ids.tolist()
        mask = time_mask(frames, max(frames), cfg.mask_prob, cfg.mask_length, cfg.min_masks,
                         utterance_rngs(self.seed, step, ids, stream=0), cfg.require_same_masks)
        counts = mask.sum(1)
        n = int(counts.min())
        if n < 2 or not (counts == n).all():
            raise W2vtkError(f"pretraining needs the same number (>= 2) of masked frames in every utterance of a "
                             f"batch, got {counts.tolist()}; keep task.require_same_masks=true and crop lengths "
                             "of at least a few hundred milliseconds (data.min_sample_size)")
        negatives = sample_negative_indices(n, cfg.num_negatives, utterance_rngs(self.seed, step, ids, stream=1))
        noise = None
        if m.training:
            shape = (n, m.cfg.latent_groups, m.cfg.latent_vars)
            noise = torch.from_numpy(np.stack([r.gumbel(size=shape).astype(np.float32)
                                               for r in utterance_rngs(self.seed, step, ids, stream=4)]))
        return self.loss(batch, torch.from_numpy(mask), negatives, noise)

    def loss(self, batch: Batch, mask: torch.Tensor, negatives: torch.Tensor,
             gumbel_noise: torch.Tensor | None = None) -> StepResult:
        """The objective for given masks, distractors and Gumbel noise.

        mask: (B, T) bool with the same count n in every row; negatives: (B, n, K) indices into each
        utterance's masked frames (in time order); gumbel_noise: (B, n, G, V) or None (the quantizer
        then draws its own in training).
        """
        cfg, m = self.cfg, self.model
        feats = m.extract_features(batch.wav, batch.lengths)
        b = feats.features.shape[0]
        mask = mask.to(feats.features.device)
        n = int(mask[0].sum())
        unmasked = F.dropout(feats.features, m.cfg.dropout_features, m.training)
        enc = m.encode(feats.features, feats.padding_mask, mask_time=mask)
        x = m.final_proj(enc.x[mask].view(b, n, -1))  # (B, n, final_dim)
        noise = None if gumbel_noise is None else gumbel_noise.to(x.device).view(b * n, *gumbel_noise.shape[2:])
        q = m.quantize(unmasked[mask].view(b * n, -1), noise)
        y = q.q.view(b, n, -1)
        codes = q.codes.view(b, n, -1)
        logits = contrastive_logits(x, y, negatives.to(x.device), codes, cfg.logit_temp)
        contrastive, correct = contrastive_loss(logits)
        num_codes = m.cfg.latent_groups * m.cfg.latent_vars
        diversity = diversity_loss(q.prob_perplexity, num_codes)
        sample_size = b * n
        loss = (contrastive + cfg.diversity_weight * diversity * sample_size
                + cfg.feature_penalty_weight * feats.penalty * sample_size)
        stats = {
            "loss": loss.item() / sample_size,
            "contrastive": contrastive.item() / sample_size,
            "diversity": diversity.item(),
            "penalty": feats.penalty.item(),
            "prob_perplexity": q.prob_perplexity.item(),
            "code_perplexity": q.code_perplexity.item(),
            "temperature": float(m.quantizer.temperature),
            "accuracy": correct.item() / sample_size,
        }
        return StepResult(loss, sample_size, stats)

    # -- validation: the same loss in eval mode (no dropout, argmax codes), fixed masks --------------
    best_metric = "loss"

    def valid_step(self, batch: Batch) -> dict[str, float]:
        res = self(batch, step=0)
        n = res.sample_size
        s = res.stats
        return {"frames": n, "batches": 1.0, "loss_sum": s["loss"] * n, "contrastive_sum": s["contrastive"] * n,
                "correct": s["accuracy"] * n, "prob_perplexity_sum": s["prob_perplexity"],
                "code_perplexity_sum": s["code_perplexity"]}

    def valid_summary(self, sums: dict[str, float]) -> dict[str, float]:
        n, b = max(sums["frames"], 1.0), max(sums["batches"], 1.0)
        return {"loss": sums["loss_sum"] / n, "contrastive": sums["contrastive_sum"] / n,
                "accuracy": sums["correct"] / n, "prob_perplexity": sums["prob_perplexity_sum"] / b,
                "code_perplexity": sums["code_perplexity_sum"] / b}
