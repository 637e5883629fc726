"""Mutation fuzzing of the binary readers (audio, checkpoints, KenLM models), run in a child process.

The readers sit on C and C++ libraries (libsndfile, torch's zip reader, KenLM), where a bad file could
crash the process rather than raise; the child reports each file before reading it, so the parent can
name the file that killed it. Usage (what test_fuzz.py runs):

    python fuzz_inputs.py KIND SEED COUNT WORKDIR SEED_FILE...

Every file it makes is kept in WORKDIR. For each it prints `TRY <file>` before reading and, when a
reader raises anything but W2vtkError, `FAIL <file> <exception>`.
"""
from __future__ import annotations

import struct
import sys
import traceback
from pathlib import Path

import numpy as np


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a cut, inserted junk, an overwritten header field, or a splice."""
    buf = bytearray(data)
    kind = int(rng.integers(6))
    if not buf:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    if kind == 0:  # flip a few bytes anywhere
        for i in rng.integers(0, len(buf), int(rng.integers(1, 9))):
            buf[i] = int(rng.integers(256))
    elif kind == 1:  # cut
        del buf[int(rng.integers(0, len(buf))):]
    elif kind == 2:  # junk inserted
        at = int(rng.integers(0, len(buf)))
        buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
    elif kind == 3:  # the header region scrambled (where sizes, rates and counts live)
        end = min(len(buf), 64)
        for i in rng.integers(0, end, int(rng.integers(1, 6))):
            buf[i] = int(rng.integers(256))
    elif kind == 4:  # an extreme 32-bit value written into the header region
        at = int(rng.integers(0, max(1, min(len(buf), 60) - 4)))
        value = int(rng.choice([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 3, 255, 65535]))
        buf[at:at + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", value)
    else:  # a slice of the file repeated
        a, b = sorted(int(x) for x in rng.integers(0, len(buf), 2))
        buf[b:b] = buf[a:b]
    return bytes(buf)


def _audio(path: Path) -> None:
    from w2vtk.audio import audio_info, read_audio

    info = audio_info(path)
    wav = read_audio(path)
    # a file that reads holds samples: an empty one is refused with a W2vtkError
    assert wav.ndim == 1 and wav.dtype == np.float32 and len(wav) > 0
    assert info.num_samples > 0


def _checkpoint(path: Path) -> None:
    from w2vtk.checkpoint import load_checkpoint
    from w2vtk.model import model_from_checkpoint

    model_from_checkpoint(load_checkpoint(path), path)


def _kenlm(path: Path) -> None:
    from w2vtk.lm import arpa_unigrams, load_kenlm

    model = load_kenlm(path)
    model.score("THE CAT", bos=True, eos=True)
    arpa_unigrams(path)


READERS = {"audio": _audio, "checkpoint": _checkpoint, "kenlm": _kenlm}


def main(kind: str, seed: int, count: int, workdir: Path, seeds: list[Path]) -> None:
    from w2vtk.errors import W2vtkError

    reader = READERS[kind]
    rng = np.random.default_rng(seed)
    originals = [p.read_bytes() for p in seeds]
    workdir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if i < count // 10:  # pure noise, with a real file's first bytes half of the time
            data = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
            if i % 2:
                data = originals[i % len(originals)][:int(rng.integers(4, 64))] + data
        else:
            data = originals[i % len(originals)]
            for _ in range(int(rng.integers(1, 4))):
                data = mutate(data, rng)
        path = workdir / f"{i:04d}{seeds[i % len(seeds)].suffix}"
        path.write_bytes(data)
        print(f"TRY {path}", flush=True)
        try:
            reader(path)
        except W2vtkError as e:
            if "\n" in str(e):
                print(f"FAIL {path} multi-line message: {str(e)!r}", flush=True)
        except BaseException as e:  # noqa: BLE001 - what the fuzzer is looking for
            tb = traceback.format_exception(e)[-3:]
            print(f"FAIL {path} {type(e).__name__}: {str(e)[:300]!r} {''.join(tb)!r}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), [Path(p) for p in sys.argv[5:]])
