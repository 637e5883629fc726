"""Checkpoints: weights-only loading, refusal of code-running pickles, of other architectures and vocabularies."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from w2vtk.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from w2vtk.cli import main
from w2vtk.model import build_model, model_from_checkpoint, tiny_config

W2VTK = str(Path(sys.executable).with_name("w2vtk"))


def small_cfg(**kw):
    values = dict(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, encoder_embed_dim=32,
                  encoder_layers=2, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8,
                  conv_pos_groups=4, final_dim=16, latent_vars=8)
    return tiny_config(**{**values, **kw})


def write_ckpt(path: Path, cfg, vocab=None) -> Path:
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(path, {"kind": "finetune" if vocab else "pretrain", "model_config": cfg.to_dict(),
                           "model": model.state_dict(), "vocab": vocab, "labels": "ltr" if vocab else None})
    return path


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_and_load_round_trip(tmp_path):
    cfg = small_cfg(vocab_size=5)
    path = write_ckpt(tmp_path / "a.pt", cfg, vocab=["<s>", "<pad>", "</s>", "<unk>", "A"])
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    assert model.cfg == cfg
    reference = build_model(cfg)
    reference.load_state_dict(ckpt["model"])
    wav = torch.randn(1, 1600)
    with torch.no_grad():
        assert torch.equal(model.eval().ctc_logits(wav)[0], reference.eval().ctc_logits(wav)[0])


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write_ckpt(tmp_path / "evil.pt", small_cfg())
    ckpt = torch.load(path, weights_only=True)
    ckpt["train_config"] = _RunsCode(marker)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        load_checkpoint(path)
    result = CliRunner().invoke(main, ["export", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output
    proc = subprocess.run([W2VTK, "extract", "--checkpoint", str(path), "--out", str(tmp_path / "f"), str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "refused" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = write_ckpt(tmp_path / "a.pt", small_cfg())
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a w2vtk checkpoint.*w2vtk import"):
        load_checkpoint(tmp_path / "other.pt")


def test_other_architecture_is_refused_naming_the_fields(tmp_path):
    path = write_ckpt(tmp_path / "a.pt", small_cfg())
    ckpt = load_checkpoint(path)
    expected = small_cfg(encoder_layers=3, layer_norm_first=True)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(ckpt, path, expected=expected)
    message = str(e.value)
    assert "encoder_layers: expected 3, checkpoint has 2" in message
    assert "layer_norm_first: expected True, checkpoint has False" in message
    assert "conv_pos" not in message and "a.pt" in message
    assert model_from_checkpoint(ckpt, path, expected=small_cfg(dropout=0.3)).cfg.dropout == 0.1  # not architecture


def test_other_vocabulary_is_refused_naming_the_difference(tmp_path):
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]
    path = write_ckpt(tmp_path / "a.pt", small_cfg(vocab_size=7), vocab=vocab)
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"another vocabulary: vocab\[5\]: expected 'E', checkpoint has 'A'"):
        model_from_checkpoint(ckpt, path, vocab=vocab[:5] + ["E", "B"])
    with pytest.raises(CheckpointError, match="vocab size: expected 8, checkpoint has 7"):
        model_from_checkpoint(ckpt, path, vocab=vocab + ["C"])
    assert model_from_checkpoint(ckpt, path, vocab=vocab).cfg.vocab_size == 7


def test_weights_that_do_not_fit_their_config_are_named(tmp_path):
    path = write_ckpt(tmp_path / "a.pt", small_cfg())
    ckpt = load_checkpoint(path)
    ckpt["model_config"]["encoder_ffn_embed_dim"] = 48
    with pytest.raises(CheckpointError, match=r"shape mismatch: encoder.layers.0.feed_forward.fc1.bias \(64,\) vs "
                                              r"model \(48,\)"):
        model_from_checkpoint(ckpt, path)
    ckpt = load_checkpoint(path)
    del ckpt["model"]["mask_emb"]
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing: mask_emb; unexpected: extra.weight"):
        model_from_checkpoint(ckpt, path)
    ckpt["model_config"]["encoder_layerz"] = 1
    with pytest.raises(CheckpointError, match="unknown model config key.*encoder_layerz"):
        model_from_checkpoint(ckpt, path)
