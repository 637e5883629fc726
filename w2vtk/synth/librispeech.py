"""A synthetic LibriSpeech: LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac with
per-chapter <speaker>-<chapter>.trans.txt, SPEAKERS.TXT, and lm-text.txt (the n-gram training text).

As in LibriSpeech, dev and test read sentences that no training utterance reads and that the LM text
leaves out (w2vtk.synth.texts)."""
from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vtk.audio import SAMPLE_RATE, audio_info
from w2vtk.corpora.librilight import LIBRILIGHT_DIR, SPLITS
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.synth.common import (RecordingStyle, Speaker, Staging, SynthSummary, VoiceStyle, make_speakers,
                                pool_map)
from w2vtk.synth.espeak import check_tools, synthesize
from w2vtk.synth.texts import WORDS_RANGE, oov_rate, split_sentences
from w2vtk.text import normalize_sentence

UTTERANCES_PER_CHAPTER = 25
OTHER_SNR_DB = (15.0, 25.0)  # the -other subsets' extra white noise


@dataclass(frozen=True)
class _LibriUtterance:
    speaker: Speaker
    text: str
    pitch: int
    speed: int
    gain_db: float
    noise_seed: int | None  # white noise at snr_db
    snr_db: float
    bits: int


def _speakable(sentence: str) -> str:
    # espeak-ng spells out some all-capital words letter by letter ("LORD"); the transcript keeps the word.
    return re.sub(r"\b[A-Z]{2,}\b", lambda m: m.group(0).capitalize(), sentence)


def _render_libri(u: _LibriUtterance) -> np.ndarray:
    """The utterance's samples: (samples,) float32 in [-1, 1)."""
    wav = synthesize(_speakable(u.text), u.speaker.voice, u.pitch, u.speed) * np.float32(10 ** (u.gain_db / 20))
    if u.noise_seed is not None:
        rng = np.random.default_rng(u.noise_seed)
        noise = rng.standard_normal(len(wav)).astype(np.float32)
        noise *= np.sqrt(np.mean(wav ** 2) / 10 ** (u.snr_db / 10))
        wav = wav + noise
    wav = np.clip(wav, -1, 32767 / 32768)
    if u.bits < 16:
        step = 2.0 ** (1 - u.bits)
        wav = np.clip(np.round(wav / step) * step, -1, 1 - step).astype(np.float32)
    return wav


def synth_librispeech(out_dir: str | Path, train_minutes: float = 30, dev_minutes: float = 5,
                      test_minutes: float = 5, speakers: int = 8, eval_speakers: int = 3, other: bool = False,
                      seed: int = 1, jobs: int = 1, librilight_minutes: float = 0,
                      sources: tuple[str, ...] = ("harvard",), eval_sentences: int = 100,
                      words: tuple[int, int] = WORDS_RANGE, voices: VoiceStyle = VoiceStyle(),
                      recording: RecordingStyle = RecordingStyle()) -> SynthSummary:
    """Write OUT_DIR/LibriSpeech/{train-clean-100,dev-clean,test-clean[,dev-other,test-other]} and
    OUT_DIR/lm-text.txt (the n-gram training text: every sentence of `sources` but the dev and test
    ones, normalised).

    Each subset gets distinct speakers (`speakers` for training, `eval_speakers` for each
    evaluation subset) and utterances until it holds the requested minutes of audio. Dev and test
    each read their own `eval_sentences` sentences, which training never reads (the -other subsets
    share them with their -clean twins). The other subsets add white noise and wider pitch/speed
    jitter. A subset with 0 minutes is not written. `librilight_minutes` > 0 also writes
    OUT_DIR/librispeech_finetuning/1h/0/clean: Libri-light's 10-minute split (train-10m) in its
    layout, that many minutes of train-clean-100's utterances taken from every speaker in turn (the
    real split too is a part of LibriSpeech's training audio).
    """
    check_tools()
    if speakers < 1 or eval_speakers < 1:
        raise W2vtkError("--speakers and --eval-speakers must be at least 1")
    if librilight_minutes > train_minutes:
        raise W2vtkError(f"--librilight-minutes {librilight_minutes:g} takes its utterances from train-clean-100: "
                         f"give --train-minutes of at least as much (now {train_minutes:g})")
    out_dir = Path(out_dir)
    split = split_sentences(list(sources), eval_sentences, seed, words)
    reads = {"train-clean-100": split.train, "dev-clean": split.dev, "test-clean": split.test,
             "dev-other": split.dev, "test-other": split.test}
    targets = [("train-clean-100", train_minutes, speakers), ("dev-clean", dev_minutes, eval_speakers),
               ("test-clean", test_minutes, eval_speakers)]
    if other:
        targets += [("dev-other", dev_minutes, eval_speakers), ("test-other", test_minutes, eval_speakers)]
    rng = random.Random(seed)
    total = sum(n for _, _, n in targets)
    ids = sorted(rng.sample(range(10, 10000), total))
    rng.shuffle(ids)
    genders = ["F" if i % 2 else "M" for i in range(total)]
    everyone = make_speakers([(str(i), g) for i, g in zip(ids, genders)], rng, voices)
    lm_text = [normalize_sentence(s) for s in split.train]
    vocabulary = {w for line in lm_text for w in line.split()}
    rows, speaker_lines, oov = [], [], {}
    with Staging(out_dir) as staging:
        at = 0
        for name, minutes, n in targets:
            group = everyone[at:at + n]
            at += n
            if minutes <= 0:
                continue
            seconds = _write_libri_subset(staging.path / "LibriSpeech" / name, name, group, reads[name],
                                          minutes, seed, jobs, recording)
            rows.append((name, sum(n for n, _ in seconds.values()), sum(t for _, t in seconds.values()) / 60,
                         len(seconds)))
            speaker_lines += [(int(spk.id), spk, name, seconds[spk.id][1] / 60) for spk in group if spk.id in seconds]
            if name != "train-clean-100":
                read = [line.split(" ", 1)[1] for f in (staging.path / "LibriSpeech" / name).glob("*/*/*.trans.txt")
                        for line in f.read_text(encoding="utf-8").splitlines()]
                oov[name] = oov_rate(read, vocabulary)
        subsets = [name for name, *_ in rows]
        if librilight_minutes > 0:
            split_10m = _write_librilight_split(staging.path / "LibriSpeech" / "train-clean-100",
                                                staging.path / LIBRILIGHT_10M, librilight_minutes)
            rows.append(("librilight 1h/0", *split_10m))
            staging.publish(LIBRILIGHT_DIR)
        for name in subsets:
            staging.publish(f"LibriSpeech/{name}")
    header = ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
    atomic_write_text(out_dir / "LibriSpeech" / "SPEAKERS.TXT", header + "".join(
        f"{i:<5}| {s.gender} | {name:<16} | {mins:5.2f} | espeak-ng {s.voice} pitch {s.pitch} speed {s.speed}\n"
        for i, s, name, mins in sorted(speaker_lines, key=lambda x: x[0])))
    atomic_write_text(out_dir / "lm-text.txt", "".join(line + "\n" for line in lm_text))
    return SynthSummary(out_dir, rows, oov)


