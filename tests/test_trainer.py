"""The shared trainer through the real CLI: logs, checkpoints, resume after kill -9, the lock, refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dependencies import missing_dependency
from w2vtk.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "librispeech" / "conf" / "pretrain_tiny.yaml"
# A very small model and batches of one or two utterances: each update takes well under a second.
SMALL = ["model.conv_layers=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]]",
         "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64", "model.encoder_layers=2",
         "model.encoder_attention_heads=2", "model.conv_pos=16", "model.conv_pos_groups=4", "model.final_dim=16",
         "model.latent_vars=16", "task.num_negatives=5", "data.max_tokens=160000", "data.max_sample_size=48000",
         "data.num_workers=0", "optim.warmup_updates=2", "trainer.threads=1"]
LOG_KEYS = {"step", "loss", "contrastive", "diversity", "penalty", "prob_perplexity", "code_perplexity",
            "temperature", "accuracy", "lr", "grad_norm", "audio_seconds_per_second"}


def w2vtk(*args: str) -> list[str]:
    return [sys.executable, "-m", "w2vtk", *args]


def pretrain_cmd(data: Path, exp: Path, *extra: str, updates: int = 8) -> list[str]:
    return w2vtk("pretrain", "--config", str(TINY), "--data", str(data), "--train-subset", "train-clean-100",
                 "--valid-subset", "dev-clean", "--exp-dir", str(exp), "--max-updates", str(updates),
                 "--save-interval", "2", "--valid-interval", "4", "--log-interval", "1", *SMALL, *extra)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


def train_losses(exp: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if not r.get("valid")}


@pytest.fixture(scope="module")
def reference_run(prepared_librispeech, tmp_path_factory):
    """An uninterrupted run, the yardstick for resumed ones."""
    exp = tmp_path_factory.mktemp("ref") / "exp"
    res = run(pretrain_cmd(prepared_librispeech, exp))
    assert res.returncode == 0, res.stderr[-3000:]
    return exp


def test_outputs_of_a_run(reference_run):
    exp = reference_run
    assert (exp / "config.yaml").exists()
    records = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if not r.get("valid")]
    valid = [r for r in records if r.get("valid")]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert LOG_KEYS <= set(train[0])
    assert [r["step"] for r in valid] == [4, 8] and "loss" in valid[0]
    ckpts = exp / "checkpoints"
    assert (ckpts / "last.pt").exists() and (ckpts / "best.pt").exists()
    last = load_checkpoint(ckpts / "last.pt")
    assert last["trainer"]["step"] == 8 and last["kind"] == "pretrain"
    assert {"optimizer", "rng", "epoch", "batches_done"} <= set(last["trainer"])
    # keep_last=2 numbered checkpoints besides last/best
    assert len(list(ckpts.glob("checkpoint_*.pt"))) <= 3


def test_rerun_of_a_finished_run_does_nothing(reference_run, prepared_librispeech):
    before = (reference_run / "log.jsonl").read_text()
    res = run(pretrain_cmd(prepared_librispeech, reference_run))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed" in res.stderr
    assert (reference_run / "log.jsonl").read_text() == before


def test_kill_9_then_resume_gives_the_same_losses(reference_run, prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    proc = subprocess.Popen(pretrain_cmd(prepared_librispeech, exp), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (exp / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_checkpoint(exp / "checkpoints" / "last.pt")["trainer"]["step"]
    assert first < 8
    res = run(pretrain_cmd(prepared_librispeech, exp))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"at update {first}" in res.stderr
    ours, ref = train_losses(exp), train_losses(reference_run)
    assert sorted(ours) == sorted(ref)
    for step in ref:
        assert abs(ours[step] - ref[step]) < 1e-5 * max(1.0, abs(ref[step])), (step, ours[step], ref[step])
    for ckpt in (exp / "checkpoints").glob("*.pt"):
        load_checkpoint(ckpt)  # every file on disk loads
    assert not list((exp / "checkpoints").glob(".*.tmp"))


def test_second_run_into_a_busy_exp_dir_is_refused(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    proc = subprocess.Popen(pretrain_cmd(prepared_librispeech, exp, updates=1000), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (exp / "log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.1)
        res = run(pretrain_cmd(prepared_librispeech, exp, updates=1000))
        assert res.returncode == 2
        assert f"PID {proc.pid}" in res.stderr and "Traceback" not in res.stderr
    finally:
        proc.kill()
        proc.wait()


def test_changed_architecture_is_refused_on_resume(reference_run, prepared_librispeech):
    res = run(pretrain_cmd(prepared_librispeech, reference_run, "model.encoder_layers=3", updates=10))
    assert res.returncode == 2
    assert "encoder_layers" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()[-1]) > 20


def test_diverging_run_stops_with_a_clear_message(prepared_librispeech, tmp_path):
    res = run(pretrain_cmd(prepared_librispeech, tmp_path / "exp", "optim.lr=1e12", "optim.clip_norm=0",
                           "trainer.max_nonfinite=2", updates=30))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "non-finite" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not torch.distributed.is_available(),
                    reason=missing_dependency("torch.distributed", "install the pinned torch: run bin/setup.sh"))
def test_two_process_update_matches_one_process(prepared_librispeech, tmp_path):
    """torchrun with 2 workers x 1 utterance == 1 process x 2 accumulated utterances, after one update."""
    # No dropout: its random streams differ per process by design.
    no_dropout = ["model.dropout=0", "model.attention_dropout=0", "model.dropout_input=0", "model.dropout_features=0"]
    one_item = ["data.max_tokens=48000", "optim.update_freq=2", *no_dropout]
    single = run(pretrain_cmd(prepared_librispeech, tmp_path / "single", *one_item, "--save-interval", "1",
                              updates=1))
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "w2vtk", *pretrain_cmd(prepared_librispeech, tmp_path / "ddp", "data.max_tokens=48000", *no_dropout,
                                              "--save-interval", "1", updates=1)[3:]])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    la, lb = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert abs(la[1] - lb[1]) < 1e-4


@pytest.mark.parametrize("clip_norm", [0.0, 1e-3, 1e3])
def test_update_divides_and_clips_like_clip_grad_norm(clip_norm):
    from w2vtk.training.trainer import divide_and_clip

    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (7, 3, 5)]
    start = [torch.randn(s) for s in shapes]
    ours = [torch.nn.Parameter(x.clone()) for x in start]
    ref = [torch.nn.Parameter(x.clone()) for x in start]
    # Adam is blind to a constant gradient scale but for eps: a large eps makes a wrong scale show.
    opts = [torch.optim.AdamW(ps, lr=0.1, eps=1.0, weight_decay=0.01, fused=True) for ps in (ours, ref)]
    for step in range(3):
        summed = [torch.randn(s) * 50 * (step + 1) for s in shapes]  # gradients summed over 50 frames
        for p, g in zip(ours, summed):
            p.grad = g.clone()
        norm = divide_and_clip(opts[0], ours, 50.0, clip_norm)
        opts[0].step()
        opts[0].zero_grad()
        for p, g in zip(ref, summed):
            p.grad = g / 50.0
        ref_norm = torch.nn.utils.clip_grad_norm_(ref, clip_norm if clip_norm > 0 else float("inf"))
        opts[1].step()
        opts[1].zero_grad()
        assert norm == pytest.approx(float(ref_norm), rel=1e-6)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)
