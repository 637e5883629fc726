"""CTC fine-tuning: what stays frozen when, the label kinds, initialisation, and the schedule."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from w2vtk.checkpoint import load_checkpoint
from w2vtk.training.config import OptimConfig
from w2vtk.training.schedule import lr_multiplier

ROOT = Path(__file__).resolve().parents[1]
FT = ROOT / "recipes" / "librispeech" / "conf" / "finetune_tiny.yaml"
PT = ROOT / "recipes" / "librispeech" / "conf" / "pretrain_tiny.yaml"
SMALL = ["model.conv_layers=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]]",
         "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64", "model.encoder_layers=2",
         "model.encoder_attention_heads=2", "model.conv_pos=16", "model.conv_pos_groups=4", "model.final_dim=16",
         "model.latent_vars=16", "data.num_workers=0", "trainer.threads=1"]


def run(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "w2vtk", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def finetune(data: Path, exp: Path, *extra: str, updates: int = 4) -> subprocess.CompletedProcess:
    return run("finetune", "--config", str(FT), "--data", str(data), "--train-subset", "train-clean-100",
               "--valid-subset", "dev-clean", "--exp-dir", str(exp), "--max-updates", str(updates),
               "--save-interval", "1", "--valid-interval", str(updates), "--log-interval", "1",
               "data.max_tokens=100000", "task.mask_channel_length=8", *SMALL, *extra)


def _decoded(data: Path, subset: str, exp: Path, tmp_path: Path, *extra: str) -> dict:
    """wer.json of greedy `w2vtk decode` of `subset` with the run's last checkpoint."""
    out = tmp_path / "decoded"
    run("decode", "--checkpoint", str(exp / "checkpoints" / "last.pt"), "--data", str(data), "--subset", subset,
        "--out", str(out), "--device", "cpu", *extra)
    return json.loads((out / "wer.json").read_text())


@pytest.fixture(scope="module")
def pretrained(prepared_librispeech, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("pt") / "exp"
    run("pretrain", "--config", str(PT), "--data", str(prepared_librispeech), "--train-subset", "train-clean-100",
        "--exp-dir", str(exp), "--max-updates", "2", "task.num_negatives=5", "data.max_tokens=100000",
        "data.max_sample_size=32000", *SMALL)
    return exp / "checkpoints" / "last.pt"


def test_transformer_frozen_first_then_trained_cnn_frozen_at_grad_mult_0(prepared_librispeech, pretrained, tmp_path):
    exp = tmp_path / "exp"
    finetune(prepared_librispeech, exp, "--init", str(pretrained), "task.freeze_finetune_updates=2",
             "task.feature_grad_mult=0", "--keep-last", "5", updates=3)
    init = load_checkpoint(pretrained)["model"]
    after = [load_checkpoint(exp / "checkpoints" / f"checkpoint_{s}.pt")["model"] for s in (1, 2, 3)]
    layer = "encoder.layers.0.fc1.weight" if "encoder.layers.0.fc1.weight" in init else next(
        k for k in init if k.startswith("encoder.layers.0.") and k.endswith("weight"))
    cnn = next(k for k in init if k.startswith("feature_extractor."))
    for state in after:
        assert torch.equal(state[cnn], init[cnn])  # the CNN never moves
    assert torch.equal(after[1][layer], init[layer])  # frozen through update 2
    assert not torch.equal(after[2][layer], init[layer])  # trained from update 3
    assert not torch.equal(after[0]["ctc_head.weight"], after[1]["ctc_head.weight"])  # the head learns at once
    ckpt = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert ckpt["kind"] == "finetune" and ckpt["labels"] == "ltr"
    assert ckpt["vocab"][:4] == ["<s>", "<pad>", "</s>", "<unk>"] and "|" in ckpt["vocab"]
    assert not any(k.startswith(("quantizer.", "project_q.", "final_proj.")) for k in ckpt["model"])
    valid = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines() if '"valid"' in x]
    assert valid[-1]["step"] == 3
    # the validation WER is that of decoding dev-clean greedily with the model of that update, and
    # `emitted` its greedy output tokens per reference token
    assert valid[-1]["wer"] == pytest.approx(_decoded(prepared_librispeech, "dev-clean", exp, tmp_path)["wer"],
                                             abs=1e-3)
    from w2vtk.decode import compute_logprobs, load_acoustic_model
    from w2vtk.decoding.greedy import greedy_ids
    from w2vtk.manifest import read_manifest

    am = load_acoustic_model(exp / "checkpoints" / "last.pt", "cpu")
    dev = read_manifest(prepared_librispeech / "dev-clean.tsv")
    emitted = sum(len(greedy_ids(lp)) for lp in compute_logprobs(am, dev, progress=False))
    letters = len((prepared_librispeech / "dev-clean.ltr").read_text().split())
    assert valid[-1]["emitted"] == pytest.approx(emitted / letters, rel=1e-6) and emitted > 0


