"""Small corpora synthesized with espeak-ng, in the exact disc layouts of LibriSpeech and TIMIT.

The text is the Harvard sentences (IEEE 1969, public domain; w2vtk/data/). Speakers are espeak-ng
voices (accents x male/female variants) with their own pitch and speed, jittered per utterance;
training and evaluation subsets use different speakers, but may share sentences, so that a small
model and an n-gram trained on `lm-text.txt` can do well on dev/test within minutes on a CPU.

Audio: `espeak-ng --stdout` (22.05 kHz), resampled to 16 kHz by `sox -R` (repeatable, no dither),
so a run is byte-identical for the same options and --seed, whatever --jobs is.

TIMIT's .PHN labels map espeak-ng's IPA output to TIMIT's 61 phones, with closures before stops
and h# at both ends. espeak-ng does not report phone timings, so boundaries are approximate: the
speech between the leading and trailing silences is shared out in proportion to typical phone
durations, with pauses placed on the silent gaps that espeak-ng leaves at commas.
"""
from __future__ import annotations

import logging
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vtk.audio import SAMPLE_RATE
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.text import normalize_sentence

log = logging.getLogger(__name__)
SENTENCES_FILE = Path(__file__).parent / "data" / "harvard_sentences.txt"

# espeak-ng's English accents; each speaker is one of these with a voice variant.
ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc"]
VARIANTS = {"M": [f"m{i}" for i in range(1, 8)], "F": [f"f{i}" for i in range(1, 5)]}
PITCH_RANGE = (35, 65)  # espeak-ng -p, 0..99
SPEED_RANGE = (145, 180)  # espeak-ng -s, words per minute
PITCH_JITTER, SPEED_JITTER = 5, 8


class SynthError(W2vtkError):
    """espeak-ng or sox is missing or failed."""


