"""What the synthetic corpora share: the sentence list, speakers, the work pool, and publishing
finished folders into OUT_DIR."""
from __future__ import annotations

import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from w2vtk.synth.espeak import ACCENTS, VARIANTS

SENTENCES_FILE = Path(__file__).parent.parent / "data" / "harvard_sentences.txt"
PITCH_RANGE = (35, 65)  # espeak-ng -p, 0..99
SPEED_RANGE = (145, 180)  # espeak-ng -s, words per minute
PITCH_JITTER, SPEED_JITTER = 5, 8


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


def make_speakers(ids_and_genders: Sequence[tuple[str, str]], rng: random.Random) -> list[Speaker]:
    """One speaker per (id, gender), each on a different accent+variant while there are enough."""
    combos = {g: [f"{a}+{v}" for a in ACCENTS for v in VARIANTS[g]] for g in VARIANTS}
    for g in combos:
        rng.shuffle(combos[g])
    used = {g: 0 for g in combos}
    speakers = []
    for sid, gender in ids_and_genders:
        voice = combos[gender][used[gender] % len(combos[gender])]
        used[gender] += 1
        speakers.append(Speaker(sid, gender, voice, rng.randint(*PITCH_RANGE), rng.randint(*SPEED_RANGE)))
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

    def table(self) -> str:
        lines = [f"{'subset':<18}{'files':>7}{'minutes':>9}{'speakers':>10}"]
        lines += [f"{name:<18}{files:>7}{minutes:>9.2f}{speakers:>10}" for name, files, minutes, speakers in self.rows]
        lines.append(f"written to {self.out_dir}")
        return "\n".join(lines)

