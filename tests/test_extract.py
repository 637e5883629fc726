"""`w2vtk extract`: per-file .npy features equal transformers' hidden states, for any audio format and rate."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dependencies import need_module
from reference_models import corpus_utterances, hf_model, save_hf
from w2vtk.audio import read_audio, write_audio
from w2vtk.cli import main
from w2vtk.convert import import_checkpoint

need_module("transformers")
W2VTK = str(Path(sys.executable).with_name("w2vtk"))


@pytest.fixture(scope="module")
def audio_files(synth_librispeech, tmp_path_factory) -> list[Path]:
    """The kinds of input users have: FLAC at 16 kHz, FLAC at 8 kHz, WAV at 22.05 kHz."""
    root = tmp_path_factory.mktemp("audio")
    a, b, c = corpus_utterances(synth_librispeech, 3)
    wav8k = read_audio(b)[::2]  # 16 kHz -> 8 kHz by decimation (speech content, lower rate)
    write_audio(root / "second.flac", wav8k, sample_rate=8000)
    subprocess.run(["sox", str(c), "-r", "22050", str(root / "third.wav")], check=True)
    return [a, root / "second.flac", root / "third.wav"]


@pytest.fixture(scope="module", params=["base", "large"])
def imported(request, tmp_path_factory):
    """(transformers model, w2vtk checkpoint path); the LARGE-style one expects normalised input."""
    root = tmp_path_factory.mktemp(f"model-{request.param}")
    hf = hf_model("pretrain", request.param, seed=11)
    folder = save_hf(hf, root / "hf")
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": request.param == "large"}))
    import_checkpoint(folder, root / "model.pt")
    return hf, root / "model.pt"


def reference(hf, wav: np.ndarray, layer: int) -> np.ndarray:
    if hf.config.do_stable_layer_norm:  # the model was imported with normalize=True
        wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)
    with torch.no_grad():
        return hf(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states[layer][0].numpy()


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_extract_matches_transformers_hidden_states(layer, imported, audio_files, tmp_path):
    hf, ckpt = imported
    result = CliRunner().invoke(main, ["extract", "--checkpoint", str(ckpt), "--layer", str(layer),
                                       "--out", str(tmp_path / "feats"), *map(str, audio_files)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == sorted(f"{p.stem}.npy" for p in audio_files)
    for path in audio_files:
        features = np.load(tmp_path / "feats" / f"{path.stem}.npy")
        wav = read_audio(path)
        expected = reference(hf, wav, layer)
        assert features.dtype == np.float32 and features.shape == expected.shape
        assert features.shape == ((len(wav) - 400) // 320 + 1, hf.config.hidden_size)
        assert np.abs(features - expected).max() < 1e-4


def test_default_layer_is_the_last_and_a_real_subprocess_works(imported, audio_files, tmp_path):
    hf, ckpt = imported
    proc = subprocess.run([W2VTK, "extract", "--checkpoint", str(ckpt), "--out", str(tmp_path), str(audio_files[0])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = reference(hf, read_audio(audio_files[0]), hf.config.num_hidden_layers)
    assert np.abs(np.load(tmp_path / f"{audio_files[0].stem}.npy") - expected).max() < 1e-4


def test_bad_requests_are_clear_errors(imported, audio_files, tmp_path):
    _, ckpt = imported
    run = CliRunner().invoke
    result = run(main, ["extract", "--checkpoint", str(ckpt), "--layer", "4", "--out", str(tmp_path / "o"),
                        str(audio_files[0])])
    assert result.exit_code == 2 and "--layer 4 is out of range" in result.output and "0 (the Transformer input) to 3" \
        in result.output
    twin = tmp_path / "elsewhere" / f"{audio_files[0].stem}.wav"
    twin.parent.mkdir()
    twin.write_bytes(audio_files[0].read_bytes())
    result = run(main, ["extract", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), str(audio_files[0]),
                        str(twin)])
    assert result.exit_code == 2 and "would both be written to" in result.output
    short = tmp_path / "click.wav"
    write_audio(short, np.zeros(200, dtype=np.float32))
    result = run(main, ["extract", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), str(short)])
    assert result.exit_code == 2 and f"{short}: " in result.output and "receptive field" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
