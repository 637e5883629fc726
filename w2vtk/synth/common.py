"""What the synthetic corpora share: the sentence list, speakers, the work pool, and publishing
finished folders into OUT_DIR."""
from __future__ import annotations

import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from w2vtk.errors import W2vtkError
from w2vtk.synth.espeak import ACCENTS, VARIANTS, variant_gender

SENTENCES_FILE = Path(__file__).parent.parent / "data" / "harvard_sentences.txt"
PITCH_RANGE = (35, 65)  # espeak-ng -p, 0..99
SPEED_RANGE = (145, 180)  # espeak-ng -s, words per minute
PITCH_JITTER, SPEED_JITTER = 5, 8


@dataclass(frozen=True)
class VoiceStyle:
    """Who speaks a synthetic corpus: espeak-ng accents and voice variants, and the ranges each
    speaker's own pitch (0-99) and speed (words per minute) are drawn from."""

    accents: tuple[str, ...] = tuple(ACCENTS)
    variants: tuple[str, ...] = tuple(VARIANTS["M"] + VARIANTS["F"])
    pitch: tuple[int, int] = PITCH_RANGE
    speed: tuple[int, int] = SPEED_RANGE

    def __post_init__(self):
        if not self.accents or not self.variants:
            raise W2vtkError("a voice style needs at least one accent and one variant")
        for name, (lo, hi), limits in (("pitch", self.pitch, (0, 99)), ("speed", self.speed, (80, 450))):
            if not limits[0] <= lo <= hi <= limits[1]:
                raise W2vtkError(f"--{name} {lo}-{hi}: give LOW-HIGH within {limits[0]}-{limits[1]}")


@dataclass(frozen=True)
class RecordingStyle:
    """How a synthetic corpus is recorded: a gain drawn per utterance from `gain_db`, a white-noise
    floor at an SNR drawn from `snr_db` (None: none), and samples quantised to `bits` bits."""

    gain_db: tuple[float, float] = (0.0, 0.0)
    snr_db: tuple[float, float] | None = None
    bits: int = 16

    def __post_init__(self):
        if not -40 <= self.gain_db[0] <= self.gain_db[1] <= 20:
            raise W2vtkError(f"--gain-db {self.gain_db[0]:g}:{self.gain_db[1]:g}: give LOW:HIGH within -40:20")
        if self.snr_db is not None and not 0 <= self.snr_db[0] <= self.snr_db[1]:
            raise W2vtkError(f"--snr-db {self.snr_db[0]:g}:{self.snr_db[1]:g}: give LOW:HIGH, both at least 0")
        if not 4 <= self.bits <= 16:
            raise W2vtkError(f"--bits {self.bits}: give 4-16")


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """The sentence list: one sentence per line, `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


@dataclass(frozen=True)
class Speaker:
    """An espeak-ng voice (`en-us+f2`) with its own pitch and speed."""

    id: str
    gender: str  # "M" or "F"
    voice: str
    pitch: int
    speed: int

    def jittered(self, rng: random.Random, wider: bool = False) -> tuple[int, int]:
        scale = 2 if wider else 1
        pitch = self.pitch + rng.randint(-PITCH_JITTER, PITCH_JITTER) * scale
        speed = self.speed + rng.randint(-SPEED_JITTER, SPEED_JITTER) * scale
        return min(max(pitch, 0), 99), max(speed, 80)


def make_speakers(ids_and_genders: Sequence[tuple[str, str]], rng: random.Random,
                  style: VoiceStyle = VoiceStyle()) -> list[Speaker]:
    """One speaker per (id, gender), each on a different accent+variant while there are enough; a
    gender the style has no variant of takes the other gender's variants."""
    by_gender = {g: [v for v in style.variants if variant_gender(v) == g] for g in ("M", "F")}
    combos = {g: [f"{a}+{v}" for a in style.accents for v in (by_gender[g] or list(style.variants))]
              for g in by_gender}
    for g in combos:
        rng.shuffle(combos[g])
    used = {g: 0 for g in combos}
    speakers = []
    for sid, gender in ids_and_genders:
        voice = combos[gender][used[gender] % len(combos[gender])]
        used[gender] += 1
        speakers.append(Speaker(sid, gender, voice, rng.randint(*style.pitch), rng.randint(*style.speed)))
    return speakers


def pool_map(fn: Callable, items: Sequence, jobs: int) -> list:
    # Threads suffice: the work happens in the espeak-ng and sox processes each item starts.
    if jobs <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


class Staging:
    """A scratch folder inside OUT_DIR; finished corpus folders are renamed into place, so an
    interrupted run leaves the previous output untouched and a re-run leaves no stale files."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.path = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, relative: str) -> None:
        """Replace OUT_DIR/relative by the staged folder of the same name."""
        src, dst = self.path / relative, self.out_dir / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if dst.exists():
            old = self.path / f".old-{dst.name}"
            dst.rename(old)
        src.rename(dst)
        if old is not None:
            shutil.rmtree(old)


@dataclass(frozen=True)
class SynthSummary:
    out_dir: Path
    rows: list[tuple[str, int, float, int]]  # (subset, files, minutes, speakers)
    oov: dict[str, float] = field(default_factory=dict)  # subset -> % of its words missing from the LM text

    def table(self) -> str:
        lines = [f"{'subset':<18}{'files':>7}{'minutes':>9}{'speakers':>10}"]
        lines += [f"{name:<18}{files:>7}{minutes:>9.2f}{speakers:>10}" for name, files, minutes, speakers in self.rows]
        if self.oov:
            lines.append("out-of-vocabulary words against lm-text.txt: " +
                         ", ".join(f"{name} {rate:.1f}%" for name, rate in self.oov.items()))
        lines.append(f"written to {self.out_dir}")
        return "\n".join(lines)

