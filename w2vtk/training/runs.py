"""`pretrain` and `finetune` as library functions: configs, data, model and objective into the Trainer."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from w2vtk.checkpoint import architecture_mismatch, load_checkpoint
from w2vtk.config import ConfigError, load_config, to_dict
from w2vtk.cpu import use_cpu_kernels
from w2vtk.dataset import load_dataset
from w2vtk.errors import W2vtkError
from w2vtk.model.config import ARCH_KEYS, ModelConfig
from w2vtk.model.wav2vec2 import build_model, load_state_dict_strict
from w2vtk.seeding import seed_everything
from w2vtk.text import Vocabulary
from w2vtk.training import distributed as D
from w2vtk.training.config import FinetuneConfig, PretrainConfig, TrainerConfig
from w2vtk.training.lock import ExpDirLock
from w2vtk.training.trainer import RunInfo, Trainer

log = logging.getLogger(__name__)

# The model fields a fine-tuning config may set on a pretrained model (regularisation, not shapes).
FINETUNE_MODEL_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "dropout_input",
                         "encoder_layerdrop", "feature_grad_mult")


def cli_overrides(max_updates: int | None = None, save_interval: int | None = None,
                  valid_interval: int | None = None, log_interval: int | None = None,
                  keep_last: int | None = None) -> list[str]:
    """The dedicated command-line options as `key=value` overrides (applied before the free ones)."""
    pairs = {"optim.max_updates": max_updates, "trainer.save_interval": save_interval,
             "trainer.valid_interval": valid_interval, "trainer.log_interval": log_interval,
             "trainer.keep_last": keep_last}
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


def _device(cfg: TrainerConfig) -> torch.device:
    """The training device; each torchrun process takes the GPU of its local rank (auto, cuda)."""
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", D.local_rank())
        return torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={cfg.device}: no CUDA device is available here; use cpu or auto")
    if cfg.device == "cuda":
        return torch.device("cuda", D.local_rank())
    return torch.device(cfg.device)


def _start(cfg: TrainerConfig, seed: int) -> tuple[torch.device, D.DistInfo]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    info = D.init_distributed(device)
    seed_everything(seed)  # the same model initialisation on every rank
    return device, info


def _train(trainer: Trainer, exp_dir: Path, info: D.DistInfo, max_updates: int) -> dict[str, float]:
    lock = ExpDirLock(exp_dir) if info.is_main else None
    try:
        if lock:
            lock.__enter__()
        D.barrier(info)
        # Distinct dropout streams per rank, after the shared initialisation.
        torch.manual_seed(trainer.seed * 1000 + info.rank)
        metrics = trainer.fit(max_updates)
        # Tear the process group down together: a rank that leaves while another still saves its last
        # checkpoint can be aborted by gloo's threads at exit ("terminate called ...").
        D.barrier(info)
        return metrics
    finally:
        if lock:
            lock.__exit__(None, None, None)
        D.shutdown(info)


def pretrain(config: str | os.PathLike | None, data_dir: str | os.PathLike, train_subset: str, valid_subset: str | None,
             exp_dir: str | os.PathLike, overrides: Sequence[str] = (), seed: int = 1,
             init: str | os.PathLike | None = None, resume_optimizer: bool = False) -> dict[str, float]:
    """Self-supervised pretraining; resumes from EXP/checkpoints/last.pt when it exists.

    `init`: continue pretraining from this pretraining checkpoint (ours or imported), quantizer and heads
    included; its architecture must be the config's. The optimizer and LR schedule start afresh, unless
    `resume_optimizer` (our checkpoints only): then Adam's moments and the update count (which drives
    the LR schedule and the Gumbel temperature) carry on, and --max-updates counts from the original start.
    """
    from w2vtk.pretraining import PretrainObjective

    cfg = load_config(PretrainConfig, config, overrides)
    if cfg.model.vocab_size or not cfg.model.latent_vars:
        raise ConfigError(f"{config}: pretraining needs model.vocab_size=0 and model.latent_vars>0")
    device, info = _start(cfg.trainer, seed)
    exp_dir = Path(exp_dir)
    kw = dict(crop=True, max_sample_size=cfg.data.max_sample_size,
              min_sample_size=max(cfg.data.min_sample_size, cfg.model.receptive_field),
              normalize=cfg.data.normalize or cfg.model.normalize, seed=seed)
    train = load_dataset(data_dir, train_subset, **kw)
    valid = load_dataset(data_dir, valid_subset, **kw) if valid_subset else None
    model = build_model(cfg.model)
    start = _pretrain_init(cfg.model, init, model, resume_optimizer) if init else None
    model = use_cpu_kernels(model, device).to(device)
    log.info("pretraining a %.1f M-parameter model on %d utterances (%.2f h)%s", _millions(model), len(train),
             train.sizes.sum() / 16000 / 3600, f", continuing from {init}" if init else "")
    objective = PretrainObjective(model, cfg.task, seed)
    trainer = Trainer(exp_dir=exp_dir, objective=objective, train=train, valid=valid, crop=True,
                      data_cfg=cfg.data, optim_cfg=cfg.optim, trainer_cfg=cfg.trainer,
                      run=RunInfo("pretrain", to_dict(cfg)), seed=seed, device=device, dist_info=info)
    if start is not None and resume_optimizer:
        trainer.optimizer.load_state_dict(start["trainer"]["optimizer"])
        trainer.step = start["trainer"]["step"]  # a resume from EXP/checkpoints/last.pt replaces both
    return _train(trainer, exp_dir, info, cfg.optim.max_updates)


def _pretrain_init(model_cfg: ModelConfig, init: str | os.PathLike, model: torch.nn.Module,
                   resume_optimizer: bool) -> dict:
    """Load a pretraining checkpoint into `model` (built from `model_cfg`); returns the checkpoint.
    Refuses one without a quantizer (a fine-tuned CTC model) or with another architecture."""
    ckpt = load_checkpoint(init)
    found = ckpt.get("model_config")
    if not isinstance(found, dict) or not isinstance(ckpt.get("model"), dict):
        raise W2vtkError(f"{init}: checkpoint has no model_config; give one written by `w2vtk pretrain` or "
                         "`w2vtk import`")
    if found.get("vocab_size") or not found.get("latent_vars") or not any(
            k.startswith("quantizer.") for k in ckpt["model"]):
        raise W2vtkError(f"{init}: a {ckpt.get('kind', 'w2vtk')} checkpoint without a quantizer (a fine-tuned CTC "
                         "model) cannot continue pretraining; give a pretraining checkpoint (from `w2vtk pretrain`, "
                         "or `w2vtk import` of a model that was not fine-tuned)")
    diff = architecture_mismatch(model_cfg.to_dict(), found, ARCH_KEYS)
    if diff:
        raise W2vtkError(f"{init}: another architecture than the config's model section (" + "; ".join(diff)
                         + "); use a --config whose model section matches the checkpoint")
    if resume_optimizer and not (ckpt.get("kind") == "pretrain" and (ckpt.get("trainer") or {}).get("optimizer")):
        raise W2vtkError(f"{init}: a {ckpt.get('kind')} checkpoint without the optimizer state of a w2vtk pretraining "
                         "run; leave out --resume-optimizer")
    load_state_dict_strict(model, ckpt["model"], f"{init}: ")
    return ckpt


def finetune(config: str | os.PathLike | None, data_dir: str | os.PathLike, train_subset: str, valid_subset: str | None,
             exp_dir: str | os.PathLike, labels: str | None = None, init: str | os.PathLike | None = None,
             overrides: Sequence[str] = (), seed: int = 1) -> dict[str, float]:
    """CTC fine-tuning from `init` (a w2vtk pretraining or imported checkpoint), or from scratch."""
    from w2vtk.finetuning import FinetuneObjective

    over = list(overrides) + ([f"task.labels={labels}"] if labels else [])
    cfg = load_config(FinetuneConfig, config, over)
    device, info = _start(cfg.trainer, seed)
    exp_dir = Path(exp_dir)
    data_dir = Path(data_dir)
    vocab, label_ext, encode, sp_blob = _labels(cfg, data_dir, train_subset, exp_dir, info)
    model = use_cpu_kernels(_finetune_model(cfg, init, vocab), device).to(device)
    kw = dict(crop=False, max_sample_size=cfg.data.max_sample_size,
              min_sample_size=max(cfg.data.min_sample_size, model.cfg.receptive_field),
              normalize=cfg.data.normalize or model.cfg.normalize, seed=seed, label_ext=label_ext, encode=encode)
    train = load_dataset(data_dir, train_subset, **kw)
    valid = load_dataset(data_dir, valid_subset, **kw) if valid_subset else None
    log.info("fine-tuning a %.1f M-parameter model (%s) on %d utterances (%.2f h), %d output symbols",
             _millions(model), f"from {init}" if init else "from scratch", len(train),
             train.sizes.sum() / 16000 / 3600, len(vocab))
    objective = FinetuneObjective(model, cfg.task, vocab, seed)
    run = RunInfo("finetune", to_dict(cfg), vocab=vocab.to_list(), labels=vocab.kind, sentencepiece=sp_blob)
    trainer = Trainer(exp_dir=exp_dir, objective=objective, train=train, valid=valid, crop=False,
                      data_cfg=cfg.data, optim_cfg=cfg.optim, trainer_cfg=cfg.trainer, run=run, seed=seed,
                      device=device, dist_info=info)
    return _train(trainer, exp_dir, info, cfg.optim.max_updates)


def _labels(cfg: FinetuneConfig, data_dir: Path, train_subset: str, exp_dir: Path, info: D.DistInfo):
    """(vocabulary, label file extension, line encoder, serialized sentencepiece model or None)."""
    kind = cfg.task.labels
    if kind in ("ltr", "phn"):
        vocab = Vocabulary.from_dict_file(data_dir / f"dict.{kind}.txt", kind)
        return vocab, kind, vocab.encode, None
    from w2vtk.subwords import SubwordModel

    sp = SubwordModel.train_or_load(data_dir / f"{train_subset}.wrd", exp_dir / "sentencepiece.model",
                                    cfg.task.sp_vocab_size, is_main=info.is_main, barrier=lambda: D.barrier(info))
    vocab = sp.vocabulary()
    return vocab, "wrd", lambda line: vocab.encode(" ".join(sp.encode(line))), sp.serialized()


def _finetune_model(cfg: FinetuneConfig, init: str | os.PathLike | None, vocab: Vocabulary):
    reg = {k: getattr(cfg.task, k) for k in FINETUNE_MODEL_FIELDS}
    if init is None:
        return build_model(cfg.model.replace(vocab_size=len(vocab), latent_vars=0, **reg))
    ckpt = load_checkpoint(init)
    try:
        base = ModelConfig.from_dict(ckpt["model_config"])
    except KeyError:
        raise W2vtkError(f"{init}: checkpoint has no model_config") from None
    same_vocab = ckpt.get("vocab") == vocab.to_list()
    model_cfg = base.replace(vocab_size=len(vocab), latent_vars=0, **reg)
    model = build_model(model_cfg)
    # Keep the CNN and Transformer; drop the pretraining heads (fairseq's remove_pretraining_modules)
    # and a CTC head trained for another vocabulary.
    state = {k: v for k, v in ckpt["model"].items()
             if not k.startswith(("quantizer.", "project_q.", "final_proj."))
             and (same_vocab or not k.startswith("ctc_head."))}
    if not same_vocab:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("ctc_head.")})
        if ckpt.get("vocab"):
            log.warning("%s: its CTC head has another vocabulary; starting a new head", init)
    load_state_dict_strict(model, state, f"{init}: ")
    return model


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
