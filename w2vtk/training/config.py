"""The run configs of `w2vtk pretrain` and `w2vtk finetune`, with fairseq's option names and defaults.

Defaults are the paper's BASE values (fairseq's `wav2vec2_base_librispeech.yaml` and
`base_*h.yaml`); recipes/librispeech/conf/ holds the full BASE, LARGE and tiny files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from w2vtk.config import ConfigError, non_negative, one_of, positive, probability
from w2vtk.model.config import ModelConfig


@dataclass
class DataConfig:
    max_tokens: int = field(default=1_400_000, metadata=positive())  # audio samples per batch per device
    max_sample_size: int = field(default=250_000, metadata=positive())  # longer items are cropped at random
    min_sample_size: int = field(default=32_000, metadata=non_negative())  # shorter items are left out
    normalize: bool = False  # zero mean, unit variance per utterance (LARGE: true)
    num_workers: int = field(default=2, metadata=non_negative())
    max_valid_batches: int = field(default=0, metadata=non_negative())  # 0: the whole valid subset


@dataclass
class OptimConfig:
    lr: float = field(default=5e-4, metadata=positive())
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = field(default=1e-6, metadata=positive())
    weight_decay: float = field(default=0.01, metadata=non_negative())
    clip_norm: float = field(default=0.0, metadata=non_negative())  # 0: no clipping
    update_freq: int = field(default=1, metadata=positive())  # micro-batches accumulated per update
    max_updates: int = field(default=400_000, metadata=positive())
    # "polynomial": linear warmup for warmup_updates, then linear decay to 0 (pretraining);
    # "tri_stage": warmup / hold / exponential decay over phase_ratio of max_updates (fine-tuning).
    scheduler: str = field(default="polynomial", metadata=one_of("polynomial", "tri_stage"))
    warmup_updates: int = field(default=32_000, metadata=non_negative())
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = field(default=0.01, metadata=non_negative())
    final_lr_scale: float = field(default=0.05, metadata=non_negative())

    def check(self, where: str) -> None:
        if not all(0 <= r <= 1 for r in self.phase_ratio) or abs(sum(self.phase_ratio) - 1.0) > 1e-6:
            raise ConfigError(f"{where}.phase_ratio: {list(self.phase_ratio)} must be three fractions within [0, 1] "
                              "that sum to 1 (warmup, hold, decay)")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: {list(self.betas)} must be within [0, 1)")


@dataclass
class TrainerConfig:
    precision: str = field(default="fp32", metadata=one_of("fp32", "bf16", "fp16"))  # fp16 needs CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N; auto and cuda take cuda:LOCAL_RANK under torchrun
    save_interval: int = field(default=1000, metadata=positive())  # updates between checkpoints
    valid_interval: int = field(default=1000, metadata=positive())
    log_interval: int = field(default=100, metadata=positive())
    keep_last: int = field(default=2, metadata=positive())  # numbered checkpoints kept besides last/best
    max_nonfinite: int = field(default=10, metadata=positive())  # consecutive skipped updates before abort
    threads: int = field(default=0, metadata=non_negative())  # torch intra-op threads; 0: torch's default
    tf32: bool = True  # fp32 matmuls and convolutions on CUDA in TF32 (tensor cores); false: full fp32


@dataclass
class PretrainTaskConfig:
    # fairseq's mask_prob = the paper's start probability p (0.065) times mask_length M (10).
    mask_prob: float = field(default=0.65, metadata=non_negative())
    mask_length: int = field(default=10, metadata=positive())
    min_masks: int = field(default=2, metadata=non_negative())
    require_same_masks: bool = True
    num_negatives: int = field(default=100, metadata=positive())  # K
    logit_temp: float = field(default=0.1, metadata=positive())  # kappa
    diversity_weight: float = field(default=0.1, metadata=non_negative())  # alpha
    feature_penalty_weight: float = field(default=10.0, metadata=non_negative())
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # Gumbel tau: max, min, decay/update

    def check(self, where: str) -> None:
        hi, lo, decay = self.latent_temp
        if not (0 < lo <= hi and 0 < decay <= 1):
            raise ConfigError(f"{where}.latent_temp: {list(self.latent_temp)} must be [max, min, decay] "
                              "with 0 < min <= max and 0 < decay <= 1")


@dataclass
class FinetuneTaskConfig:
    labels: str = field(default="ltr", metadata=one_of("ltr", "phn", "sp"))
    sp_vocab_size: int = field(default=256, metadata=positive())  # sentencepiece pieces, for labels "sp"
    freeze_finetune_updates: int = field(default=10_000, metadata=non_negative())  # Transformer frozen
    mask_prob: float = field(default=0.65, metadata=non_negative())
    mask_length: int = field(default=10, metadata=positive())
    min_masks: int = field(default=2, metadata=non_negative())
    mask_channel_prob: float = field(default=0.5, metadata=non_negative())
    mask_channel_length: int = field(default=64, metadata=positive())
    final_dropout: float = field(default=0.0, metadata=probability())  # before the CTC head
    # Model fields a fine-tuning run may change on a pretrained model (fairseq's w2v_args overrides).
    dropout: float = field(default=0.0, metadata=probability())
    attention_dropout: float = field(default=0.0, metadata=probability())
    activation_dropout: float = field(default=0.1, metadata=probability())
    dropout_input: float = field(default=0.0, metadata=probability())
    encoder_layerdrop: float = field(default=0.05, metadata=probability())
    feature_grad_mult: float = field(default=0.0, metadata=non_negative())  # 0: the CNN stays frozen


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: PretrainTaskConfig = field(default_factory=PretrainTaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _finetune_optim() -> OptimConfig:
    return OptimConfig(lr=5e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, max_updates=20_000,
                       scheduler="tri_stage", warmup_updates=0)


def _finetune_data() -> DataConfig:
    return DataConfig(max_tokens=3_200_000, max_sample_size=3_200_000, min_sample_size=0)


@dataclass
class FinetuneConfig:
    # Without --init the model is built from this section (training from scratch); with --init the
    # architecture comes from the checkpoint and only task.* dropout/masking fields apply.
    model: ModelConfig = field(default_factory=ModelConfig)
    task: FinetuneTaskConfig = field(default_factory=FinetuneTaskConfig)
    data: DataConfig = field(default_factory=_finetune_data)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
