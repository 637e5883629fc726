"""The wav2vec 2.0 model: CNN feature extractor, Transformer context network, quantizer, CTC head.

The model computes representations; the pretraining objective (masking, negatives, losses) and the
fine-tuning loss live in the training code, which calls `extract_features`, `encode` and `quantize`.
Shapes: wav (batch, sample) at 16 kHz; features (batch, frame, feature); 1 frame = 320 samples for
the paper's CNN.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vtk.checkpoint import CheckpointError, architecture_mismatch
from w2vtk.errors import W2vtkError
from w2vtk.model.config import ARCH_KEYS, ModelConfig, base_config, large_config, tiny_config
from w2vtk.model.encoder import FeatureExtractor, TransformerEncoder, lengths_to_padding_mask
from w2vtk.model.quantizer import GumbelVectorQuantizer, QuantizerOutput

log = logging.getLogger(__name__)


@dataclass
class FeatureOutput:
    """features: (batch, frame, conv_dim) after the LayerNorm; penalty: fp32 scalar, mean squared CNN
    output (before the LayerNorm, valid frames only); padding_mask: (batch, frame) True = padding, or
    None when no lengths were given; frame_lengths: (batch,) or None."""

    features: Tensor
    penalty: Tensor
    padding_mask: Tensor | None
    frame_lengths: Tensor | None


@dataclass
class EncoderOutput:
    """x: (batch, frame, dim) the Transformer output (pre-LN models: after the final LayerNorm);
    hidden_states: [input of layer 1, output of layer 1, ..., output of layer L] each (batch, frame,
    dim), or None. As in transformers (5.x) the last one is layer L's own output, before a pre-LN
    model's final LayerNorm."""

    x: Tensor
    hidden_states: list[Tensor] | None