def test_cnn_learns_with_a_positive_grad_mult(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    finetune(prepared_librispeech, exp, "task.feature_grad_mult=1.0", "--keep-last", "5", updates=2)
    first, second = (load_checkpoint(exp / "checkpoints" / f"checkpoint_{s}.pt")["model"] for s in (1, 2))
    cnn = [k for k in first if k.startswith("feature_extractor.")]
    assert cnn and any(not torch.equal(first[k], second[k]) for k in cnn)


def test_sentencepiece_labels_travel_in_the_checkpoint(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    finetune(prepared_librispeech, exp, "--labels", "sp", "task.sp_vocab_size=60", "task.feature_grad_mult=1.0",
             updates=2)
    ckpt = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert ckpt["labels"] == "sp" and ckpt["sentencepiece"] is not None
    assert len(ckpt["vocab"]) == 4 + 59  # w2vtk's specials + sentencepiece's pieces but its <unk>
    from w2vtk.subwords import SubwordModel

    sp = SubwordModel.from_tensor(ckpt["sentencepiece"])
    pieces = sp.encode("THE BIRCH CANOE")
    assert "".join(pieces).replace("\u2581", " ").split() == ["THE", "BIRCH", "CANOE"]


def test_phone_labels_report_per(prepared_timit, tmp_path):
    exp = tmp_path / "exp"
    run("finetune", "--config", str(FT), "--data", str(prepared_timit), "--train-subset", "train",
        "--valid-subset", "dev", "--labels", "phn", "--exp-dir", str(exp), "--max-updates", "2",
        "--valid-interval", "2", "data.max_tokens=100000", "task.mask_channel_length=8",
        "task.feature_grad_mult=1.0", *SMALL)
    valid = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines() if '"valid"' in x]
    assert valid[-1]["step"] == 2 and "wer" not in valid[-1]
    # the validation PER is that of decoding dev greedily with the model of that update, silence kept
    decoded = _decoded(prepared_timit, "dev", exp, tmp_path, "--keep-sil")
    assert valid[-1]["per"] == pytest.approx(decoded["per"], abs=1e-3)


def test_bf16_autocast_trains_on_cpu(prepared_librispeech, tmp_path):
    finetune(prepared_librispeech, tmp_path / "exp", "trainer.precision=bf16", "task.feature_grad_mult=1.0",
             updates=2)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "exp" / "log.jsonl").read_text().splitlines()]
    assert all(v == v and abs(v) < 1e4 for v in losses)


def test_tri_stage_schedule():
    cfg = OptimConfig(scheduler="tri_stage", max_updates=100, phase_ratio=(0.1, 0.4, 0.5), init_lr_scale=0.01,
                      final_lr_scale=0.05)
    assert lr_multiplier(cfg, 0) == pytest.approx(0.01)
    assert lr_multiplier(cfg, 10) == pytest.approx(1.0) and lr_multiplier(cfg, 49) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 100) == pytest.approx(0.05)
    assert 0.05 < lr_multiplier(cfg, 75) < 1.0  # exponential decay in the last phase
    poly = OptimConfig(scheduler="polynomial", max_updates=100, warmup_updates=10)
    assert lr_multiplier(poly, 9) == pytest.approx(1.0) and lr_multiplier(poly, 55) == pytest.approx(0.5)
