"""Audio input: any FLAC, WAV or NIST SPHERE file -> 16 kHz mono float32.

The container format is detected from the file's content by libsndfile (through soundfile), never
from its extension, so TIMIT's SPHERE `.WAV` files and mislabelled files read correctly.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from w2vtk.errors import W2vtkError

SAMPLE_RATE = 16000
log = logging.getLogger(__name__)


class AudioError(W2vtkError):
    """An audio file is missing, empty, corrupt or of an unsupported format."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header says. `num_samples` is the length after resampling to 16 kHz."""

    num_samples: int
    sample_rate: int
    channels: int
    format: str


def resampled_length(frames: int, sample_rate: int, target: int = SAMPLE_RATE) -> int:
    """Samples after resampling `frames` from `sample_rate` to `target` (torchaudio rounds up)."""
    if sample_rate == target:
        return frames
    return math.ceil(frames * target / sample_rate)


# Resampling r -> 16 kHz costs about (r/g) * (16000/g) kernel taps (g = gcd): fine for the usual rates
# (44.1 kHz: 441/160), but a corrupt header's rate (16001 Hz, 654 MHz) would need gigabytes.
MAX_RESAMPLE_RATIO_TERM = 1000


def _check_rate(path: str | os.PathLike, rate: int) -> None:
    g = math.gcd(rate, SAMPLE_RATE) if rate > 0 else 1
    if rate <= 0 or rate // g > MAX_RESAMPLE_RATIO_TERM or SAMPLE_RATE // g > MAX_RESAMPLE_RATIO_TERM:
        raise AudioError(f"{path}: sample rate {rate} Hz is not one w2vtk resamples (the header is corrupt, or the "
                         "rate is unusual): re-extract the file, or convert it to 16 kHz, e.g. `sox IN -r 16000 OUT`")


