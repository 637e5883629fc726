"""CTC fine-tuning: a linear head on the Transformer, the paper's freezing and masking schedule.

The CNN stays frozen throughout when feature_grad_mult is 0, as in the paper; a positive value (a
model trained from random weights) lets it learn with that gradient scale. For the first
`freeze_finetune_updates` the Transformer is frozen too and only the CTC head learns. Time masks
(mask_prob, as in pretraining) and channel masks continue during fine-tuning. The loss is CTC with the blank at index 0,
summed over utterances with `zero_infinity` and normalised by the number of utterances, as fairseq's
`sentence_avg: true`; the logged `loss` is per target token.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from w2vtk.dataset import Batch, to_device
from w2vtk.decoding.greedy import greedy_ids
from w2vtk.masking import channel_mask, time_mask, utterance_rngs
from w2vtk.model.wav2vec2 import Wav2Vec2Model
from w2vtk.pretraining import StepResult
from w2vtk.scoring import ErrorCounts, align
from w2vtk.text import Vocabulary
from w2vtk.training.config import FinetuneTaskConfig


class FinetuneObjective:
    def __init__(self, model: Wav2Vec2Model, cfg: FinetuneTaskConfig, vocab: Vocabulary, seed: int):
        if model.ctc_head is None:
            raise ValueError("fine-tuning needs a model with a CTC head (vocab_size > 0)")
        self.model = model
        self.cfg = cfg
        self.vocab = vocab
        self.seed = seed
        self.best_metric = "per" if vocab.kind == "phn" else "wer"
        self.transformer_frozen = False
        if model.cfg.feature_grad_mult == 0:
            for p in model.feature_extractor.parameters():
                p.requires_grad_(False)

    def on_update(self, step: int) -> None:
        frozen = step < self.cfg.freeze_finetune_updates
        if frozen != self.transformer_frozen:
            for name, p in self.model.named_parameters():
                if not name.startswith(("ctc_head.", "feature_extractor.")):
                    p.requires_grad_(not frozen)
            self.transformer_frozen = frozen

    def __call__(self, batch: Batch, step: int) -> StepResult:
        m, cfg = self.model, self.cfg
        host = batch.host if batch.host is not None else batch  # ids and lengths without waiting for the device
        ids = host.ids.tolist()
        # fairseq runs the frozen Transformer under no_grad: nothing to backpropagate into it.
        grad = contextlib.nullcontext() if not self.transformer_frozen else torch.no_grad()
        with grad:
            feats = m.extract_features(batch.wav, batch.lengths)
            b, t, _ = feats.features.shape
            lengths = feats.frame_lengths if feats.frame_lengths is not None else torch.full((b,), t)
            frames = [t] * b if host.lengths is None else m.frame_lengths(host.lengths).tolist()
            mask_t = time_mask(frames, t, cfg.mask_prob, cfg.mask_length, cfg.min_masks,
                               utterance_rngs(self.seed, step, ids, stream=2))
            mask_c = channel_mask(b, m.cfg.encoder_embed_dim, cfg.mask_channel_prob, cfg.mask_channel_length,
                                  utterance_rngs(self.seed, step, ids, stream=3))
            dev = feats.features.device
            enc = m.encode(feats.features, feats.padding_mask, mask_time=to_device(torch.from_numpy(mask_t), dev),
                           mask_channel=to_device(torch.from_numpy(mask_c), dev))
        x = F.dropout(enc.x, cfg.final_dropout, m.training)
        logits = m.ctc_head(x)
        lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (frame, batch, vocab)
        loss = F.ctc_loss(lprobs, batch.targets, lengths, batch.target_lengths, blank=0, reduction="sum",
                          zero_infinity=True)
        tokens = batch.target_lengths.sum()  # on the device: no wait for it
        infeasible = ctc_infeasible(_split(host.targets, host.target_lengths), frames)
        return StepResult(loss, b, {"loss": loss.detach() / tokens.clamp(min=1), "tokens": tokens,
                                    "ctc_infeasible": infeasible / max(b, 1)})

    # -- validation: CTC loss and greedy error rate --------------------------------------------------
    def valid_step(self, batch: Batch) -> dict[str, float]:
        logits, frame_lengths = self.model.ctc_logits(batch.wav, batch.lengths)
        lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        loss = F.ctc_loss(lprobs, batch.targets, frame_lengths, batch.target_lengths, blank=0, reduction="sum",
                          zero_infinity=True)
        counts = ErrorCounts()
        emitted = empty = 0
        scores = logits.float().cpu().numpy()
        refs = _split(batch.targets, batch.target_lengths)
        for i, ref in enumerate(refs):
            frames = scores[i] if frame_lengths is None else scores[i, : int(frame_lengths[i])]
            hyp = greedy_ids(frames)
            emitted += len(hyp)
            empty += len(hyp) == 0
            counts = counts + align(self.vocab.to_words(ref), self.vocab.to_words(hyp)).counts
        return {"loss_sum": float(loss), "tokens": float(batch.target_lengths.sum()), "emitted": float(emitted),
                "errors": float(counts.errors), "ref_words": float(counts.ref_tokens),
                "empty": float(empty), "utterances": float(len(refs))}

    def valid_summary(self, sums: dict[str, float]) -> dict[str, float]:
        """loss per target token; the greedy error rate (%); emitted: greedy output tokens per reference
        token (0 while the model outputs only blanks); empty_output: the share of utterances whose output
        is all blank."""
        tokens = max(sums["tokens"], 1.0)
        return {"loss": sums["loss_sum"] / tokens, self.best_metric: 100.0 * sums["errors"] / max(sums["ref_words"], 1.0),
                "emitted": sums["emitted"] / tokens,
                "empty_output": sums.get("empty", 0.0) / max(sums.get("utterances", 0.0), 1.0)}


def ctc_infeasible(targets: list[list[int]], frames: list[int]) -> int:
    """How many targets CTC cannot align to their frames: a label sequence needs a frame per label plus
    one blank between each pair of equal neighbours; those utterances' losses are infinite."""
    return sum(len(t) + sum(a == b for a, b in zip(t, t[1:])) > n for t, n in zip(targets, frames))


def _split(flat: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [seq.tolist() for seq in torch.split(flat.cpu(), lengths.cpu().tolist())]