LIBRILIGHT_10M = f"{LIBRILIGHT_DIR}/{SPLITS['train-10m'][0]}/clean"


def _write_librilight_split(subset_dir: Path, out: Path, minutes: float) -> tuple[int, float, int]:
    """Copy utterances of `subset_dir`, each speaker's in turn, into `out` (same chapter layout, each
    chapter's transcript holding its copied lines) until `minutes`; (files, minutes, speakers)."""
    per_speaker = [sorted(spk.glob("*/*.flac")) for spk in sorted(subset_dir.iterdir())]
    turns = [f for k in range(max(map(len, per_speaker))) for files in per_speaker for f in files[k:k + 1]]
    target, total, chosen = minutes * 60 * SAMPLE_RATE, 0, []
    for flac in turns:
        if total >= target:
            break
        chosen.append(flac)
        total += audio_info(flac).num_samples
    if total < target:
        raise W2vtkError(f"--librilight-minutes {minutes:g} is more than train-clean-100 holds "
                         f"({total / SAMPLE_RATE / 60:.1f} min)")
    lines: dict[Path, list[str]] = {}
    for flac in chosen:
        chapter = flac.parent.relative_to(subset_dir)
        (out / chapter).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(flac, out / chapter / flac.name)
        lines.setdefault(chapter, []).append(flac.name[:-len(".flac")])
    for chapter, utts in lines.items():
        name = f"{chapter.parent.name}-{chapter.name}.trans.txt"
        source = dict(line.split(" ", 1) for line in (subset_dir / chapter / name).read_text().splitlines())
        (out / chapter / name).write_text("".join(f"{u} {source[u]}\n" for u in sorted(utts)), encoding="utf-8")
    return len(chosen), total / SAMPLE_RATE / 60, len({c.parent for c in lines})


def _write_libri_subset(subset_dir: Path, name: str, group: list[Speaker], sentences: list[str],
                        minutes: float, seed: int, jobs: int,
                        recording: RecordingStyle) -> dict[str, tuple[int, float]]:
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
        gain_db = r.uniform(*recording.gain_db)
        snr_range = OTHER_SNR_DB if noisy else recording.snr_db
        snr_db = r.uniform(*snr_range) if snr_range else 0.0
        return _LibriUtterance(spk, text, pitch, speed, gain_db, r.getrandbits(32) if snr_range else None, snr_db,
                               recording.bits)

    target = minutes * 60 * SAMPLE_RATE
    total, k, batch = 0, 0, max(8, 4 * jobs)
    per_speaker = [0] * len(group)
    seconds: dict[str, tuple[int, float]] = {}
    transcripts: dict[Path, list[str]] = {}
    progress = tqdm(total=round(minutes * 60), desc=name, unit="s", disable=None, leave=False)
    while total < target:
        planned = [plan(k + i) for i in range(batch)]
        for i, (u, wav) in enumerate(zip(planned, pool_map(_render_libri, planned, jobs))):
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
            # Plain writes: the whole folder is renamed into place once complete (see Staging).
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
