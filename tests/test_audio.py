import numpy as np
import pytest
import soundfile as sf

from w2vtk.audio import AudioError, audio_info, read_audio, resampled_length, write_audio


def _tone(seconds=0.5, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


@pytest.mark.parametrize("fmt, ext", [("FLAC", "flac"), ("NIST", "sph"), ("WAV", "wav")])
@pytest.mark.parametrize("rate", [8000, 16000, 22050])
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_info_agrees_with_libsndfile(tmp_path, fmt, ext, rate, channels):
    path = tmp_path / f"x.{ext}"
    sf.write(path, _tone(0.37, rate, channels), rate, format=fmt, subtype="PCM_16")
    info, ref = audio_info(path), sf.info(str(path))
    assert (info.sample_rate, info.channels, info.format) == (ref.samplerate, ref.channels, ref.format)
    assert info.num_samples == resampled_length(ref.frames, ref.samplerate)


def test_audio_info_ignores_the_extension(tmp_path):
    path = tmp_path / "SI1027.WAV"  # TIMIT: SPHERE content behind a .WAV name
    sf.write(path, _tone(), 16000, format="NIST", subtype="PCM_16")
    assert audio_info(path).format == "NIST"
    assert read_audio(path).shape == (8000,)


def test_truncated_sphere_reports_what_it_holds(tmp_path):
    path = tmp_path / "x.sph"
    sf.write(path, _tone(), 16000, format="NIST", subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:1024 + 2 * 3000])
    assert audio_info(path).num_samples == sf.info(str(path)).frames == 3000


@pytest.mark.parametrize("damage", ["garbage", "cut_after_header", "cut_mid_header"])
def test_corrupt_flac_is_an_audio_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad.flac"
    sf.write(path, _tone(), 16000)
    data = path.read_bytes()
    damaged = {"garbage": b"\x00junk" * 100 + data[500:], "cut_after_header": data[:60],
               "cut_mid_header": data[:20]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(AudioError, match="bad.flac"):
        audio_info(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.flac").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.flac.*0 bytes"):
        audio_info(tmp_path / "empty.flac")
    with pytest.raises(AudioError, match="no such audio file"):
        audio_info(tmp_path / "missing.flac")
    with pytest.raises(AudioError, match="directory"):
        audio_info(tmp_path)


def test_read_audio_resamples_and_windows(tmp_path):
    path = tmp_path / "x.flac"
    write_audio(path, _tone(1.0, 8000), 8000)
    wav = read_audio(path)
    assert wav.dtype == np.float32 and wav.shape == (audio_info(path).num_samples,) == (16000,)
    path16 = tmp_path / "y.flac"
    full = _tone(1.0)
    write_audio(path16, full)
    window = read_audio(path16, start=100, num_samples=50)
    np.testing.assert_allclose(window, full[100:150], atol=1 / 32768)


def test_synthesized_corpus_headers_match_decoding(synth_timit):
    path = next((synth_timit / "TIMIT" / "TEST").rglob("SX*.WAV"))
    assert audio_info(path).num_samples == read_audio(path).shape[0]
