"""Evidence that training learns: a small model on the synthesized corpus, a few CPU minutes in all.

Training is deterministic given --seed on CPU, so these runs give the same figures every time on the
same build; the thresholds leave room for other builds and still fail for an objective that does
not learn (chance accuracy, a collapsed codebook, a CTC model stuck on blanks).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "recipes" / "librispeech" / "conf"
# Half the tiny model: 2 layers of 128.
SMALL = ["model.encoder_embed_dim=128", "model.encoder_ffn_embed_dim=256", "model.encoder_layers=2",
         "model.encoder_attention_heads=4", "model.conv_pos=32", "model.conv_pos_groups=8", "model.final_dim=64",
         "model.latent_vars=32", "data.num_workers=0"]
K = 10


def records(exp: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("valid")], [r for r in rows if r.get("valid")]


@pytest.fixture(scope="module")
def pretrained(prepared_librispeech, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("learn") / "pretrain"
    # Validation on the training utterances: what it checks is that evaluation sees the trained
    # weights. On the 13 dev utterances this model stays within noise of chance at 300 updates (valid
    # accuracy 0.106-0.129 at the end for builds whose training curves agree to 0.01).
    res = subprocess.run(
        [sys.executable, "-m", "w2vtk", "pretrain", "--config", str(CONF / "pretrain_tiny.yaml"),
         "--data", str(prepared_librispeech), "--train-subset", "train-clean-100",
         "--valid-subset", "train-clean-100",
         "--exp-dir", str(exp), "--max-updates", "300", "--log-interval", "20", "--valid-interval", "50",
         *SMALL, f"task.num_negatives={K}", "data.max_tokens=128000", "data.max_sample_size=32000",
         "optim.warmup_updates=20", "optim.lr=2e-3", "task.latent_temp=[2.0,0.5,0.99]"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return exp


def test_pretraining_learns(pretrained):
    train, valid = records(pretrained)
    chance = 1 / (K + 1)
    late = [r["accuracy"] for r in train[-5:]]
    assert sum(late) / len(late) > 1.4 * chance, late  # picks the true target well above chance
    assert valid[-1]["accuracy"] > 1.2 * chance, valid[-1]
    codes = 2 * 32  # G * V
    for r in train[-5:] + valid[-1:]:  # the codebook has not collapsed
        assert r["prob_perplexity"] > 0.5 * codes and r["code_perplexity"] > 0.5 * codes, r
    assert valid[-1]["loss"] < valid[0]["loss"], [v["loss"] for v in valid]  # evaluation sees the trained weights
    late_loss = [r["loss"] for r in train[-5:]]  # below the cross-entropy of a uniform guess among K + 1
    assert sum(late_loss) / len(late_loss) < math.log(K + 1) - 0.02, late_loss
    assert train[-1]["temperature"] < train[0]["temperature"]


def test_finetuned_model_decodes_far_better_than_chance(prepared_librispeech, tmp_path):
    exp = tmp_path / "ft"
    res = subprocess.run(
        [sys.executable, "-m", "w2vtk", "finetune", "--config", str(CONF / "finetune_tiny.yaml"),
         "--data", str(prepared_librispeech), "--train-subset", "train-clean-100", "--valid-subset", "dev-clean",
         "--exp-dir", str(exp), "--max-updates", "400", "--valid-interval", "400", "--log-interval", "50",
         *SMALL, "task.feature_grad_mult=1.0"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    train, _ = records(exp)
    assert train[-1]["loss"] < 0.5 * train[0]["loss"], (train[0]["loss"], train[-1]["loss"])
    out = tmp_path / "decode"
    res = subprocess.run([sys.executable, "-m", "w2vtk", "decode", "--checkpoint",
                          str(exp / "checkpoints" / "last.pt"), "--data", str(prepared_librispeech),
                          "--subset", "train-clean-100", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "wer.json").read_text())
    wer = summary["wer"]
    # Chance (or an all-blank model) is 100% WER; a model that learnt the utterances it saw is far below.
    assert wer < 60, wer
    # Its word confidences mean something: right words are more confident than wrong ones (0.5: chance).
    assert summary["confidence_auc"] > 0.6, summary
    assert summary["confidence_ece"] < 0.3, summary
