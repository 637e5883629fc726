"""Test helpers: small transformers Wav2Vec2 models with random weights, fairseq-style checkpoints built
from them by fairseq's documented parameter names, and utterances of the synthesized corpus."""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from w2vtk.audio import read_audio

def corpus_utterances(corpus: Path, n: int = 3) -> list[Path]:
    """n FLAC files of different lengths from a LibriSpeech-layout corpus (the synth_librispeech fixture)."""
    chosen, sizes = [], set()
    for path in sorted(corpus.rglob("*.flac")):
        size = path.stat().st_size
        if size not in sizes:
            chosen.append(path)
            sizes.add(size)
        if len(chosen) == n:
            return chosen
    raise AssertionError(f"{corpus} holds fewer than {n} distinct utterances")


def speech_waveforms(corpus: Path, n: int = 3) -> list[np.ndarray]:
    """n waveforms of distinct lengths (16 kHz float32) from a LibriSpeech-layout corpus."""
    waves = [read_audio(p) for p in corpus_utterances(corpus, 4 * n)]
    distinct = {len(w): w for w in waves}
    assert len(distinct) >= n
    return list(distinct.values())[:n]


STYLES = {
    # BASE-style: group-norm CNN without bias, post-LN
    "base": dict(feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False),
    # LARGE-style: layer-norm CNN with bias, pre-LN and a final LayerNorm
    "large": dict(feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True),
}


def hf_config(style: str, vocab_size: int = 12, pad_token_id: int = 0):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        codevector_dim=32, proj_codevector_dim=24, num_codevectors_per_group=20, num_codevector_groups=2,
        vocab_size=vocab_size, pad_token_id=pad_token_id, **STYLES[style])


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights far from transformers' near-identity init, so that every layer changes its input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # norm gains, mask embedding
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "codevectors" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def hf_model(kind: str, style: str, seed: int = 0, pad_token_id: int = 0):
    """A transformers Wav2Vec2ForPreTraining ("pretrain") or Wav2Vec2ForCTC ("ctc") in eval mode."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

    torch.manual_seed(seed)
    cls = Wav2Vec2ForPreTraining if kind == "pretrain" else Wav2Vec2ForCTC
    model = cls(hf_config(style, pad_token_id=pad_token_id))
    randomize_(model, seed)
    return model.eval()


def ctc_symbols(n: int = 12) -> list[str]:
    return ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H"][:n]


def save_hf(model, folder: Path, symbols: list[str] | None = None) -> Path:
    model.save_pretrained(folder)
    if symbols is not None:
        (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    return folder


# -- fairseq ------------------------------------------------------------------------------------------------
# transformers' name -> fairseq's, as documented by transformers' convert_wav2vec2_original_pytorch_checkpoint
# script and torchaudio's import_fairseq (written out here independently of w2vtk.convert).
_HF_TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"masked_spec_embed", "mask_emb"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    (r"quantizer\.codevectors", "quantizer.vars"),
    (r"quantizer\.weight_proj\.", "quantizer.weight_proj."),
    (r"project_q\.", "project_q."),
    (r"project_hid\.", "final_proj."),
]


def fairseq_state(hf, finetuned: bool) -> dict[str, torch.Tensor]:
    """The state dict fairseq would hold for the same weights."""
    layer_norm_cnn = hf.config.feat_extract_norm == "layer"
    out = {}
    for key, value in hf.state_dict().items():
        key = key.removeprefix("wav2vec2.")
        if key.startswith("lm_head."):
            out["w2v_encoder.proj." + key.split(".", 1)[1]] = value.clone()
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", key)
        if m:
            new = f"feature_extractor.conv_layers.{m.group(1)}.{'2.1' if layer_norm_cnn else '2'}.{m.group(2)}"
        else:
            for pattern, template in _HF_TO_FAIRSEQ:
                if re.match(pattern, key):
                    new = re.sub(pattern, template, key, count=1)
                    break
            else:
                raise AssertionError(f"unmapped {key}")
        out[("w2v_encoder.w2v_model." if finetuned else "") + new] = value.clone()
    return out


def fairseq_model_cfg(hf) -> dict:
    """fairseq's Wav2Vec2Config fields for the transformers config."""
    c = hf.config
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    return {
        "_name": "wav2vec2", "extractor_mode": "layer_norm" if c.feat_extract_norm == "layer" else "default",
        "encoder_layers": c.num_hidden_layers, "encoder_embed_dim": c.hidden_size,
        "encoder_ffn_embed_dim": c.intermediate_size, "encoder_attention_heads": c.num_attention_heads,
        "activation_fn": "gelu", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1, "final_dim": c.proj_codevector_dim,
        "layer_norm_first": c.do_stable_layer_norm, "conv_feature_layers": layers, "conv_bias": c.conv_bias,
        "logit_temp": 0.1, "quantize_targets": True, "quantize_input": False, "same_quantizer": False,
        "target_glu": False, "feature_grad_mult": 0.1, "latent_vars": c.num_codevectors_per_group,
        "latent_groups": c.num_codevector_groups, "latent_dim": c.codevector_dim, "mask_length": 10,
        "mask_prob": 0.65, "num_negatives": 100, "conv_pos": c.num_conv_pos_embeddings,
        "conv_pos_groups": c.num_conv_pos_embedding_groups, "latent_temp": [2.0, 0.5, 0.999995],
    }


def fairseq_pretrain_checkpoint(hf, path: Path, normalize: bool = False) -> Path:
    """A fairseq (hydra era) pretraining checkpoint: {"cfg": {"model", "task"}, "model": ...}."""
    torch.save({"args": None, "cfg": {"model": fairseq_model_cfg(hf), "task": {"_name": "audio_pretraining",
                                                                               "normalize": normalize}},
                "model": fairseq_state(hf, finetuned=False), "optimizer_history": [], "extra_state": {}}, path)
    return path


def fairseq_finetuned_checkpoint(hf, path: Path, normalize: bool = False) -> Path:
    """An older fairseq fine-tuned checkpoint: argparse Namespaces under "args", encoder nested."""
    w2v_args = argparse.Namespace(**fairseq_model_cfg(hf), normalize=normalize, task="audio_pretraining")
    args = argparse.Namespace(arch="wav2vec_ctc", w2v_path="/nonexistent/wav2vec_small.pt", w2v_args=w2v_args,
                              dropout=0.0, attention_dropout=0.0, activation_dropout=0.1, dropout_input=0.0,
                              layerdrop=0.1, feature_grad_mult=0.0, normalize=normalize, mask_prob=0.5,
                              task="audio_finetuning", labels="ltr")
    torch.save({"args": args, "model": fairseq_state(hf, finetuned=True), "optimizer_history": [],
                "extra_state": {}, "last_optimizer_state": None}, path)
    return path


def write_fairseq_dict(symbols: list[str], path: Path) -> Path:
    """fairseq's dict.ltr.txt for a CTC head whose outputs are <s> <pad> </s> <unk> + symbols."""
    path.write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(symbols)))
    return path
