"""Product quantisation with Gumbel softmax: G codebooks of V entries, one entry chosen per group.

Training picks entries with hard straight-through Gumbel softmax at temperature `temperature` (the
trainer anneals it); evaluation takes the argmax. Everything runs in fp32, as in fairseq, because the
softmax over V logits and the perplexities are sensitive to half precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """q: (..., final_dim) after project_q (the model's output) or (..., codevector_dim) from the
    quantizer alone; codes: (..., G) long, the entries q is made of; prob_perplexity: from avg_probs;
    code_perplexity: from the frequencies of the noise-free argmax entries; avg_probs: (G, V) softmax
    averaged over frames (no Gumbel noise, no temperature)."""

    q: Tensor
    codes: Tensor
    prob_perplexity: Tensor
    code_perplexity: Tensor
    avg_probs: Tensor


def _perplexity(probs: Tensor) -> Tensor:
    """probs: (G, V) distributions -> sum over groups of exp(entropy)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    """(..., in_dim) -> concatenated codevectors (..., codevector_dim), with codes and perplexities."""

    def __init__(self, in_dim: int, num_vars: int, groups: int, codevector_dim: int, temperature: float = 2.0):
        super().__init__()
        self.num_vars, self.groups = num_vars, groups
        self.weight_proj = nn.Linear(in_dim, groups * num_vars)
        self.codevectors = nn.Parameter(torch.empty(1, groups * num_vars, codevector_dim // groups))
        self.temperature = float(temperature)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)

    def forward(self, x: Tensor, gumbel_noise: Tensor | None = None) -> QuantizerOutput:
        """x: (..., in_dim). gumbel_noise: (..., G, V) Gumbel(0, 1) samples to use in training instead
        of drawing them from torch's global generator (the trainer draws them per utterance, so a
        frame gets the same noise in any batch, process or resumed run)."""
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight_proj.weight.float(), self.weight_proj.bias.float())
            logits = logits.reshape(-1, self.groups, self.num_vars)  # (N, G, V)
            avg_probs = torch.softmax(logits, dim=-1).mean(0)
            if self.training:
                if gumbel_noise is None:
                    gumbel_noise = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1)
                soft = torch.softmax((logits + gumbel_noise.reshape(logits.shape).to(logits)) / self.temperature, -1)
                hard = F.one_hot(soft.argmax(-1), self.num_vars).to(soft.dtype)
                onehot = hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
            else:
                onehot = F.one_hot(logits.argmax(-1), self.num_vars).to(logits.dtype)
            codes = onehot.detach().argmax(-1)  # (N, G), the entries used (sampled in training)
            # fairseq's code perplexity counts the noise-free argmax, in training as in evaluation
            code_probs = F.one_hot(logits.detach().argmax(-1), self.num_vars).to(logits.dtype).mean(0)
            # one-hot (N, G, V) x codebooks (G, V, d): a lookup whose gradient still reaches the logits
            # (straight-through) and the codebooks.
            book = self.codevectors.float().view(self.groups, self.num_vars, -1)
            q = torch.einsum("ngv,gvd->ngd", onehot, book).reshape(*lead, -1)
        return QuantizerOutput(q=q, codes=codes.view(*lead, self.groups), prob_perplexity=_perplexity(avg_probs),
                               code_perplexity=_perplexity(code_probs), avg_probs=avg_probs)