def _check_path(path: str | os.PathLike) -> None:
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file; remove it or rename it")
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such audio file; check the path or the manifest's root")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); re-extract or remove it")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header only (no decoding). Raises AudioError naming the path.

    FLAC and NIST SPHERE headers (LibriSpeech, TIMIT) are parsed directly, without opening the file
    with libsndfile; anything else goes through soundfile.
    """
    fast = _parse_header(path)  # a header parsed implies a readable, non-empty file
    if fast is not None:
        frames, rate, channels, fmt = fast
        _check_rate(path, rate)
        return AudioInfo(resampled_length(frames, rate), rate, channels, fmt)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's error types vary by version
        raise AudioError(f"{path}: cannot read audio header ({_reason(e)}); the file is corrupt or "
                         "not FLAC/WAV/SPHERE") from None
    if info.frames <= 0:
        raise AudioError(f"{path}: audio has no samples; re-extract or remove it")
    _check_rate(path, info.samplerate)
    if info.format == "FLAC":
        _check_flac_decodes(path, info.frames)
    return AudioInfo(resampled_length(info.frames, info.samplerate), info.samplerate, info.channels,
                     info.format)


def _check_flac_decodes(path: str | os.PathLike, frames: int) -> None:
    """Decode a FLAC file whose end could not be checked from its last frame header (see _flac_header):
    a FLAC header states the length whatever the file holds, so a cut or garbled file shows only here."""
    decoded = 0
    try:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=1 << 16, dtype="int16"):
                decoded += len(block)
    except Exception as e:  # libsndfile's error types vary by version
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)}); the file is corrupt or truncated: "
                         "re-extract or replace it") from None
    if decoded != frames:
        raise AudioError(f"{path}: holds {decoded} samples but its header says {frames}; the file is corrupt "
                         "or truncated: re-extract or replace it")


def _parse_header(path: str | os.PathLike) -> tuple[int, int, int, str] | None:
    """(frames, sample_rate, channels, format) from a well-formed FLAC or NIST header, else None
    (the caller then asks libsndfile, which also produces the error message for broken files)."""
    # Raw descriptors and positioned reads: a scan reads thousands of headers, and buffered file
    # objects with seeks cost several system calls and objects each.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.pread(fd, 1024, 0)
        if head[:4] == b"fLaC":
            return _flac_header(fd, head)
        if head[:8] == b"NIST_1A\n":
            return _nist_header(head, os.fstat(fd).st_size)
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)
    return None


def _read_at(fd: int, head: bytes, offset: int, size: int) -> bytes:
    """`size` bytes at `offset`, from `head` (the file's first bytes) when it holds them."""
    if offset + size <= len(head):
        return head[offset:offset + size]
    return os.pread(fd, size, offset)


def _flac_header(fd: int, head: bytes) -> tuple[int, int, int, str] | None:
    # STREAMINFO is the first metadata block: 4-byte block header, then 34 bytes whose bits 80..143
    # hold sample rate (20), channels - 1 (3), bits - 1 (5) and total samples (36).
    if len(head) < 42 or head[4] & 0x7F != 0:
        return None
    packed = int.from_bytes(head[18:26], "big")
    rate, channels, frames = packed >> 44, ((packed >> 41) & 7) + 1, packed & ((1 << 36) - 1)
    if rate == 0 or frames == 0:  # 0 total samples means "unknown": let libsndfile count
        return None
    # Walk the metadata blocks to the first audio frame and check its sync code, so a file cut
    # short after its header is caught here as it would be by libsndfile.
    offset = 4
    while True:
        block = _read_at(fd, head, offset, 4)
        if len(block) < 4:
            return None
        offset += 4 + int.from_bytes(block[1:4], "big")
        if block[0] & 0x80:
            break
    sync = _read_at(fd, head, offset, 2)
    if len(sync) < 2 or sync[0] != 0xFF or sync[1] & 0xFE != 0xF8:
        return None
    # The header states the length whatever the file holds: a file cut short (or a garbled STREAMINFO)
    # shows in its last frame, whose first sample plus block size must be the stated length.
    block_size = int.from_bytes(head[8:10], "big")
    max_frame = int.from_bytes(head[15:18], "big") or 1 << 16
    if _flac_last_frame_end(fd, block_size, max_frame, sync) != frames:
        return None
    return frames, rate, channels, "FLAC"


def _flac_last_frame_end(fd: int, block_size: int, max_frame: int, sync: bytes) -> int | None:
    """The sample just after the last frame of a FLAC stream, from the last valid frame header in the
    file's tail (sync code, reserved bits, CRC-8); None if none is found there. `sync`: the first
    frame's two leading bytes."""
    size = os.fstat(fd).st_size
    start = max(0, size - max_frame - 32)
    tail = os.pread(fd, size - start, start)
    at = len(tail)
    while True:
        # A frame header starts with the 14-bit sync code, a 0 bit and the blocking strategy, which
        # a stream keeps throughout: FF F8 (fixed block size) or FF F9 (variable). Searching for the
        # first frame's two bytes skips nearly every false start in the audio, in one search
        # instead of one per strategy.
        at = tail.rfind(sync, 0, at)
        if at < 0:
            return None
        end = _flac_frame_end(tail[at:at + 16], block_size)
        if end is not None:
            return end


# FLAC frame header block sizes by their 4-bit code (6 and 7: stored after the coded number).
_FLAC_BLOCK_SIZES = {1: 192, **{c: 576 << (c - 2) for c in range(2, 6)}, **{c: 256 << (c - 8) for c in range(8, 16)}}


def _flac_frame_end(h: bytes, stream_block_size: int) -> int | None:
    """First sample after the frame whose header starts `h`, or None if `h` is no valid frame header."""
    if len(h) < 6 or h[1] & 0xFE != 0xF8 or h[3] & 1 or h[2] >> 4 == 0 or h[2] & 0xF == 15 or h[3] >> 4 > 10:
        return None
    variable = h[1] & 1
    # The frame (fixed blocking) or sample (variable blocking) number, coded like UTF-8 in 1 to 7 bytes.
    lead = h[4]
    extra = next((n for n in range(7) if not (lead << n) & 0x80), 7) - 1
    if extra < 0:
        number, pos = lead, 5
    elif 1 <= extra <= 6 and len(h) >= 5 + extra:
        number = lead & (0x3F >> extra)
        for b in h[5:5 + extra]:
            if b & 0xC0 != 0x80:
                return None
            number = number << 6 | b & 0x3F
        pos = 5 + extra
    else:
        return None
    code = h[2] >> 4
    if code in (6, 7):
        n = code - 5
        block = int.from_bytes(h[pos:pos + n], "big") + 1
        pos += n
    else:
        block = _FLAC_BLOCK_SIZES[code]
    pos += {12: 1, 13: 2, 14: 2}.get(h[2] & 0xF, 0)
    if pos >= len(h) or _crc8(h[:pos]) != h[pos]:
        return None
    first = number if variable else number * stream_block_size
    return first + block


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc << 1 ^ 0x07) & 0xFF if crc & 0x80 else crc << 1 & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _crc8_table()


