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

import torch
import torch.nn.functional as F

from w2vtk.dataset import Batch
from w2vtk.errors import W2vtkError
from w2vtk.losses import contrastive_logits, contrastive_loss, diversity_loss, sample_negative_indices
from w2vtk.dataset import to_device
from w2vtk.masking import time_mask, utterance_rngs, utterance_seeds
from w2vtk.model.wav2vec2 import Wav2Vec2Model
from w2vtk.training.config import PretrainTaskConfig


@dataclass
class StepResult:
    """loss: summed over `sample_size` units (masked frames, or target tokens for CTC), an int or a
    tensor; stats: what to log, each already a per-unit mean or a count, as floats or as tensors left
    on the device (the trainer reads them once per update)."""

    loss: torch.Tensor
    sample_size: int | torch.Tensor
    stats: dict[str, float | torch.Tensor]


def gumbel_temperature(cfg: PretrainTaskConfig, step: int) -> float:
    hi, lo, decay = cfg.latent_temp
    return max(hi * decay**step, lo)


def gumbel_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) samples of `shape` per utterance, (len(seeds), *shape) fp32, each drawn on `device`
    by a generator seeded with the utterance's seed: the same noise for an utterance in any batch,
    process or resumed run, with nothing copied from the host."""
    out = torch.empty(len(seeds), *shape, device=device)
    for row, seed in zip(out, seeds):
        row.exponential_(generator=torch.Generator(device=device).manual_seed(seed))
    return out.log_().neg_()


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
        """Draw this step's masks and distractors (keyed by seed, step and utterance) on the host,
        from the batch's host copy, and the Gumbel noise on the batch's device; then score."""
        cfg, m = self.cfg, self.model
        host = batch.host if batch.host is not None else batch
        b, width = host.wav.shape
        lengths = host.lengths if host.lengths is not None else torch.full((b,), width)
        frames = m.frame_lengths(lengths).tolist()
        ids = host.ids.tolist()
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
            noise = gumbel_noise(utterance_seeds(self.seed, step, ids, stream=4), shape, batch.wav.device)
        return self.loss(batch, torch.from_numpy(mask), negatives, noise)

    def loss(self, batch: Batch, mask: torch.Tensor, negatives: torch.Tensor,
             gumbel_noise: torch.Tensor | None = None) -> StepResult:
        """The objective for given masks, distractors and Gumbel noise.

        mask: (B, T) bool on the host with the same count n in every row; negatives: (B, n, K) indices
        into each utterance's masked frames (in time order); gumbel_noise: (B, n, G, V) or None (the
        quantizer then draws its own in training).
        """
        cfg, m = self.cfg, self.model
        device = batch.wav.device
        b, n = negatives.shape[:2]
        # the masked frames' positions by index, not by boolean indexing on the device (which waits for it)
        positions = to_device(mask.nonzero()[:, 1].view(b, n), device)
        rows = torch.arange(b, device=device)[:, None]
        feats = m.extract_features(batch.wav, batch.lengths)
        unmasked = F.dropout(feats.features, m.cfg.dropout_features, m.training)
        enc = m.encode(feats.features, feats.padding_mask, mask_time=to_device(mask, device))
        x = m.final_proj(enc.x[rows, positions])  # (B, n, final_dim)
        noise = None if gumbel_noise is None else gumbel_noise.to(device).view(b * n, *gumbel_noise.shape[2:])
        q = m.quantize(unmasked[rows, positions].reshape(b * n, -1), noise)
        y = q.q.view(b, n, -1)
        codes = q.codes.view(b, n, -1)
        logits = contrastive_logits(x, y, to_device(negatives, device), codes, cfg.logit_temp)
        contrastive, correct = contrastive_loss(logits)
        num_codes = m.cfg.latent_groups * m.cfg.latent_vars
        diversity = diversity_loss(q.prob_perplexity, num_codes)
        sample_size = b * n
        loss = (contrastive + cfg.diversity_weight * diversity * sample_size
                + cfg.feature_penalty_weight * feats.penalty * sample_size)
        stats = {
            "loss": loss.detach() / sample_size,
            "contrastive": contrastive.detach() / sample_size,
            "diversity": diversity.detach(),
            "penalty": feats.penalty.detach(),
            "prob_perplexity": q.prob_perplexity.detach(),
            "code_perplexity": q.code_perplexity.detach(),
            "temperature": float(m.quantizer.temperature),
            "accuracy": correct.detach() / sample_size,
        }
        return StepResult(loss, sample_size, stats)

    # -- validation: the same loss in eval mode (no dropout, argmax codes), fixed masks --------------
    best_metric = "loss"

    def valid_step(self, batch: Batch) -> dict[str, float]:
        res = self(batch, step=0)
        n = res.sample_size
        s = {k: float(v) for k, v in res.stats.items()}
        return {"frames": n, "batches": 1.0, "loss_sum": s["loss"] * n, "contrastive_sum": s["contrastive"] * n,
                "correct": s["accuracy"] * n, "prob_perplexity_sum": s["prob_perplexity"],
                "code_perplexity_sum": s["code_perplexity"]}

    def valid_summary(self, sums: dict[str, float]) -> dict[str, float]:
        n, b = max(sums["frames"], 1.0), max(sums["batches"], 1.0)
        return {"loss": sums["loss_sum"] / n, "contrastive": sums["contrastive_sum"] / n,
                "accuracy": sums["correct"] / n, "prob_perplexity": sums["prob_perplexity_sum"] / b,
                "code_perplexity": sums["code_perplexity_sum"] / b}
