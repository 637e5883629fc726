"""The pretraining losses: contrastive with K distractors, codebook diversity, and their metrics."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_negative_indices(num_masked: int, num_negatives: int,
                            rngs: list[np.random.Generator]) -> torch.Tensor:
    """Distractor positions among an utterance's masked frames, never the positive's own.

    Returns (batch, num_masked, K) int64: for position t, K indices drawn with replacement from the
    other num_masked - 1 masked frames of the same utterance (draw from [0, n-1), shift those >= t by one).
    """
    n, k = num_masked, num_negatives
    if n < 2:
        raise ValueError(f"need at least 2 masked frames per utterance to draw distractors, got {n}")
    out = np.empty((len(rngs), n, k), dtype=np.int64)
    own = np.arange(n)[:, None]
    for b, rng in enumerate(rngs):
        idx = rng.integers(0, n - 1, size=(n, k))
        out[b] = idx + (idx >= own)
    return torch.from_numpy(out)


def contrastive_logits(context: torch.Tensor, targets: torch.Tensor, negative_idx: torch.Tensor,
                       codes: torch.Tensor, logit_temp: float) -> torch.Tensor:
    """Cosine similarity / kappa of each prediction with its target (class 0) and K distractors.

    context: (B, n, F) predictions at masked frames; targets: (B, n, F) quantized targets at the same
    frames; negative_idx: (B, n, K); codes: (B, n, G) the targets' codebook entries.
    Returns (B, n, K+1) float32 logits; a distractor equal to the positive gets -inf.

    Rather than gathering K copies of the target vectors (B*n*K*F floats), we take all pairwise
    similarities within an utterance (B*n*n) once and gather from those.
    """
    c = F.normalize(context.float(), dim=-1, eps=1e-8)
    t = F.normalize(targets.float(), dim=-1, eps=1e-8)
    sim = torch.bmm(c, t.transpose(1, 2))  # (B, n, n): sim[b, i, j] = cos(c_i, t_j)
    pos = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)  # (B, n, 1)
    neg = sim.gather(2, negative_idx)  # (B, n, K)
    # Equal codes <=> equal target vectors (targets are a function of the chosen codes).
    same = (codes.unsqueeze(2) == codes.unsqueeze(1)).all(-1)  # (B, n, n)
    neg_is_pos = same.gather(2, negative_idx)
    neg = neg.masked_fill(neg_is_pos, float("-inf"))
    return torch.cat([pos, neg], dim=-1) / logit_temp


def contrastive_loss(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (K+1)-way cross-entropy with the positive as class 0, and the number of correct picks.

    logits: (B, n, K+1). Returns (loss_sum scalar, correct scalar int64).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    target = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    loss = F.cross_entropy(flat, target, reduction="sum")
    correct = (flat.argmax(-1) == 0).sum()
    return loss, correct


def diversity_loss(prob_perplexity: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(G*V - sum_g exp(H(mean softmax of group g))) / (G*V): 0 when every entry is used equally."""
    return (num_codes - prob_perplexity) / num_codes