def _crc8(data: bytes) -> int:
    """FLAC's frame-header CRC-8 (polynomial x^8 + x^2 + x + 1)."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def _nist_header(head: bytes, file_size: int) -> tuple[int, int, int, str] | None:
    lines = head.split(b"\n")
    try:
        header_size = int(lines[1])
    except (IndexError, ValueError):
        return None
    fields = {}
    for line in lines[2:]:
        parts = line.split()
        if parts == [b"end_head"]:
            break
        if len(parts) == 3:
            fields[parts[0]] = parts[2]
    else:
        return None  # header longer than what we read: unusual, let libsndfile handle it
    if fields.get(b"sample_coding", b"pcm") != b"pcm":
        return None  # e.g. shorten-compressed or mu-law
    try:
        count, rate = int(fields[b"sample_count"]), int(fields[b"sample_rate"])
        channels, width = int(fields.get(b"channel_count", 1)), int(fields.get(b"sample_n_bytes", 2))
    except (KeyError, ValueError):
        return None
    if rate <= 0 or channels <= 0 or width <= 0 or header_size < 16:
        return None
    # libsndfile reports what the file holds when it is shorter than its header claims.
    frames = min(count, max(0, file_size - header_size) // (width * channels))
    if frames <= 0:
        return None
    return frames, rate, channels, "NIST"


def read_audio(path: str | os.PathLike, start: int = 0, num_samples: int | None = None) -> np.ndarray:
    """Decode `path` to a float32 array of shape (samples,) at 16 kHz, mono.

    `start` and `num_samples` select a window in 16 kHz samples (for random crops); other rates are
    read whole and resampled with torchaudio. Multi-channel audio is averaged, with a warning.
    """
    _check_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels = f.samplerate, f.channels
            _check_rate(path, rate)
            if rate == SAMPLE_RATE and (start or num_samples is not None):
                f.seek(start)
                wav = f.read(frames=-1 if num_samples is None else num_samples, dtype="float32",
                             always_2d=True)
            else:
                wav = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:
        # Header reads (`prepare`) passed this file, so --skip-bad would not help: name the real fix.
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)}); the file is corrupt or "
                         "truncated: re-extract or replace it") from None
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio has no samples; re-extract or remove it")
    if channels > 1:
        log.warning("%s: %d channels, down-mixing to mono", path, channels)
        wav = wav.mean(axis=1, keepdims=True)
    wav = wav[:, 0]
    if rate != SAMPLE_RATE:
        wav = resample(wav, rate)
        if start or num_samples is not None:
            wav = wav[start:None if num_samples is None else start + num_samples]
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples; the file is corrupt")
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a (samples,) float32 array with torchaudio's band-limited sinc interpolation."""
    import torch
    import torchaudio.functional as AF

    log.debug("resampling %d Hz -> %d Hz", rate, target)
    return AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), rate, target).numpy()


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE,
                format: str | None = None, subtype: str = "PCM_16") -> None:
    """Write a mono array atomically. `format` is soundfile's ('FLAC', 'WAV', 'NIST'); default from the
    extension."""
    from w2vtk.fileio import atomic_open

    fmt = format or {".flac": "FLAC", ".wav": "WAV", ".sph": "NIST"}.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise W2vtkError(f"{path}: cannot tell the audio format from the extension; pass format=")
    with atomic_open(path, "wb") as f:
        sf.write(f, wav, sample_rate, format=fmt, subtype=subtype)


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0].strip() if str(e) else type(e).__name__
