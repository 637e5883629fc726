"""One BASE pretraining update, ours and transformers', on the same batch of real speech.

Ours: `PretrainObjective` on `w2vtk.model.base()`, updated by the trainer's own `_update` (fused
AdamW, gradient division by the masked-frame count, grad-norm, optional bf16 autocast).
Reference: transformers' `Wav2Vec2ForPreTraining` with the same BASE settings; masks and distractors
drawn per step by `_compute_mask_indices` and `_sample_negative_indices`, gradients divided by the
number of masked frames and AdamW, as its `run_wav2vec2_pretraining_no_trainer.py` example does,
but with torch's fused AdamW, as ours (the example's is the single-tensor loop), and the faster of
its sdpa and eager attention (bench/hf_attention.py).

Both sides draw their masks inside the timed step. LayerDrop is off on both sides by default (every
step runs all 12 layers), which keeps step times comparable from one repetition to the next.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch


def _autocast(precision: str, device: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class OursStep:
    """Calling it runs one update (forward, loss, backward, optimizer)."""

    def __init__(self, wav: np.ndarray, precision: str, layerdrop: float, fused_adamw: bool = True,
                 size: str = "base", seed: int = 1, device: str = "cpu"):
        from w2vtk.cpu import use_cpu_kernels
        from w2vtk.dataset import Batch
        from w2vtk.model import base, tiny
        from w2vtk.pretraining import PretrainObjective
        from w2vtk.training.config import OptimConfig, PretrainTaskConfig, TrainerConfig
        from w2vtk.training.distributed import DistInfo
        from w2vtk.training.trainer import Trainer

        torch.manual_seed(seed)
        model = use_cpu_kernels((base if size == "base" else tiny)(encoder_layerdrop=layerdrop), device).to(device)
        optim = OptimConfig()
        # The trainer's update without its data pipeline: a Trainer whose __init__ (samplers, datasets)
        # is skipped, holding what `_update` reads.
        t = Trainer.__new__(Trainer)
        t.model, t.objective = model, PretrainObjective(model, PretrainTaskConfig(), seed)
        t.cfg, t.optim_cfg = TrainerConfig(precision=precision), optim
        t.device, t.dist, t.scaler = torch.device(device), DistInfo(), None
        # the optimizer Trainer.__init__ builds (keep the two in step); fused_adamw=False measures
        # torch's for-each AdamW instead
        t.optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                        weight_decay=optim.weight_decay, fused=fused_adamw or None)
        t.step, t.nonfinite, t.ckpt_dir = 0, 0, Path(".")
        t._step_module, t._step_params = None, []
        self.trainer = t
        self.batch = Batch(torch.arange(len(wav)), torch.from_numpy(wav))
        self.model = model

    def __call__(self) -> dict:
        stats = self.trainer._update([self.batch])
        return {"loss": stats["loss"]}


class RefStep:
    """transformers' Wav2Vec2ForPreTraining, BASE settings matched to ours (REFERENCE.md)."""

    def __init__(self, wav: np.ndarray, precision: str, layerdrop: float, fused_adamw: bool = True,
                 size: str = "base", seed: int = 1, device: str = "cpu"):
        from transformers import Wav2Vec2ForPreTraining

        torch.manual_seed(seed)
        np.random.seed(seed)
        cfg = hf_config(size, mask_time_prob=0.65, mask_time_length=10, mask_time_min_masks=2, num_negatives=100,
                        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
                        feat_quantizer_dropout=0.1, layerdrop=layerdrop, diversity_loss_weight=0.1,
                        contrastive_logits_temperature=0.1)
        self.model = Wav2Vec2ForPreTraining(cfg).to(device)
        self.cfg = cfg
        self.precision = precision
        self.device = device
        self.wav = torch.from_numpy(wav).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                           weight_decay=0.01, fused=fused_adamw or None)
        self.step = 0

    def __call__(self) -> dict:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        m = self.model
        m.train()
        m.set_gumbel_temperature(max(2.0 * 0.999995**self.step, 0.5))
        frames = int(m._get_feat_extract_output_lengths(self.wav.shape[1]))
        shape = (self.wav.shape[0], frames)
        mask = _compute_mask_indices(shape, self.cfg.mask_time_prob, self.cfg.mask_time_length,
                                     min_masks=self.cfg.mask_time_min_masks)
        negatives = _sample_negative_indices(shape, self.cfg.num_negatives, mask_time_indices=mask)
        mask_t = torch.tensor(mask, dtype=torch.long, device=self.device)
        with _autocast(self.precision, self.device):
            out = m(self.wav, mask_time_indices=mask_t,
                    sampled_negative_indices=torch.tensor(negatives, dtype=torch.long, device=self.device))
        loss = out.loss.float()
        loss.backward()
        num = float(mask_t.sum())
        for p in m.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 / num)
        torch.nn.utils.clip_grad_norm_(m.parameters(), math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss.item() / num}


def hf_config(size: str, **kw):
    """transformers' Wav2Vec2Config of our `base()` (its defaults) or `tiny()` model."""
    from transformers import Wav2Vec2Config

    values = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, codevector_dim=256,
                  proj_codevector_dim=256)
    if size == "tiny":  # w2vtk.model.config.tiny_config
        values.update(conv_dim=(128,) * 7, hidden_size=256, num_hidden_layers=4, intermediate_size=1024,
                      num_attention_heads=4, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8,
                      codevector_dim=64, proj_codevector_dim=64, num_codevectors_per_group=64)
    values.update(kw)
    return Wav2Vec2Config(**values)


def build(side: str, wav: np.ndarray, precision: str, layerdrop: float, fused_adamw: bool = True,
          size: str = "base"):
    """One side's update; the reference's with the faster of transformers' attention kernels."""
    if side == "ours":
        return OursStep(wav, precision, layerdrop, fused_adamw, size)
    from bench.hf_attention import FasterAttention

    step = RefStep(wav, precision, layerdrop, fused_adamw, size)
    return FasterAttention(step.model, step)
