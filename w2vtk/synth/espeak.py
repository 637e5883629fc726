"""espeak-ng and sox: text -> 16 kHz audio, and text -> IPA phonemes.

Audio is `espeak-ng --stdout` (22.05 kHz) resampled to 16 kHz by `sox -R` (repeatable, no dither),
so the same text, voice, pitch and speed always give the same samples.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np

from w2vtk.audio import SAMPLE_RATE
from w2vtk.errors import W2vtkError

# espeak-ng's English accents; a synthetic speaker is one of these with a voice variant (+m3, +f2).
ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc"]
VARIANTS = {"M": [f"m{i}" for i in range(1, 8)], "F": [f"f{i}" for i in range(1, 5)]}
# Variants the default speakers never use, for corpora of unseen voices (`synth --variants`).
OTHER_VARIANTS = {"M": ["klatt", "klatt3", "Andy", "Gene", "ed", "john", "max", "paul", "rob", "travis", "zac",
                        "adam", "m8"],
                  "F": ["Annie", "anika", "belinda", "linda", "Alicia", "Andrea", "aunty", "shelby", "steph", "f5"]}


def variant_gender(variant: str) -> str:
    """"M" or "F" for a variant listed above; other espeak-ng variants count as "M"."""
    return "F" if variant in VARIANTS["F"] or variant in OTHER_VARIANTS["F"] else "M"


class SynthError(W2vtkError):
    """espeak-ng or sox is missing or failed."""


def check_tools() -> None:
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        if shutil.which(tool) is None:
            raise SynthError(f"{tool} not found on PATH; install it (apt-get install {package})")


def _run(cmd: list[str], data: bytes) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SynthError(f"{' '.join(cmd[:3])} ... failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout


def synthesize(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """Speak `text` -> float32 array of shape (samples,) at 16 kHz."""
    wav22k = _run(["espeak-ng", "--stdin", "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed)],
                  text.encode("utf-8"))
    raw = _run(["sox", "-R", "-D", "-V1", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16",
                "-c", "1", "-r", str(SAMPLE_RATE), "-"], wav22k)
    pcm = np.frombuffer(raw, dtype="<i2")
    if pcm.size == 0:
        raise SynthError(f"espeak-ng produced no audio for {text!r} with voice {voice}")
    return pcm.astype(np.float32) / 32768


def phonemize(text: str, voice: str) -> list[list[list[str]]]:
    """espeak-ng's IPA for `text`: clauses -> words (as espeak-ng groups them) -> phonemes."""
    out = _run(["espeak-ng", "--stdin", "-q", "--ipa", "--sep=/", "-v", voice], text.encode("utf-8"))
    clauses = []
    for line in out.decode("utf-8").splitlines():
        words = [[p for p in w.split("/") if p] for w in line.split()]
        words = [w for w in words if w]
        if words:
            clauses.append(words)
    return clauses