class _GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def normalize_waveform(wav: Tensor, lengths: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per utterance over its valid samples (for models with cfg.normalize).

    wav: (batch, sample); lengths: (batch,) or None. Padded samples stay zero.
    """
    if lengths is None:
        return F.layer_norm(wav, wav.shape[-1:], eps=eps)
    valid = (~lengths_to_padding_mask(lengths, wav.shape[-1])).to(wav.dtype)
    count = lengths.clamp(min=1).to(wav.dtype)[:, None]
    mean = (wav * valid).sum(-1, keepdim=True) / count
    var = (((wav - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    return (wav - mean) * torch.rsqrt(var + eps) * valid


class Wav2Vec2Model(nn.Module):
    """wav2vec 2.0 (Baevski et al., 2020), parameter names after fairseq's.

    feature_extractor: CNN, wav -> (batch, frame, conv_dim); layer_norm: LayerNorm(conv_dim);
    post_extract_proj: Linear(conv_dim, dim) or None when equal; mask_emb: (dim,) the vector that
    replaces masked frames; encoder: positional conv + Transformer; quantizer, project_q, final_proj:
    the pretraining heads (None when cfg.latent_vars == 0); ctc_head: Linear(dim, vocab) or None.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.feature_extractor = FeatureExtractor(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, dim) if cfg.conv_dim != dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.encoder = TransformerEncoder(
            dim, cfg.encoder_layers, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.conv_pos,
            cfg.conv_pos_groups, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout,
            cfg.encoder_layerdrop, cfg.layer_norm_first)
        if cfg.latent_vars > 0:
            self.quantizer = GumbelVectorQuantizer(cfg.conv_dim, cfg.latent_vars, cfg.latent_groups,
                                                   cfg.codevector_dim)
            self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
            self.final_proj = nn.Linear(dim, cfg.final_dim)
        else:
            self.quantizer = self.project_q = self.final_proj = None
        self.ctc_head = nn.Linear(dim, cfg.vocab_size) if cfg.vocab_size > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        # fairseq: Kaiming for the CNN, BERT's N(0, 0.02) for the Transformer's Linears, Xavier for the
        # CTC projection; the quantizer and positional conv initialise themselves.
        for block in self.feature_extractor.conv_layers:
            nn.init.kaiming_normal_(block.conv.weight)
        for module in self.encoder.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
        if self.ctc_head is not None:
            nn.init.xavier_uniform_(self.ctc_head.weight)
            nn.init.zeros_(self.ctc_head.bias)

    # -- lengths ---------------------------------------------------------------------------------
    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """(batch,) samples -> (batch,) frames out of the CNN (conv arithmetic, no padding)."""
        return self.cfg.frame_lengths(lengths)

    def _check_input(self, wav: Tensor, lengths: Tensor | None) -> None:
        """One-line errors for inputs that yield no frame. Lengths on an accelerator are not read back
        (that would wait for the device on every batch): the data loaders leave out short audio."""
        if wav.dim() != 2:
            raise W2vtkError(f"expected a waveform batch of shape (batch, sample), got shape {tuple(wav.shape)}")
        if lengths is not None and lengths.device.type != "cpu":
            lengths = None
        sizes = [wav.shape[1]] * wav.shape[0] if lengths is None else lengths.tolist()
        if lengths is not None and len(sizes) != wav.shape[0]:
            raise W2vtkError(f"{len(sizes)} lengths given for a batch of {wav.shape[0]} waveforms")
        need = self.cfg.receptive_field
        for i, n in enumerate(sizes):
            if n > wav.shape[1]:
                raise W2vtkError(f"utterance {i}: length {n} exceeds the padded batch width {wav.shape[1]}")
            if n <= 0:
                raise W2vtkError(f"utterance {i}: zero-length input (0 samples); remove empty audio files "
                                 "from the data")
            if n < need:
                raise W2vtkError(f"utterance {i}: input of {n} samples is shorter than the model's receptive "
                                 f"field of {need} samples ({need / 16:.0f} ms at 16 kHz), so it yields no "
                                 "frame; remove or pad such short audio")

    # -- forward parts ---------------------------------------------------------------------------
    def extract_features(self, wav: Tensor, lengths: Tensor | None = None) -> FeatureOutput:
        """wav (batch, sample), lengths (batch,) | None -> FeatureOutput (see its docstring)."""
        self._check_input(wav, lengths)
        mult = self.cfg.feature_grad_mult
        if mult > 0:
            feats, frame_lengths = self.feature_extractor(wav, lengths)
            if self.training and mult != 1.0 and feats.requires_grad:
                feats = _GradScale.apply(feats, mult)
        else:
            with torch.no_grad():
                feats, frame_lengths = self.feature_extractor(wav, lengths)
        padding_mask = None
        squared = feats.float().pow(2).mean(-1)  # (batch, frame)
        if frame_lengths is not None:
            padding_mask = lengths_to_padding_mask(frame_lengths, feats.shape[1])
            valid = (~padding_mask).to(squared.dtype)
            penalty = (squared * valid).sum() / valid.sum()
        else:
            penalty = squared.mean()
        return FeatureOutput(self.layer_norm(feats), penalty, padding_mask, frame_lengths)

    def encode(self, features: Tensor, padding_mask: Tensor | None = None, mask_time: Tensor | None = None,
               mask_channel: Tensor | None = None, output_hidden_states: bool = False) -> EncoderOutput:
        """features (batch, frame, conv_dim) -> EncoderOutput.

        mask_time: (batch, frame) bool, frames replaced by mask_emb; mask_channel: (batch, dim) bool,
        channels zeroed over all frames; padding_mask: (batch, frame) True = padding.
        """
        x = features if self.post_extract_proj is None else self.post_extract_proj(features)
        x = self.dropout_input(x)
        if mask_time is not None:
            x = torch.where(mask_time[..., None], self.mask_emb.to(x.dtype), x)
        if mask_channel is not None:
            x = x.masked_fill(mask_channel[:, None, :], 0.0)
        if padding_mask is not None:
            # the positional conv must see zeros beyond an utterance's end, as when it is alone
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x, hidden = self.encoder(x, padding_mask, output_hidden_states)
        return EncoderOutput(x, hidden)

    def quantize(self, features: Tensor, gumbel_noise: Tensor | None = None) -> QuantizerOutput:
        """features (batch, frame, conv_dim) or (N, conv_dim) -> QuantizerOutput with q after project_q.

        Feature dropout, if wanted, is the caller's (it applies to the targets only).
        """
        if self.quantizer is None:
            raise W2vtkError("this model has no quantizer (latent_vars = 0, e.g. an imported CTC model); "
                             "pretraining needs a model built with latent_vars > 0")
        out = self.quantizer(features, gumbel_noise)
        out.q = self.project_q(out.q.to(self.project_q.weight.dtype))
        return out

    def ctc_logits(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Evaluation path, no masking: wav (batch, sample) -> logits (batch, frame, vocab), frame lengths."""
        if self.ctc_head is None:
            raise W2vtkError("this model has no CTC head (vocab_size = 0); fine-tune it first or use a "
                             "fine-tuned checkpoint")
        feats = self.extract_features(wav, lengths)
        out = self.encode(feats.features, feats.padding_mask)
        return self.ctc_head(out.x), feats.frame_lengths


def build_model(cfg: ModelConfig) -> Wav2Vec2Model:
    return Wav2Vec2Model(cfg)


def base(**kw: Any) -> Wav2Vec2Model:
    """BASE: 12 layers of 768, post-LN, group-norm CNN (fairseq `wav2vec2_base`)."""
    return Wav2Vec2Model(base_config(**kw))


def large(**kw: Any) -> Wav2Vec2Model:
    """LARGE: 24 layers of 1024, pre-LN, layer-norm CNN with bias (fairseq `wav2vec2_vox`)."""
    return Wav2Vec2Model(large_config(**kw))


def tiny(**kw: Any) -> Wav2Vec2Model:
    """A small BASE-shaped model for CPU experiments and tests."""
    return Wav2Vec2Model(tiny_config(**kw))


def _where(path: Any) -> str:
    return f"{path}: " if path is not None else ""


def model_from_checkpoint(ckpt: dict[str, Any], path: Any = None, expected: ModelConfig | None = None,
                          vocab: list[str] | None = None) -> Wav2Vec2Model:
    """Build the model a checkpoint describes and load its weights strictly.

    `expected` (a config) and `vocab` (a symbol list), when given, must match the checkpoint's; a
    mismatch raises CheckpointError naming the differing fields.
    """
    where = _where(path)
    if "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{where}checkpoint lacks 'model_config' or 'model'; it was not written by w2vtk "
                              "(convert foreign weights with `w2vtk import`)")
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except W2vtkError as e:
        raise CheckpointError(f"{where}{e}") from None
    if expected is not None:
        diffs = architecture_mismatch({k: getattr(expected, k) for k in ARCH_KEYS},
                                      {k: getattr(cfg, k) for k in ARCH_KEYS}, ARCH_KEYS)
        if diffs:
            raise CheckpointError(f"{where}checkpoint of another architecture: " + "; ".join(diffs))
    stored_vocab = ckpt.get("vocab")
    if stored_vocab is not None and cfg.vocab_size and len(stored_vocab) != cfg.vocab_size:
        raise CheckpointError(f"{where}vocab has {len(stored_vocab)} symbols but the CTC head has "
                              f"{cfg.vocab_size} outputs; the checkpoint is inconsistent")
    if vocab is not None and list(vocab) != list(stored_vocab or []):
        raise CheckpointError(f"{where}checkpoint of another vocabulary: {_vocab_difference(vocab, stored_vocab)}")
    model = build_model(cfg)
    load_state_dict_strict(model, ckpt["model"], where)
    return model


def _vocab_difference(expected: list[str], found: list[str] | None) -> str:
    if not found:
        return f"expected {len(expected)} symbols, checkpoint has none"
    if len(expected) != len(found):
        return f"vocab size: expected {len(expected)}, checkpoint has {len(found)}"
    i = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
    return f"vocab[{i}]: expected {expected[i]!r}, checkpoint has {found[i]!r}"


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor], where: str = "") -> None:
    """load_state_dict(strict=True), with a one-line CheckpointError listing missing, unexpected and
    misshapen parameters."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{where}weights do not fit the model config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