# --- text ------------------------------------------------------------------------------------
def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """The sentence list: one sentence per line, `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


# --- espeak-ng and sox -----------------------------------------------------------------------
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


# --- IPA -> TIMIT 61 phones ------------------------------------------------------------------
# espeak-ng's English IPA (all accents above) -> TIMIT phones. Stress marks are removed and ":" is
# read as the length mark before the lookup; an r-coloured vowel written with a final ɹ is looked
# up without it and followed by r.
_IPA_TO_TIMIT = {
    "p": ["p"], "b": ["b"], "t": ["t"], "t̪": ["t"], "d": ["d"], "k": ["k"], "ɡ": ["g"], "g": ["g"],
    "f": ["f"], "v": ["v"], "θ": ["th"], "ð": ["dh"], "s": ["s"], "z": ["z"], "ʃ": ["sh"], "ʒ": ["zh"],
    "h": ["hh"], "x": ["k"], "ç": ["hh"], "tʃ": ["ch"], "dʒ": ["jh"], "m": ["m"], "n": ["n"], "ŋ": ["ng"],
    "n̩": ["en"], "l": ["l"], "ɫ": ["l"], "əl": ["el"], "ɹ": ["r"], "r": ["r"], "w": ["w"], "ʍ": ["w"],
    "j": ["y"], "ɾ": ["dx"], "ʔ": ["q"],
    "ə": ["ax"], "ɐ": ["ax"], "ɪ": ["ih"], "ᵻ": ["ix"], "i": ["iy"], "iː": ["iy"], "ɛ": ["eh"],
    "e": ["eh"], "eː": ["ey"], "ei": ["ey"], "eɪ": ["ey"], "eʲ": ["ey"], "æ": ["ae"], "a": ["ae"],
    "aa": ["ae"], "aː": ["aa"], "ɑ": ["aa"], "ɑː": ["aa"], "ɒ": ["aa"], "ɔ": ["ao"], "ɔː": ["ao"],
    "o": ["ow"], "oː": ["ow"], "ʌ": ["ah"], "ʊ": ["uh"], "u": ["uw"], "uː": ["uw"], "ʉ": ["ux"],
    "ʉː": ["ux"], "ɜ": ["er"], "ɜː": ["er"], "ɚ": ["axr"], "aɪ": ["ay"], "əɪ": ["ay"], "ɑɪ": ["ay"],
    "aʊ": ["aw"], "æʊ": ["aw"], "ʌʉ": ["aw"], "oʊ": ["ow"], "əʊ": ["ow"], "əu": ["ow"], "ʌʊ": ["ow"],
    "ɔɪ": ["oy"], "oɪ": ["oy"], "eə": ["eh"], "ɛə": ["eh"], "iə": ["ih", "ax"], "ʊə": ["uh", "ax"],
    "ɑə": ["aa"], "oə": ["ao"], "ɔə": ["ao"], "aɪə": ["ay", "ax"], "aɪɚ": ["ay", "axr"],
    "ʌɹ": ["er"], "əɹ": ["axr"],
}
_CLOSURES = {"p": "pcl", "t": "tcl", "k": "kcl", "b": "bcl", "d": "dcl", "g": "gcl", "ch": "tcl", "jh": "dcl"}


def ipa_to_timit(phoneme: str) -> list[str]:
    """One espeak-ng IPA phoneme -> TIMIT 61-set phones (closures not yet added)."""
    key = phoneme.replace("ˈ", "").replace("ˌ", "").replace(":", "ː")
    if key in _IPA_TO_TIMIT:
        return list(_IPA_TO_TIMIT[key])
    if len(key) > 1 and key.endswith("ɹ") and key[:-1] in _IPA_TO_TIMIT:
        return _IPA_TO_TIMIT[key[:-1]] + ["r"]
    raise SynthError(f"no TIMIT phone for espeak-ng phoneme {phoneme!r}; add it to w2vtk.synth._IPA_TO_TIMIT")


def with_closures(phones: Sequence[str]) -> list[str]:
    """Insert TIMIT's closure before every stop and affricate (`t` -> `tcl t`)."""
    out = []
    for p in phones:
        if p in _CLOSURES:
            out.append(_CLOSURES[p])
        out.append(p)
    return out


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def assign_words(groups: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
                 ) -> list[tuple[list[str], int]]:
    """Split espeak-ng's word groups into one phone list per word: [(phones, index of the group
    the word starts in)].

    espeak-ng joins unstressed words to their neighbours (`on the` -> one group); `references`
    are the words' phones said alone. Groups are aligned to runs of 1-3 words (or two groups to
    one word) by edit distance, and joined groups cut where the pieces best match the references.
    """
    m, n = len(groups), len(references)
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(m + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (n + 1) for _ in range(m + 1)]
    cost[0][0] = 0
    for i in range(m + 1):
        for j in range(n + 1):
            if cost[i][j] == inf:
                continue
            for di, dj in ((1, 1), (1, 2), (1, 3), (2, 1)):
                if i + di > m or j + dj > n:
                    continue
                g = [p for grp in groups[i:i + di] for p in grp]
                r = [p for ref in references[j:j + dj] for p in ref]
                c = cost[i][j] + _edit_distance(g, r) + (dj > 1 or di > 1) * 0.5
                if c < cost[i + di][j + dj]:
                    cost[i + di][j + dj], back[i + di][j + dj] = c, (di, dj)
    if cost[m][n] == inf:
        raise SynthError(f"cannot match {m} espeak-ng word groups to {n} words")
    spans = []
    i, j = m, n
    while i or j:
        di, dj = back[i][j]
        spans.append((i - di, i, j - dj, j))
        i, j = i - di, j - dj
    words: list[tuple[list[str], int]] = []
    for gi, gj, wi, wj in reversed(spans):
        phones = [p for grp in groups[gi:gj] for p in grp]
        words.extend((piece, gi) for piece in _cut(phones, references[wi:wj]))
    return words


