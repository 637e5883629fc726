"""Tiny pretraining and fine-tuning runs as real `w2vtk` subprocesses, for the fault and bad-input tests.

The model is very small and batches hold one or two utterances, so an update takes a fraction of a
second on a CPU and a whole run is dominated by Python's start-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
W2VTK = str(Path(sys.executable).with_name("w2vtk"))
CONF = ROOT / "recipes" / "librispeech" / "conf"
PRETRAIN_CONF = CONF / "pretrain_tiny.yaml"
FINETUNE_CONF = CONF / "finetune_tiny.yaml"

SMALL_MODEL = ["model.conv_layers=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]]",
               "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64", "model.encoder_layers=2",
               "model.encoder_attention_heads=2", "model.conv_pos=16", "model.conv_pos_groups=4",
               "model.final_dim=16", "model.latent_vars=16"]
SMALL_RUN = ["data.max_tokens=160000", "data.max_sample_size=48000", "data.num_workers=0", "trainer.threads=1"]
PRETRAIN_SMALL = SMALL_MODEL + SMALL_RUN + ["task.num_negatives=5", "optim.warmup_updates=2"]
# From scratch (no --init): the model section applies; the Transformer unfreezes after two updates.
FINETUNE_SMALL = SMALL_MODEL + SMALL_RUN + ["task.freeze_finetune_updates=2"]

# One thread per process: the machine is shared, and it keeps runs deterministic.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def pretrain_cmd(data: Path, exp: Path, *extra: str, updates: int = 8, valid: str | None = None) -> list[str]:
    """`w2vtk pretrain` of the tiny model on train-clean-100, a checkpoint and a log line every update."""
    return [W2VTK, "pretrain", "--config", str(PRETRAIN_CONF), "--data", str(data),
            "--train-subset", "train-clean-100", *(["--valid-subset", valid] if valid else []),
            "--exp-dir", str(exp), "--max-updates", str(updates), "--save-interval", "1", "--log-interval", "1",
            *PRETRAIN_SMALL, *extra]


def finetune_cmd(data: Path, exp: Path, *extra: str, updates: int = 8) -> list[str]:
    """`w2vtk finetune` (letters, from scratch) of the tiny model, a checkpoint and a log line every update."""
    return [W2VTK, "finetune", "--config", str(FINETUNE_CONF), "--data", str(data), "--labels", "ltr",
            "--train-subset", "train-clean-100", "--exp-dir", str(exp), "--max-updates", str(updates),
            "--save-interval", "1", "--log-interval", "1", *FINETUNE_SMALL, *extra]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout, **kw)


def start(cmd: list[str], log: Path | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """Start `cmd` in its own process group (so a kill reaches its children), stderr into `log`."""
    err = open(log, "w") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    finally:
        if log:
            err.close()


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300,
             poll: float = 0.02) -> bool:
    """Poll until `condition()` holds; False if `proc` ended first or the timeout passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(poll)
    return False


def logged_steps(exp: Path) -> int:
    """The last training update logged in EXP/log.jsonl (0 when none); a line cut by a kill is ignored."""
    try:
        lines = (exp / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not rec.get("valid") and "health" not in rec:
            steps.append(rec["step"])
    return max(steps)


def train_losses(exp: Path) -> dict[int, float]:
    """{update: loss} of the training lines of EXP/log.jsonl (health findings left out)."""
    records = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if not r.get("valid") and "health" not in r}


def one_line_error(stderr: str) -> str:
    """The single `error: ...` line of a failed command's stderr (log lines before it are allowed)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, stderr[-3000:]
    tail = stderr.strip().splitlines()[-1]
    assert tail == errors[0], f"the error is not the last line:\n{stderr[-3000:]}"
    return errors[0]
