"""The training loop shared by pretraining and fine-tuning.

It owns what both have in common: the optimizer (Adam with decoupled weight decay) and LR schedule,
gradient accumulation, clipping, mixed precision, skipping non-finite updates, distributed gradient
sums, validation, checkpoints (atomic; last/best/numbered), exact resume, the experiment lock, and the
logs (EXP/log.jsonl, tqdm, and readable log lines). What is learnt comes from an `Objective`.

Under torchrun each micro-batch's forward and backward run through DistributedDataParallel, which
sums the gradients over processes during the backward of a group's last micro-batch (the others
run under `no_sync`). The counts and losses summed over processes stay on the training device until
one read per update.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from w2vtk.audio import SAMPLE_RATE
from w2vtk.checkpoint import CheckpointError, architecture_mismatch, load_checkpoint, save_checkpoint
from w2vtk.config import save_config
from w2vtk.dataset import AudioDataset, Batch, BucketBatchSampler, make_loader
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.model.config import ARCH_KEYS
from w2vtk.training import distributed as D
from w2vtk.training.config import DataConfig, OptimConfig, TrainerConfig
from w2vtk.training.health import HealthMonitor
from w2vtk.training.schedule import lr_multiplier

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What a training stage provides. Losses are sums over `sample_size` units (an int or a tensor
    on the training device); `stats` are per-unit means (floats or tensors); validation returns sums
    too (so they add up over batches and ranks) and `valid_summary` turns them into metrics."""

    model: torch.nn.Module
    best_metric: str  # a key of valid_summary(); lower is better

    def on_update(self, step: int) -> None: ...

    def __call__(self, batch: Batch, step: int) -> Any: ...

    def valid_step(self, batch: Batch) -> dict[str, float]: ...

    def valid_summary(self, sums: dict[str, float]) -> dict[str, float]: ...


@dataclass
class RunInfo:
    """Fixed facts stored in every checkpoint beside the trainer state."""

    kind: str  # "pretrain" | "finetune"
    train_config: dict[str, Any]
    vocab: list[str] | None = None
    labels: str | None = None
    sentencepiece: torch.Tensor | None = None