def _cut(phones: list[str], refs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Cut `phones` into len(refs) pieces that best match `refs` (non-empty while phones last)."""
    k = len(refs)
    if k == 1:
        return [phones]
    if len(phones) < k:
        return [phones[i:i + 1] for i in range(k)]
    best, best_cuts = float("inf"), None
    for cuts in combinations(range(1, len(phones)), k - 1):
        bounds = [0, *cuts, len(phones)]
        c = sum(_edit_distance(phones[bounds[t]:bounds[t + 1]], refs[t]) for t in range(k))
        if c < best:
            best, best_cuts = c, bounds
    return [phones[best_cuts[t]:best_cuts[t + 1]] for t in range(k)]


# --- timing ----------------------------------------------------------------------------------
# Relative durations used to share out the speech (TIMIT averages, roughly).
_WEIGHTS = {"pcl": 0.5, "tcl": 0.5, "kcl": 0.5, "bcl": 0.5, "dcl": 0.5, "gcl": 0.5,
            "p": 0.35, "t": 0.35, "k": 0.4, "b": 0.3, "d": 0.3, "g": 0.35, "dx": 0.3, "q": 0.3,
            "ch": 0.8, "jh": 0.7, "s": 0.9, "z": 0.8, "sh": 0.9, "zh": 0.7, "f": 0.8, "v": 0.55,
            "th": 0.7, "dh": 0.45, "hh": 0.6, "m": 0.65, "n": 0.6, "ng": 0.6, "en": 0.7, "l": 0.6,
            "el": 0.8, "r": 0.55, "w": 0.55, "y": 0.5, "ax": 0.55, "ix": 0.55, "axr": 0.7,
            "ay": 1.4, "aw": 1.4, "oy": 1.4, "ey": 1.3, "ow": 1.3, "er": 1.1, "pau": 2.0}
_FRAME = SAMPLE_RATE // 100  # 10 ms


def _silent_frames(wav: np.ndarray) -> np.ndarray:
    frames = len(wav) // _FRAME
    rms = np.sqrt(np.mean(wav[:frames * _FRAME].reshape(frames, _FRAME) ** 2, axis=1) + 1e-12)
    return rms < max(rms.max() * 10 ** (-35 / 20), 1e-4)


def _speech_span(silent: np.ndarray) -> tuple[int, int]:
    voiced = np.flatnonzero(~silent)
    if voiced.size == 0:
        return 1, len(silent) - 1
    return max(int(voiced[0]), 1), min(int(voiced[-1]) + 1, len(silent) - 1)


def _gaps(silent: np.ndarray, start: int, end: int, min_frames: int = 8) -> list[tuple[int, int]]:
    """Runs of >= min_frames silent frames strictly inside [start, end)."""
    gaps, run = [], None
    for f in range(start, end):
        if silent[f] and run is None:
            run = f
        elif not silent[f] and run is not None:
            if f - run >= min_frames:
                gaps.append((run, f))
            run = None
    return gaps


def _share(phones: Sequence[str], start: int, end: int) -> list[int]:
    """Boundaries (len(phones) + 1 sample indices) sharing [start, end) by phone weights."""
    w = np.array([_WEIGHTS.get(p, 1.0) for p in phones])
    edges = start + np.concatenate([[0], np.cumsum(w)]) / w.sum() * (end - start)
    return [int(round(e)) for e in edges]


def align(clauses: Sequence[Sequence[Sequence[str]]], wav: np.ndarray
          ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """Approximate sample boundaries. clauses -> words -> TIMIT phones (closures included).

    Returns the .PHN rows (start, end, phone), h# at both ends and `pau` between clauses, and
    one (start, end) per word.
    """
    silent = _silent_frames(wav)
    first, last = _speech_span(silent)
    start, end = first * _FRAME, min(last * _FRAME, len(wav) - 1)
    gaps = _gaps(silent, first, last)
    # The chunk of audio each clause gets: pinned to the silent gaps when there is one per pause.
    if len(clauses) > 1 and len(gaps) >= len(clauses) - 1:
        longest = sorted(sorted(gaps, key=lambda g: g[0] - g[1])[:len(clauses) - 1])
        chunks, pauses, at = [], [], start
        for a, b in longest:
            chunks.append((at, a * _FRAME))
            pauses.append((a * _FRAME, b * _FRAME))
            at = b * _FRAME
        chunks.append((at, end))
    else:
        weights = [sum(_WEIGHTS.get(p, 1.0) for w in c for p in w) for c in clauses]
        total = sum(weights) + _WEIGHTS["pau"] * (len(clauses) - 1)
        chunks, pauses, at = [], [], float(start)
        for i, wgt in enumerate(weights):
            nxt = at + wgt / total * (end - start)
            chunks.append((int(round(at)), int(round(nxt))))
            if i < len(clauses) - 1:
                after = nxt + _WEIGHTS["pau"] / total * (end - start)
                pauses.append((int(round(nxt)), int(round(after))))
                nxt = after
            at = nxt
    rows = [(0, start, "h#")]
    word_spans = []
    for i, (clause, (a, b)) in enumerate(zip(clauses, chunks)):
        phones = [p for w in clause for p in w]
        edges = _share(phones, a, b)
        k = 0
        for w in clause:
            word_spans.append((edges[k], edges[k + len(w)]))
            for p in w:
                rows.append((edges[k], edges[k + 1], p))
                k += 1
        if i < len(pauses):
            rows.append((pauses[i][0], pauses[i][1], "pau"))
    rows.append((end, len(wav), "h#"))
    return rows, word_spans


# --- speakers and the work pool --------------------------------------------------------------
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


def _pool_map(fn: Callable, items: Sequence, jobs: int) -> list:
    # Threads suffice: the work happens in the espeak-ng and sox processes each item starts.
    if jobs <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


class _Staging:
    """A scratch folder inside OUT_DIR; finished corpus folders are renamed into place, so an
    interrupted run leaves the previous output untouched and a re-run leaves no stale files."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.path = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))

    def __enter__(self) -> "_Staging":
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


# --- LibriSpeech -----------------------------------------------------------------------------
UTTERANCES_PER_CHAPTER = 25


@dataclass(frozen=True)
class _LibriUtterance:
    speaker: Speaker
    text: str
    pitch: int
    speed: int
    noise_seed: int | None  # "other" subsets: white noise at 15-25 dB SNR


def _render_libri(u: _LibriUtterance) -> np.ndarray:
    wav = synthesize(u.text, u.speaker.voice, u.pitch, u.speed)
    if u.noise_seed is not None:
        rng = np.random.default_rng(u.noise_seed)
        snr_db = rng.uniform(15, 25)
        noise = rng.standard_normal(len(wav)).astype(np.float32)
        noise *= np.sqrt(np.mean(wav ** 2) / 10 ** (snr_db / 10))
        wav = np.clip(wav + noise, -1, 32767 / 32768)
    return wav


def synth_librispeech(out_dir: str | Path, train_minutes: float = 30, dev_minutes: float = 5,
                      test_minutes: float = 5, speakers: int = 8, eval_speakers: int = 3, other: bool = False,
                      seed: int = 1, jobs: int = 1) -> SynthSummary:
    """Write OUT_DIR/LibriSpeech/{train-clean-100,dev-clean,test-clean[,dev-other,test-other]} and
    OUT_DIR/lm-text.txt (every sentence of the list, normalised: the n-gram training text).

    Each subset gets distinct speakers (`speakers` for training, `eval_speakers` for each
    evaluation subset) and utterances until it holds the requested minutes of audio. The other
    subsets add white noise and wider pitch/speed jitter. A subset with 0 minutes is not written.
    """
    check_tools()
    if speakers < 1 or eval_speakers < 1:
        raise W2vtkError("--speakers and --eval-speakers must be at least 1")
    out_dir = Path(out_dir)
    sentences = load_sentences()
    targets = [("train-clean-100", train_minutes, speakers), ("dev-clean", dev_minutes, eval_speakers),
               ("test-clean", test_minutes, eval_speakers)]
    if other:
        targets += [("dev-other", dev_minutes, eval_speakers), ("test-other", test_minutes, eval_speakers)]
    rng = random.Random(seed)
    total = sum(n for _, _, n in targets)
    ids = sorted(rng.sample(range(10, 10000), total))
    rng.shuffle(ids)
    genders = ["F" if i % 2 else "M" for i in range(total)]
    everyone = make_speakers([(str(i), g) for i, g in zip(ids, genders)], rng)
    rows, speaker_lines = [], []
    with _Staging(out_dir) as staging:
        at = 0
        for name, minutes, n in targets:
            group = everyone[at:at + n]
            at += n
            if minutes <= 0:
                continue
            seconds = _write_libri_subset(staging.path / "LibriSpeech" / name, name, group, sentences,
                                          minutes, seed, jobs)
            rows.append((name, sum(n for n, _ in seconds.values()), sum(t for _, t in seconds.values()) / 60,
                         len(seconds)))
            speaker_lines += [(int(spk.id), spk, name, seconds[spk.id][1] / 60) for spk in group if spk.id in seconds]
        for name, *_ in rows:
            staging.publish(f"LibriSpeech/{name}")
    header = ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
    atomic_write_text(out_dir / "LibriSpeech" / "SPEAKERS.TXT", header + "".join(
        f"{i:<5}| {s.gender} | {name:<16} | {mins:5.2f} | espeak-ng {s.voice} pitch {s.pitch} speed {s.speed}\n"
        for i, s, name, mins in sorted(speaker_lines, key=lambda x: x[0])))
    atomic_write_text(out_dir / "lm-text.txt", "".join(normalize_sentence(s) + "\n" for s in sentences))
    return SynthSummary(out_dir, rows)


def _write_libri_subset(subset_dir: Path, name: str, group: list[Speaker], sentences: list[str],
                        minutes: float, seed: int, jobs: int) -> dict[str, tuple[int, float]]:
    """Synthesize utterances until `minutes` of audio; {speaker id: (files, seconds)}."""
    noisy = name.endswith("-other")
    # Each speaker reads the sentence list in an order of their own; chapters are runs of 25.
    orders = []
    chapter_ids = []
    for spk in group:
        r = random.Random(f"{seed}/{name}/{spk.id}")
        order = list(range(len(sentences)))
        r.shuffle(order)
        orders.append(order)
        chapter_ids.append(sorted(r.sample(range(1000, 200000), 40)))

    def plan(k: int) -> _LibriUtterance:
        spk_i, turn = k % len(group), k // len(group)
        spk = group[spk_i]
        r = random.Random(f"{seed}/{name}/{k}")
        pitch, speed = spk.jittered(r, wider=noisy)
        text = sentences[orders[spk_i][turn % len(sentences)]]
        return _LibriUtterance(spk, text, pitch, speed, r.getrandbits(32) if noisy else None)

    target = minutes * 60 * SAMPLE_RATE
    total, k, batch = 0, 0, max(8, 4 * jobs)
    per_speaker = [0] * len(group)
    seconds: dict[str, tuple[int, float]] = {}
    transcripts: dict[Path, list[str]] = {}
    progress = tqdm(total=round(minutes * 60), desc=name, unit="s", disable=None, leave=False)
    while total < target:
        planned = [plan(k + i) for i in range(batch)]
        for i, (u, wav) in enumerate(zip(planned, _pool_map(_render_libri, planned, jobs))):
            if total >= target:
                break
            spk_i = (k + i) % len(group)
            n = per_speaker[spk_i]
            per_speaker[spk_i] += 1
            if n // UTTERANCES_PER_CHAPTER >= len(chapter_ids[spk_i]):
                raise W2vtkError(f"{name}: too many minutes for {len(group)} speakers; add --speakers")
            chapter = chapter_ids[spk_i][n // UTTERANCES_PER_CHAPTER]
            utt = f"{u.speaker.id}-{chapter}-{n % UTTERANCES_PER_CHAPTER:04d}"
            chapter_dir = subset_dir / u.speaker.id / str(chapter)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            # Plain writes: the whole folder is renamed into place once complete (see _Staging).
            sf.write(chapter_dir / f"{utt}.flac", wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            transcripts.setdefault(chapter_dir / f"{u.speaker.id}-{chapter}.trans.txt", []).append(
                f"{utt} {normalize_sentence(u.text)}")
            total += len(wav)
            files, secs = seconds.get(u.speaker.id, (0, 0.0))
            seconds[u.speaker.id] = (files + 1, secs + len(wav) / SAMPLE_RATE)
            progress.update(len(wav) / SAMPLE_RATE)
        k += batch
    progress.close()
    for path, lines in transcripts.items():
        path.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    return seconds


# --- TIMIT -----------------------------------------------------------------------------------
SA_SENTENCES = ["She had your dark suit in greasy wash water all year.",
                "Don't ask me to carry an oily rag like that."]
# Speakers of TIMIT's TRAIN/DR1, for the training part of the synthetic disc.
TRAIN_SPEAKERS = (
    "fcjf0 fdaw0 fdml0 fecd0 fetb0 fjsp0 fkfb0 fmem0 fsah0 fsjk1 fsma0 fsrh0 fvfb0 fvmh0 mcpm0 mdac0 "
    "mdpk0 medr0 mgrl0 mjeb1 mjwt0 mkls0 mklw0 mmgg0 mmrp0 mpgh0 mpgr0 mpsw0 mrai0 mrcg0 mrdd0 mrso0 "
    "mrws0 mtjs0 mtpf0 mtrr0 mwad0 mwar0").split()
SX_POOL = 120  # sentences shared by several speakers, like TIMIT's SX set; the rest are read once (SI)


@dataclass(frozen=True)
class _TimitUtterance:
    speaker: Speaker
    directory: str  # e.g. TRAIN/DR1/FCJF0
    name: str  # e.g. SX213
    text: str
    pitch: int
    speed: int


def _timit_speakers(train: int, dev: int, test: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """(split, speaker, dialect region) for the requested numbers of speakers."""
    from w2vtk.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS

    if not 0 <= dev <= len(DEV_SPEAKERS) or not 0 <= test <= len(CORE_TEST_SPEAKERS):
        raise W2vtkError(f"--dev-speakers must be 1..{len(DEV_SPEAKERS)} and --test-speakers "
                         f"1..{len(CORE_TEST_SPEAKERS)} (TIMIT's dev and core-test lists)")
    if not 1 <= train <= len(TRAIN_SPEAKERS):
        raise W2vtkError(f"--train-speakers must be 1..{len(TRAIN_SPEAKERS)}")
    out = [("TRAIN", s, 1) for s in rng.sample(TRAIN_SPEAKERS, train)]
    out += [("TEST", s, 1 + i % 8) for i, s in enumerate(rng.sample(DEV_SPEAKERS, dev))]
    # The core test list is ordered by dialect region, three speakers each.
    out += [("TEST", s, 1 + CORE_TEST_SPEAKERS.index(s) // 3) for s in rng.sample(CORE_TEST_SPEAKERS, test)]
    return out


def _render_timit(u: _TimitUtterance, references: dict[str, dict[str, list[str]]]
                  ) -> tuple[np.ndarray, list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    wav = synthesize(u.text, u.speaker.voice, u.pitch, u.speed)
    words = normalize_sentence(u.text).lower().split()
    refs = [references[u.speaker.voice][w] for w in words]
    groups, clause_of = [], []
    for c, clause in enumerate(phonemize(u.text, u.speaker.voice)):
        for w in clause:
            groups.append([p for ph in w for p in ipa_to_timit(ph)])
            clause_of.append(c)
    # Words are matched over the whole sentence; a word belongs to the clause it starts in.
    clauses: dict[int, list[list[str]]] = {}
    for phones, g in assign_words(groups, refs):
        clauses.setdefault(clause_of[g], []).append(with_closures(phones))
    phn, spans = align([clauses[c] for c in sorted(clauses)], wav)
    wrd = [(a, b, w) for (a, b), w in zip(spans, words)]
    return wav, phn, wrd


def word_references(words: Sequence[str], voice: str) -> dict[str, list[str]]:
    """Each word said alone by `voice`, in TIMIT phones (used to split espeak-ng's joined words)."""
    clauses = phonemize("".join(f"{w}.\n" for w in words), voice)
    if len(clauses) != len(words):
        clauses = [c for w in words for c in phonemize(f"{w}.", voice)[:1]]
    return {w: [p for g in clause for ph in g for p in ipa_to_timit(ph)] for w, clause in zip(words, clauses)}


def synth_timit(out_dir: str | Path, train_speakers: int = 38, dev_speakers: int = 50, test_speakers: int = 24,
                si: int = 3, sx: int = 5, lowercase: bool = False, seed: int = 1, jobs: int = 1) -> SynthSummary:
    """Write OUT_DIR/TIMIT/{TRAIN,TEST}/DR<n>/<speaker>/{SA1,SA2,SI*,SX*}.{WAV,PHN,WRD,TXT}.

    .WAV is NIST SPHERE, 16 kHz 16-bit; speakers take their names from TIMIT's train, dev and
    core-test lists. `lowercase` writes the lower-case layout of some TIMIT copies.
    """
    check_tools()
    if si < 0 or sx < 0 or si + sx == 0:
        raise W2vtkError("--si and --sx must be >= 0, and not both 0")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    roster = _timit_speakers(train_speakers, dev_speakers, test_speakers, rng)
    speakers = make_speakers([(s, s[0].upper()) for _, s, _ in roster], rng)
    order = load_sentences()
    rng.shuffle(order)
    sx_pool, si_pool = order[:SX_POOL], order[SX_POOL:]
    plan: list[_TimitUtterance] = []
    for n, ((split, name, region), spk) in enumerate(zip(roster, speakers)):
        directory = f"{split}/DR{region}/{name.upper()}"
        texts = [(f"SA{i + 1}", t) for i, t in enumerate(SA_SENTENCES)]
        texts += [(f"SI{453 + (n * si + j) % len(si_pool)}", si_pool[(n * si + j) % len(si_pool)]) for j in range(si)]
        texts += [(f"SX{3 + (n * sx + j) % len(sx_pool)}", sx_pool[(n * sx + j) % len(sx_pool)]) for j in range(sx)]
        r = random.Random(f"{seed}/timit/{name}")
        for utt, text in texts:
            pitch, speed = spk.jittered(r)
            plan.append(_TimitUtterance(spk, directory, utt, text, pitch, speed))
    references = {}
    for voice in sorted({s.voice for s in speakers}):
        words = sorted({w for u in plan if u.speaker.voice == voice for w in normalize_sentence(u.text).lower().split()})
        references[voice] = word_references(words, voice)

    top = "timit" if lowercase else "TIMIT"
    case = str.lower if lowercase else str
    with _Staging(out_dir) as staging:
        progress = tqdm(total=len(plan), desc="TIMIT", unit="utt", disable=None, leave=False)

        def render(u: _TimitUtterance):
            out = _render_timit(u, references)
            progress.update(1)
            return out

        lengths = {}
        for u, (wav, phn, wrd) in zip(plan, _pool_map(render, plan, jobs)):
            lengths[u.directory, u.name] = len(wav)
            folder = staging.path / top / case(u.directory)
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / case(u.name)
            # Plain writes: the whole folder is renamed into place once complete (see _Staging).
            sf.write(f"{stem}{case('.WAV')}", wav, SAMPLE_RATE, format="NIST", subtype="PCM_16")
            Path(f"{stem}{case('.PHN')}").write_text("".join(f"{a} {b} {p}\n" for a, b, p in phn))
            Path(f"{stem}{case('.WRD')}").write_text("".join(f"{a} {b} {w}\n" for a, b, w in wrd))
            Path(f"{stem}{case('.TXT')}").write_text(f"0 {len(wav)} {u.text}\n")
        progress.close()
        staging.publish(top)
    from w2vtk.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS

    rows = []
    for label, members in (("TRAIN", TRAIN_SPEAKERS), ("TEST (dev)", DEV_SPEAKERS),
                           ("TEST (core)", CORE_TEST_SPEAKERS)):
        chosen = [u for u in plan if u.speaker.id in members]
        minutes = sum(lengths[u.directory, u.name] for u in chosen) / SAMPLE_RATE / 60
        rows.append((label, len(chosen), minutes, len({u.speaker.id for u in chosen})))
    return SynthSummary(out_dir, rows)
