"""The model's architecture and regularisation settings, named after fairseq's config fields.

`base_config()` and `large_config()` give the paper's two models (REFERENCE.md); `tiny_config()` a small
one that pretrains in minutes on a CPU. All take keyword overrides.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from w2vtk.errors import W2vtkError

EXTRACTOR_MODES = ("group_norm", "layer_norm")


def _base_conv_layers() -> list[list[int]]:
    # 7 layers, 512 channels; strides multiply to 320 samples = 20 ms, receptive field 400 = 25 ms.
    return [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2


def conv_output_lengths(lengths: int | Tensor, conv_layers: list[list[int]]) -> int | Tensor:
    """Output frames of unpadded convolutions [channels, kernel, stride] over `lengths` input frames
    (an int, or a (batch,) integer tensor): floor((L - kernel) / stride) + 1 per layer, at least 0."""
    for _, kernel, stride in conv_layers:
        lengths = (lengths - kernel) // stride + 1
        lengths = lengths.clamp(min=0) if isinstance(lengths, Tensor) else max(lengths, 0)
    return lengths


@dataclass
class ModelConfig:
    """wav2vec 2.0 architecture. Field names follow fairseq's `Wav2Vec2Config`."""

    # "group_norm": GroupNorm on CNN layer 1 only (BASE); "layer_norm": LayerNorm in every layer (LARGE)
    extractor_mode: str = "group_norm"
    conv_layers: list = field(default_factory=_base_conv_layers)  # [channels, kernel, stride] per CNN layer
    conv_bias: bool = False
    encoder_embed_dim: int = 768
    encoder_layers: int = 12
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN plus a final LayerNorm (LARGE)
    conv_pos: int = 128  # kernel of the convolutional positional embedding
    conv_pos_groups: int = 16
    dropout: float = 0.1  # residual dropout in the Transformer
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1  # on the projected features, before masking
    dropout_features: float = 0.1  # on the unmasked features fed to the quantizer (applied by the caller)
    encoder_layerdrop: float = 0.05
    final_dim: int = 256
    latent_vars: int = 320  # V, entries per codebook; 0 = no quantizer, project_q, final_proj (CTC-only models)
    latent_groups: int = 2  # G, codebooks
    latent_dim: int = 0  # codevector dim over all groups; 0 means final_dim
    feature_grad_mult: float = 0.1  # gradient scale into the CNN; 0.0 freezes it (no grad at all)
    vocab_size: int = 0  # > 0 adds the CTC head
    normalize: bool = False  # the model expects zero-mean unit-variance waveforms (per utterance)

    def __post_init__(self) -> None:
        try:
            self.conv_layers = [[int(v) for v in layer] for layer in self.conv_layers]
        except (TypeError, ValueError, OverflowError):
            raise W2vtkError(f"invalid model config: conv_layers {self.conv_layers!r} must be a list of "
                             "[channels, kernel, stride] integers") from None
        self.validate()

    @property
    def codevector_dim(self) -> int:
        """Dimension of a concatenated codevector (all groups)."""
        return self.latent_dim or self.final_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the CNN output."""
        return self.conv_layers[-1][0]

    @property
    def receptive_field(self) -> int:
        """Samples that one output frame sees (400 for the paper's CNN); shorter input has no frame."""
        field_ = 1
        for _, kernel, stride in reversed(self.conv_layers):
            field_ = (field_ - 1) * stride + kernel
        return field_

    def frame_lengths(self, samples: int | Tensor) -> int | Tensor:
        """Frames out of the CNN for `samples` samples (an int, or a (batch,) tensor)."""
        return conv_output_lengths(samples, self.conv_layers)

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive output frames: the product of the CNN strides (320 = 20 ms)."""
        stride = 1
        for _, _, layer_stride in self.conv_layers:
            stride *= layer_stride
        return stride

    def validate(self) -> None:
        """Raise W2vtkError naming every inconsistent field."""
        problems = []
        if self.extractor_mode not in EXTRACTOR_MODES:
            problems.append(f"extractor_mode {self.extractor_mode!r} must be one of {', '.join(EXTRACTOR_MODES)}")
        if not self.conv_layers or any(len(layer) != 3 or min(layer) < 1 for layer in self.conv_layers):
            problems.append(f"conv_layers {self.conv_layers!r} must be a non-empty list of "
                            "[channels, kernel, stride] with positive entries")
        for name in ("encoder_embed_dim", "encoder_layers", "encoder_ffn_embed_dim", "encoder_attention_heads",
                     "conv_pos", "conv_pos_groups", "final_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_attention_heads >= 1 and self.encoder_embed_dim % self.encoder_attention_heads:
            problems.append(f"encoder_attention_heads {self.encoder_attention_heads} must divide "
                            f"encoder_embed_dim {self.encoder_embed_dim}")
        if self.conv_pos_groups >= 1 and self.encoder_embed_dim % self.conv_pos_groups:
            problems.append(f"conv_pos_groups {self.conv_pos_groups} must divide encoder_embed_dim "
                            f"{self.encoder_embed_dim}")
        if self.latent_vars < 0 or self.latent_groups < 1 or self.latent_dim < 0 or self.vocab_size < 0:
            problems.append("latent_vars, latent_dim, vocab_size must be >= 0 and latent_groups >= 1")
        elif self.latent_vars and self.codevector_dim % self.latent_groups:
            problems.append(f"latent_groups {self.latent_groups} must divide the codevector dim "
                            f"{self.codevector_dim} (latent_dim, or final_dim when latent_dim is 0)")
        for name in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "dropout_features",
                     "encoder_layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be within [0, 1), got {getattr(self, name)}")
        if self.feature_grad_mult < 0:
            problems.append(f"feature_grad_mult must be >= 0, got {self.feature_grad_mult}")
        if problems:
            raise W2vtkError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict such as a checkpoint's `model_config`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise W2vtkError(f"unknown model config key(s): {', '.join(unknown)}; known keys are "
                             f"{', '.join(sorted(names))}")
        return cls(**copy.deepcopy(dict(d)))

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated)."""
        return self.from_dict({**self.to_dict(), **changes})


# Fields that decide parameter shapes or what the parameters mean (pre- vs post-LN); a checkpoint whose
# values differ cannot be loaded into the model.
ARCH_KEYS: tuple[str, ...] = (
    "extractor_mode", "conv_layers", "conv_bias", "encoder_embed_dim", "encoder_layers", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "layer_norm_first", "conv_pos", "conv_pos_groups", "final_dim", "latent_vars",
    "latent_groups", "latent_dim", "vocab_size",
)


def base_config(**kw: Any) -> ModelConfig:
    """BASE (LibriSpeech 960 h): fairseq `wav2vec2_base_librispeech`."""
    return ModelConfig(**kw)


def large_config(**kw: Any) -> ModelConfig:
    """LARGE (LibriVox 60k): fairseq `wav2vec2_large_librivox`: layer-norm CNN with bias, pre-LN, no dropout."""
    values = dict(
        extractor_mode="layer_norm", conv_bias=True, encoder_embed_dim=1024, encoder_layers=24,
        encoder_ffn_embed_dim=4096, encoder_attention_heads=16, layer_norm_first=True, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, dropout_features=0.0,
        encoder_layerdrop=0.0, final_dim=768, feature_grad_mult=1.0, normalize=True,
    )
    values.update(kw)
    return ModelConfig(**values)


def tiny_config(**kw: Any) -> ModelConfig:
    """A small BASE-shaped model (about 4 M parameters) that pretrains in minutes on a CPU.

    Same CNN strides and kernels as BASE (20 ms frames), fewer channels and a narrow Transformer.
    """
    values = dict(
        conv_layers=[[128, 10, 5]] + [[128, 3, 2]] * 4 + [[128, 2, 2]] * 2,
        encoder_embed_dim=256, encoder_layers=4, encoder_ffn_embed_dim=1024, encoder_attention_heads=4,
        conv_pos=64, conv_pos_groups=8, final_dim=64, latent_vars=64, latent_groups=2,
    )
    values.update(kw)
    return ModelConfig(**values)
