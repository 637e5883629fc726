"""A BASE CTC model's forward pass over 10 s utterances: ours against transformers' Wav2Vec2ForCTC.

Both models have random weights of the same shapes (a 32-symbol letter head) and run in eval mode
under torch.inference_mode, in fp32, on the same batch of real speech without padding.
transformers' runs the faster of its sdpa and eager attention (bench/hf_attention.py).
"""
from __future__ import annotations

import numpy as np
import torch

VOCAB_SIZE = 32


def build(side: str, wav_path: str, size: str = "base"):
    wav = torch.from_numpy(np.load(wav_path))
    torch.manual_seed(1)
    if side == "ours":
        from w2vtk.cpu import use_cpu_kernels
        from w2vtk.model import base, tiny

        model = use_cpu_kernels((base if size == "base" else tiny)(vocab_size=VOCAB_SIZE, latent_vars=0), "cpu").eval()
        # No parameter needs a gradient: FlopCounterMode's module hooks fail under inference_mode on
        # parameters that would (and inference_mode skips gradients anyway).
        model.requires_grad_(False)

        def run():
            with torch.inference_mode():
                logits, _ = model.ctc_logits(wav)
            return {"frames": int(logits.shape[1])}
    else:
        from transformers import Wav2Vec2ForCTC

        from bench.pretrain import hf_config

        from bench.hf_attention import FasterAttention

        model = Wav2Vec2ForCTC(hf_config(size, vocab_size=VOCAB_SIZE)).eval().requires_grad_(False)

        def forward():
            with torch.inference_mode():
                logits = model(wav).logits
            return {"frames": int(logits.shape[1])}
        run = FasterAttention(model, forward)
    return run
