"""CTC log-probabilities of a recording of any length, in memory that does not grow with its length.

The file is read in pieces with soundfile. The model runs on windows of `chunk + 2 * context` seconds:
each window keeps the frames of its middle `chunk` seconds, which saw `context` seconds of audio on
both sides, and the kept frames of consecutive windows join without gap or overlap:

    frames   |<-context->|<------ chunk (kept) ------>|<-context->|
    window 1             [0 ........................ C)
    window 2                               [C ........................ 2C)

Windows start on multiples of the CNN's stride, so frame j of a window is frame `first + j` of the
whole recording, and times computed from the joined frames are those of the recording. Only the
(frame, vocab) log-probabilities of the whole recording are kept (at 50 frames a second, 6 KB a
second for a 32-symbol vocabulary), never its audio. Models that normalise their input get the mean
and variance of the whole recording, from a first pass over it. Other rates than 16 kHz are resampled
window by window; the context absorbs the resampling filter's edges.
"""
from __future__ import annotations

import math
import os

import numpy as np

from w2vtk.audio import SAMPLE_RATE, AudioError, resampled_length

DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_CONTEXT_SECONDS = 5.0
_STATS_BLOCK = 1 << 20  # samples per read of the normalisation pass


def _open(path: str | os.PathLike):
    import soundfile as sf

    from w2vtk.audio import _check_path, _check_rate, _reason

    _check_path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)}); the file is corrupt or truncated: "
                         "re-extract or replace it") from None
    _check_rate(path, f.samplerate)
    return f


def _read(f, path, start: int, count: int) -> np.ndarray:
    """`count` native-rate samples from `start`, mono float32."""
    from w2vtk.audio import _reason

    try:
        f.seek(start)
        wav = f.read(frames=count, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)}); the file is corrupt or truncated: "
                         "re-extract or replace it") from None
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples; the file is corrupt")
    return wav


def _mean_std(f, path, eps: float = 1e-5) -> tuple[float, float]:
    """Mean and standard deviation of the whole file at 16 kHz, read (and resampled) block by block.
    Blocks start on whole samples at both rates and are resampled with a margin on both sides that is
    then cut off, so the blocks tile the resampled file as whole-file resampling gives it."""
    from w2vtk.audio import resample

    unit = f.samplerate // math.gcd(f.samplerate, SAMPLE_RATE)  # native samples per whole 16 kHz sample
    block = max(unit, _STATS_BLOCK // unit * unit)
    margin = 0 if f.samplerate == SAMPLE_RATE else unit * -(-4096 // unit)
    total16 = resampled_length(f.frames, f.samplerate)
    total = total_sq = 0.0
    n = 0
    for start in range(0, f.frames, block):
        a, b = max(0, start - margin), min(f.frames, start + block + margin)
        wav = _read(f, path, a, b - a)
        if f.samplerate != SAMPLE_RATE:
            wav = resample(wav, f.samplerate)
        lo = (start - a) * SAMPLE_RATE // f.samplerate
        last = start + block >= f.frames
        count = total16 - n if last else block * SAMPLE_RATE // f.samplerate
        part = wav[lo:lo + count].astype(np.float64)
        total += part.sum()
        total_sq += (part * part).sum()
        n += len(part)
    mean = total / max(n, 1)
    return mean, math.sqrt(max(total_sq / max(n, 1) - mean * mean, 0.0) + eps)


def chunked_logprobs(am, path: str | os.PathLike, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
                     context_seconds: float = DEFAULT_CONTEXT_SECONDS, progress: bool = True) -> np.ndarray:
    """(frame, vocab) float32 log-probabilities of the whole file at `path`, `am` a
    w2vtk.decode.AcousticModel. A file shorter than the receptive field gives (0, vocab)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from w2vtk.audio import resample

    cfg = am.model.cfg
    stride, field = cfg.frame_stride, cfg.receptive_field
    with _open(path) as f:
        rate = f.samplerate
        # window starts must fall on whole samples at the file's own rate too
        step = math.lcm(stride, SAMPLE_RATE // math.gcd(SAMPLE_RATE, rate))
        samples = resampled_length(f.frames, rate)
        frames = (samples - field) // stride + 1 if samples >= field else 0
        if frames == 0:
            return np.zeros((0, len(am.vocab)), dtype=np.float32)
        per_step = step // stride
        chunk = max(per_step, round(chunk_seconds * SAMPLE_RATE / stride) // per_step * per_step)
        context = int(math.ceil(context_seconds * SAMPLE_RATE / stride / per_step)) * per_step
        mean, std = _mean_std(f, path) if am.normalize else (0.0, 1.0)
        out = []
        bar = tqdm(total=frames, desc=f"acoustic model ({os.path.basename(path)})", unit="frame",
                   disable=not progress)
        with torch.inference_mode():
            for keep_start in range(0, frames, chunk):
                keep_end = min(frames, keep_start + chunk)
                first, last = max(0, keep_start - context), min(frames, keep_end + context)
                start16, count16 = first * stride, (last - 1) * stride + field
                native_start = start16 * rate // SAMPLE_RATE
                native_count = min(f.frames - native_start, -(-count16 * rate // SAMPLE_RATE))
                wav = _read(f, path, native_start, native_count)
                if rate != SAMPLE_RATE:
                    wav = resample(wav, rate)
                wav = (wav[:count16] - mean) / std
                x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(am.device)
                logits, _ = am.model.ctc_logits(x)
                lprobs = F.log_softmax(logits[0].float(), dim=-1).cpu().numpy()
                out.append(np.ascontiguousarray(lprobs[keep_start - first: keep_end - first]))
                bar.update(keep_end - keep_start)
        bar.close()
    result = np.concatenate(out)
    if len(result) != frames:  # the last window was short of samples (a resampled length rounded down)
        pad = np.repeat(result[-1:], frames - len(result), axis=0)
        result = np.concatenate([result, pad])
    return result