def divide_and_clip(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], sample_size: float,
                    clip_norm: float, scaler: torch.amp.GradScaler | None = None) -> float:
    """Prepares the next optimizer step to use the summed gradients divided by `sample_size` and clipped
    to a total norm of `clip_norm` (0: no clipping), as clip_grad_norm_ clips. Returns their norm after
    the division, before clipping (non-finite when some gradient is).

    With a GradScaler (fp16) the gradients themselves are rescaled. Otherwise the optimizer is the
    fused AdamW and the division and clipping make one factor, its grad_scale, which it applies as it
    reads each gradient: two fewer passes over all of them.
    """
    max_norm = clip_norm if clip_norm > 0 else float("inf")
    if scaler is not None:
        scaler.unscale_(optimizer)
        for p in params:
            if p.grad is not None:
                p.grad.div_(sample_size)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = float(torch.nn.utils.get_total_norm(grads)) / sample_size if grads else 0.0
    clip = min(1.0, max_norm / (grad_norm + 1e-6)) if math.isfinite(grad_norm) else 1.0
    device = grads[0].device if grads else None
    optimizer.grad_scale = torch.tensor(sample_size / clip, device=device)
    return grad_norm


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module whose forward is one micro-batch's loss, so that DistributedDataParallel
    sees the forward it has to prepare for (the objective calls the model's parts, not its forward)."""

    def __init__(self, objective: Objective):
        super().__init__()
        self.model = objective.model
        self.objective = objective

    def forward(self, batch: Batch, step: int):
        result = self.objective(batch, step)
        return result.loss, result


class Trainer:
    def __init__(self, *, exp_dir: str | os.PathLike, objective: Objective, train: AudioDataset,
                 valid: AudioDataset | None, crop: bool, data_cfg: DataConfig, optim_cfg: OptimConfig,
                 trainer_cfg: TrainerConfig, run: RunInfo, seed: int, device: torch.device,
                 dist_info: D.DistInfo):
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.objective = objective
        self.model = objective.model
        self.train_ds, self.valid_ds = train, valid
        self.data_cfg, self.optim_cfg, self.cfg = data_cfg, optim_cfg, trainer_cfg
        self.run = run
        self.seed = seed
        self.device = device
        self.dist = dist_info
        self.sampler = BucketBatchSampler(train.sizes, data_cfg.max_tokens, data_cfg.max_sample_size, crop=crop,
                                          seed=seed, rank=dist_info.rank, world_size=dist_info.world_size)
        self.valid_sampler = None if valid is None else BucketBatchSampler(
            valid.sizes, data_cfg.max_tokens, data_cfg.max_sample_size, crop=crop, seed=seed, shuffle=False,
            rank=dist_info.rank, world_size=dist_info.world_size) if len(valid) >= dist_info.world_size else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim_cfg.lr, betas=optim_cfg.betas,
                                           eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
                                           fused=True)  # one pass over parameters and states (benchmarked)
        self.scaler = torch.amp.GradScaler("cuda") if trainer_cfg.precision == "fp16" else None
        if trainer_cfg.precision == "fp16" and device.type != "cuda":
            raise W2vtkError("trainer.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # batches of the current epoch already trained on (this rank)
        self.best: float | None = None
        self.nonfinite = 0
        self.health = HealthMonitor.for_run(run.kind, run.train_config, self.exp_dir / "log.jsonl")
        self._step_module: torch.nn.Module | None = None  # the objective, under DDP in a torchrun job
        self._step_params: list[torch.nn.Parameter] = []

    def _wrapped(self, params: list[torch.nn.Parameter]) -> torch.nn.Module:
        """The module a micro-batch runs through: DDP registers the parameters that require gradients
        when it is built, so it is built again when that set changes (fine-tuning unfreezes the
        Transformer after its first updates)."""
        if self._step_module is None or [id(p) for p in params] != [id(p) for p in self._step_params]:
            self._step_module = D.wrap_model(_ObjectiveStep(self.objective), self.device, self.dist)
            self._step_params = params
        return self._step_module

    # ----------------------------------------------------------------------------------- checkpoints
    def _payload(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": _numpy_state_to_plain(np.random.get_state())}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "kind": self.run.kind,
            "model_config": self.model.cfg.to_dict(),
            "model": self.model.state_dict(),
            "vocab": self.run.vocab,
            "labels": self.run.labels,
            "sentencepiece": self.run.sentencepiece,
            "train_config": self.run.train_config,
            "trainer": {
                "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                "best": self.best, "nonfinite": self.nonfinite, "world_size": self.dist.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": D.gather_objects(rng, self.dist),
            },
        }

    def save(self, best: bool) -> None:
        """Write checkpoint_<step>.pt, point last.pt (and best.pt) at it, drop old numbered ones."""
        payload = self._payload()  # collective under DDP: every rank takes part
        if not self.dist.is_main:
            return
        numbered = self.ckpt_dir / f"checkpoint_{self.step}.pt"
        try:
            save_checkpoint(numbered, payload)
            # best.pt before last.pt: a run killed in between resumes from the previous last.pt and
            # redoes this update; the other order would resume past the update that should be best.pt.
            if best:
                _link_atomic(numbered, self.ckpt_dir / "best.pt")
            _link_atomic(numbered, self.ckpt_dir / "last.pt")
        except OSError as e:
            raise W2vtkError(f"{self.ckpt_dir}: could not write the checkpoint of update {self.step} ({e}); the "
                             "previous last.pt is intact. Free disk space and run the same command to resume") from None
        kept = sorted(self.ckpt_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        protected = {os.stat(self.ckpt_dir / n).st_ino for n in ("last.pt", "best.pt") if (self.ckpt_dir / n).exists()}
        for old in kept[: -self.cfg.keep_last]:
            if os.stat(old).st_ino not in protected:
                old.unlink()
        log.info("saved %s%s", numbered, " (best)" if best else "")

    def resume(self) -> bool:
        """Load EXP/checkpoints/last.pt if there is one. Refuses a different architecture."""
        last = self.ckpt_dir / "last.pt"
        if not last.exists():
            return False
        ckpt = load_checkpoint(last)
        if ckpt.get("kind") != self.run.kind:
            raise CheckpointError(f"{last}: a {ckpt.get('kind')} checkpoint, but this is a {self.run.kind} run; "
                                  "use another --exp-dir")
        diff = architecture_mismatch(self.model.cfg.to_dict(), ckpt["model_config"], ARCH_KEYS)
        if ckpt.get("vocab") != self.run.vocab:
            diff.append("vocab: the label vocabulary differs")
        if diff:
            raise CheckpointError(f"{last}: the config changes the architecture of the run being resumed ("
                                  + "; ".join(diff) + "); use another --exp-dir or restore the config")
        st = ckpt["trainer"]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        if self.scaler and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.batches_done = st["step"], st["epoch"], st["batches_done"]
        self.best, self.nonfinite = st["best"], st["nonfinite"]
        rngs = st["rng"]
        if len(rngs) == self.dist.world_size:
            mine = rngs[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            random.setstate(_tuples(mine["python"]))
            np.random.set_state(_numpy_state_from_plain(mine["numpy"]))
            if "cuda" in mine and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine["cuda"])
        else:
            log.warning("resuming with %d processes from a run with %d: the data order is kept, the random "
                        "streams of dropout restart", self.dist.world_size, len(rngs))
            if st.get("world_size") != self.dist.world_size:
                # Batches are dealt to ranks round-robin; convert the position to the new world size.
                self.batches_done = self.batches_done * st["world_size"] // self.dist.world_size
        log.info("resumed from %s at update %d (epoch %d)", last, self.step, self.epoch)
        return True

    # ----------------------------------------------------------------------------------- the loop
    def fit(self, max_updates: int) -> dict[str, float]:
        """Train until `max_updates`; returns the last validation metrics."""
        resumed = self.resume()
        if self.dist.is_main:
            self._trim_log(resumed)
            # Only now: a run refused on resume (another architecture) must leave the folder as it was.
            with self._writing(self.exp_dir / "config.yaml"):
                save_config(self.run.train_config, self.exp_dir / "config.yaml")
            # A run killed while writing a checkpoint leaves its temporary file; under the folder's lock no
            # other run is writing, so what is there is stale.
            for stale in self.ckpt_dir.glob(".*.tmp"):
                log.info("removing %s, left by an interrupted checkpoint write", stale)
                stale.unlink()
        # In a log file (no terminal) the bar is redrawn every 30 s rather than continuously.
        bar = tqdm(total=max_updates, initial=self.step, desc=self.run.kind, unit="upd", dynamic_ncols=True,
                   disable=not self.dist.is_main, leave=True, mininterval=0.5 if sys.stderr.isatty() else 30)
        window: dict[str, float] = {}
        window_start = time.monotonic()
        metrics: dict[str, float] = {}
        while self.step < max_updates:
            self.train_ds.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.batches_done)
            loader = make_loader(self.train_ds, self.sampler, self.data_cfg.num_workers,
                                 pin_memory=self.device.type == "cuda")
            group: list[Batch] = []
            for batch in loader:
                group.append(batch)
                if len(group) < self.optim_cfg.update_freq:
                    continue
                stats = self._update(group)
                self.batches_done += len(group)
                group = []
                _accumulate(window, stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", **_progress_fields(stats), refresh=False)
                if self.step % self.cfg.log_interval == 0 or self.step == max_updates:
                    elapsed = time.monotonic() - window_start
                    self._log_train(window, elapsed)
                    window, window_start = {}, time.monotonic()
                validate = self.step % self.cfg.valid_interval == 0 or self.step == max_updates
                improved = False
                if validate:
                    metrics = self.validate()
                    improved = self._improved(metrics)
                if improved or self.step % self.cfg.save_interval == 0 or self.step == max_updates:
                    self.save(best=improved)
                if self.step >= max_updates:
                    break
            else:
                self.epoch += 1
                self.batches_done = 0
        bar.close()
        return metrics

    def _update(self, group: list[Batch]) -> dict[str, float]:
        """One optimizer update from `group` (update_freq micro-batches)."""
        self.model.train()
        self.objective.on_update(self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]  # after on_update's (un)freezing
        step_module = self._wrapped(params)
        # sample size, audio samples, then the stats' sums: on the device, read once after the sum over ranks
        sums: dict[str, torch.Tensor] = {}
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(group):
            audio = batch.num_samples  # on the host, before the copy
            batch = batch.to(self.device)
            last = i == len(group) - 1
            with (contextlib.nullcontext() if last or not self.dist.enabled else step_module.no_sync()):
                with self._autocast():
                    loss, res = step_module(batch, self.step)
                loss = loss.float()
                try:
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                except RuntimeError as e:  # DDP sums the gradients during the last backward
                    if last and self.dist.enabled and D.is_collective_failure(e):
                        raise D.collective_error(self.dist, "summing gradients over processes", e) from None
                    raise
            size = torch.as_tensor(res.sample_size, dtype=torch.float64, device=self.device)
            totals += torch.stack([size, size.new_tensor(float(audio))])
            for k, v in res.stats.items():
                sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64, device=self.device) * size
        keys = sorted(sums)
        totals = D.all_reduce_sum(torch.cat([totals] + [sums[k].reshape(1) for k in keys]), self.dist).tolist()
        total = max(totals[0], 1.0)
        grad_norm = divide_and_clip(self.optimizer, params, total, self.optim_cfg.clip_norm, self.scaler)
        stats = {k: v / total for k, v in zip(keys, totals[2:])}  # over all ranks
        finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in stats.values())
        lr = self.optim_cfg.lr * lr_multiplier(self.optim_cfg, self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the step itself when gradients overflowed
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and not self.scaler:
            self.nonfinite += 1
            log.warning("update %d: non-finite loss or gradient (grad_norm=%s), update skipped (%d in a row)",
                        self.step + 1, grad_norm, self.nonfinite)
            if self.nonfinite >= self.cfg.max_nonfinite:
                why = self.health.diverged(self.step + 1, self.nonfinite)
                if self.dist.is_main:
                    self._write_log(why.record())
                raise W2vtkError(f"{why.evidence}; the run diverged. Likely cause: {why.cause}. Change: {why.fix}, "
                                 f"then resume from {self.ckpt_dir / 'last.pt'}")
        else:
            self.nonfinite = 0
        self.step += 1
        stats.update(lr=lr, grad_norm=grad_norm, audio_seconds=totals[1] / SAMPLE_RATE)
        return stats

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def validate(self) -> dict[str, float]:
        if self.valid_ds is None or self.valid_sampler is None:
            return {}
        self.model.eval()
        self.valid_ds.set_epoch(0)
        self.valid_sampler.set_epoch(0)
        loader = make_loader(self.valid_ds, self.valid_sampler, self.data_cfg.num_workers)
        sums: dict[str, float] = {}
        with torch.inference_mode(), self._autocast():
            for i, batch in enumerate(loader):
                if self.data_cfg.max_valid_batches and i >= self.data_cfg.max_valid_batches:
                    break
                for k, v in self.objective.valid_step(batch.to(self.device)).items():
                    sums[k] = sums.get(k, 0.0) + v
        keys = sorted(sums)
        reduced = D.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device),
                                   self.dist)
        metrics = self.objective.valid_summary(dict(zip(keys, reduced.tolist())))
        if self.dist.is_main:
            self._write_log({"valid": True, "step": self.step, **metrics})
            log.info("valid | update %d | %s", self.step, _fmt(metrics))
        return metrics

    def _improved(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.objective.best_metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or value < self.best:
            self.best = value
            return True
        return False

    # ----------------------------------------------------------------------------------- logs
    def _log_train(self, window: dict[str, float], elapsed: float) -> None:
        n = window.pop("_n", 1)
        audio = window.pop("audio_seconds", 0.0)
        rec = {k: v / n for k, v in window.items()}
        rec["audio_seconds_per_second"] = audio / max(elapsed, 1e-9)
        rec = {"step": self.step, "epoch": self.epoch, **rec}
        if self.dist.is_main:
            self._write_log(rec)
            log.info("train | update %d | %s", self.step, _fmt({k: v for k, v in rec.items() if k != "step"}))

    def _write_log(self, rec: dict[str, Any]) -> None:
        path = self.exp_dir / "log.jsonl"
        with self._writing(path), open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            for finding in self.health.observe(rec):  # symptoms that have just begun to hold
                f.write(json.dumps(finding.record()) + "\n")
                log.warning(finding.message())

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """A failed write of the run's files (a full disk) stops the run with a message naming the file."""
        try:
            yield
        except OSError as e:
            raise W2vtkError(f"{path}: could not write ({e.strerror or e}) at update {self.step}; the checkpoints are "
                             "intact: free disk space and run the same command to resume") from None

    def _trim_log(self, resumed: bool) -> None:
        """Drop log lines past the checkpoint a run resumes from (they will be logged again)."""
        path = self.exp_dir / "log.jsonl"
        if not path.exists():
            return
        if not resumed:
            path.unlink()
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line cut by a kill
        with self._writing(path):
            atomic_write_text(path, "".join(line + "\n" for line in keep))


def _accumulate(window: dict[str, float], stats: dict[str, float]) -> None:
    for k, v in stats.items():
        window[k] = window.get(k, 0.0) + v
    window["_n"] = window.get("_n", 0) + 1


def _progress_fields(stats: dict[str, float]) -> dict[str, str]:
    out = {}
    if "accuracy" in stats:
        out["acc"] = f"{stats['accuracy']:.3f}"
    if "prob_perplexity" in stats:
        out["ppl"] = f"{stats['prob_perplexity']:.0f}"
    return out


def _fmt(d: dict[str, float]) -> str:
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def _link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` name the same file as `src`, atomically (a hard link, or a copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _numpy_state_to_plain(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
