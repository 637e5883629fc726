"""Recordings of any length: window-by-window inference joins its frames exactly, and peak memory does
not grow with the recording's length."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from w2vtk.audio import write_audio
from w2vtk.cli import main
from w2vtk.text import LETTERS, SPECIAL_SYMBOLS, Vocabulary

VOCAB = Vocabulary(SPECIAL_SYMBOLS + ["|"] + LETTERS, "ltr")


def write_local_model(path: Path, normalize: bool = False) -> Path:
    """A fine-tuned checkpoint whose frames depend only on nearby audio: a layer-norm CNN (no GroupNorm
    over time) and self-attention whose output projection is zero, so only the positional convolution
    (8 frames) mixes frames. Chunked inference with enough context must then equal whole-file inference."""
    from w2vtk.checkpoint import save_checkpoint
    from w2vtk.model import build_model, tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(extractor_mode="layer_norm", conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
                      encoder_embed_dim=32, encoder_layers=2, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                      conv_pos=8, conv_pos_groups=4, final_dim=16, latent_vars=0, vocab_size=len(VOCAB),
                      normalize=normalize)
    model = build_model(cfg)
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
        model.ctc_head.weight.mul_(20.0)  # peaked outputs: words are hypothesised
    save_checkpoint(path, {"kind": "finetune", "model_config": cfg.to_dict(), "model": model.state_dict(),
                           "vocab": VOCAB.to_list(), "labels": "ltr", "train_config": None})
    return path


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Bursts of noise and tones with pauses between them."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = (np.sin(2 * np.pi * 0.7 * t) > -0.2).astype(np.float32)
    wav = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t)
    return (wav * envelope).astype(np.float32)


@pytest.mark.parametrize("rate,normalize", [(16000, False), (8000, True)])
def test_windows_join_to_the_whole_files_frames(tmp_path, rate, normalize):
    from w2vtk.decode import compute_logprobs, load_acoustic_model
    from w2vtk.long_audio import chunked_logprobs
    from w2vtk.manifest import Manifest

    am = load_acoustic_model(write_local_model(tmp_path / "local.pt", normalize), "cpu")
    path = tmp_path / f"long{rate}.wav"
    write_audio(path, speechlike(7.31, rate), sample_rate=rate)
    whole = compute_logprobs(am, Manifest(Path("/"), [str(path)], [int(7.31 * 16000)]), progress=False)[0]
    chunked = chunked_logprobs(am, path, chunk_seconds=1.0, context_seconds=0.5, progress=False)
    assert chunked.shape == whole.shape and len(whole) == (int(7.31 * 16000) - 400) // 320 + 1
    np.testing.assert_allclose(chunked, whole, atol=2e-3)
    # without context the frames near each join lose their neighbours: the comparison above can fail
    bare = chunked_logprobs(am, path, chunk_seconds=1.0, context_seconds=0.0, progress=False)
    assert np.abs(bare - whole).max() > 1e-2


def test_transcribe_times_words_across_window_joins(tmp_path):
    ckpt = write_local_model(tmp_path / "local.pt")
    path = tmp_path / "long.wav"
    write_audio(path, speechlike(9.0))
    outputs = []
    for chunk in ("1.5", "60"):  # window by window; and the whole file in one piece
        res = CliRunner().invoke(main, ["transcribe", "--checkpoint", str(ckpt), "--format", "json",
                                        "--chunk-seconds", chunk, "--context-seconds", "0.5", str(path)])
        assert res.exit_code == 0, res.output
        outputs.append(json.loads(res.stdout))
    chunked, whole = outputs
    assert len(whole["words"]) > 5 and [w["word"] for w in chunked["words"]] == [w["word"] for w in whole["words"]]
    for a, b in zip(chunked["words"], whole["words"]):
        assert a["start"] == pytest.approx(b["start"], abs=1e-3) and a["duration"] == pytest.approx(b["duration"], abs=1e-3)
    assert whole["words"][-1]["start"] > 7.0  # the words run to the end of the file


@pytest.mark.parametrize("rate", [16000, 8000])
def test_each_window_holds_at_most_chunk_and_context(tmp_path, rate):
    from w2vtk.decode import load_acoustic_model
    from w2vtk.long_audio import chunked_logprobs

    am = load_acoustic_model(write_local_model(tmp_path / "local.pt"), "cpu")
    path = tmp_path / "long.wav"
    write_audio(path, speechlike(12.0, rate), sample_rate=rate)
    seen = []
    am.model.feature_extractor.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    frames = chunked_logprobs(am, path, chunk_seconds=1.0, context_seconds=0.5, progress=False)
    window = (1.0 + 2 * 0.5) * 16000 + am.model.cfg.receptive_field
    assert len(seen) == -(-len(frames) // 50) and max(seen) <= window, seen


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of `cmd`, run as a process of its own, in MB. Without huge pages: with them
    the peak moves by tens of MB from one run to the next."""
    from tiny_runs import ENV

    out = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True, check=True,
                         env={**ENV, "W2VTK_HUGE_PAGES": "0"})
    return int(out.stdout.strip()) / 1024


def test_peak_memory_does_not_grow_with_the_recordings_length(tmp_path):
    """`w2vtk transcribe` of a 1-minute and a 5-minute file: only the log-probabilities should grow
    (1.5 MB), beside a few MB that the peak varies by from run to run. Reading the longer file whole
    would add a float32 copy of its extra 4 minutes (15 MB); windows that grow with the position in
    the file, hundreds of MB."""
    from tiny_runs import W2VTK

    ckpt = write_local_model(tmp_path / "local.pt")
    minute = speechlike(60.0)
    peaks = {}
    for minutes in (1, 5):
        path = tmp_path / f"{minutes}min.wav"
        write_audio(path, np.tile(minute, minutes))
        peaks[minutes] = peak_rss_mb([W2VTK, "transcribe", "--checkpoint", str(ckpt), "--device", "cpu",
                                      "--chunk-seconds", "10", "--context-seconds", "2", str(path)])
    assert peaks[5] - peaks[1] < 15.0, peaks
