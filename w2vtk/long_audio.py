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
_RESAMPLE_MARGIN = 4096  # native samples read beyond each end of a span to resample: past the filter's reach


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


def _read_16k(f, path, start16: int, count16: int) -> np.ndarray:
    """Samples [start16, start16 + count16) of the file at 16 kHz (fewer at its end), mono float32;
    `start16` must fall on a whole sample at the file's rate too. Other rates are read with a margin on
    both sides that holds the resampling filter's edges and is then cut off, so that spans read this
    way are the samples that resampling the whole file gives."""
    from w2vtk.audio import resample

    rate = f.samplerate
    if rate == SAMPLE_RATE:
        return _read(f, path, start16, max(0, min(count16, f.frames - start16)))
    unit = rate // math.gcd(rate, SAMPLE_RATE)  # native samples per whole 16 kHz sample
    margin = unit * -(-_RESAMPLE_MARGIN // unit)
    native_start = start16 * rate // SAMPLE_RATE
    a = max(0, native_start - margin)
    b = min(f.frames, native_start - (-count16 * rate // SAMPLE_RATE) + margin)
    wav = resample(_read(f, path, a, b - a), rate)
    lo = (native_start - a) * SAMPLE_RATE // rate
    return wav[lo:lo + count16]


def _mean_std(f, path, eps: float = 1e-5) -> tuple[float, float]:
    """Mean and standard deviation of the whole file at 16 kHz, read (and resampled) block by block."""
    unit = f.samplerate // math.gcd(f.samplerate, SAMPLE_RATE)  # native samples per whole 16 kHz sample
    block16 = max(unit, _STATS_BLOCK // unit * unit) * SAMPLE_RATE // f.samplerate
    total16 = resampled_length(f.frames, f.samplerate)
    total = total_sq = 0.0
    n = 0
    for start16 in range(0, total16, block16):
        part = _read_16k(f, path, start16, min(block16, total16 - start16)).astype(np.float64)
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
        result = np.empty((frames, len(am.vocab)), dtype=np.float32)
        done = 0  # frames of `result` filled
        bar = tqdm(total=frames, desc=f"acoustic model ({os.path.basename(path)})", unit="frame",
                   disable=not progress)
        with torch.inference_mode():
            for keep_start in range(0, frames, chunk):
                keep_end = min(frames, keep_start + chunk)
                first, last = max(0, keep_start - context), min(frames, keep_end + context)
                wav = _read_16k(f, path, first * stride, (last - first - 1) * stride + field)
                wav = (wav - mean) / std
                x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(am.device)
                logits, _ = am.model.ctc_logits(x)
                lprobs = F.log_softmax(logits[0].float(), dim=-1).cpu().numpy()
                kept = lprobs[keep_start - first: keep_end - first]
                if len(kept) < keep_end - keep_start and (keep_end < frames or len(kept) == 0):
                    raise AudioError(f"{path}: holds fewer samples than its header states; the file is corrupt "
                                     "or truncated: re-extract or replace it")
                result[keep_start:keep_start + len(kept)] = kept
                done = keep_start + len(kept)
                bar.update(keep_end - keep_start)
        bar.close()
    # the last window may be short of samples (a resampled length rounded down)
    result[done:] = result[done - 1]
    return result
