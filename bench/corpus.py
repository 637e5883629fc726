"""The benchmarks' data: a synthesized LibriSpeech corpus, its word 4-gram, letter 6-gram and lexicon,
speech cut to fixed lengths.

Everything is built once under a cache directory (bench/.cache by default) and reused; a `.done`
marker closes each finished piece, so an interrupted build is redone rather than half-used.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
SYNTH_SEED = 1


def _done(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def synth_corpus(cache: Path, train_minutes: float = 4.0, test_minutes: float = 3.0) -> Path:
    """A LibriSpeech-layout corpus (train-clean-100, test-clean) and its lm-text.txt, under `cache`."""
    from w2vtk.synth import synth_librispeech

    root = cache / f"corpus-{train_minutes:g}-{test_minutes:g}"
    if not _done(root).exists():
        shutil.rmtree(root, ignore_errors=True)
        log.info("synthesizing the benchmark corpus in %s", root)
        synth_librispeech(root, train_minutes=train_minutes, dev_minutes=0, test_minutes=test_minutes,
                          speakers=4, eval_speakers=2, seed=SYNTH_SEED, jobs=2)
        _done(root).touch()
    return root


def four_gram(cache: Path, corpus: Path) -> Path:
    """A 4-gram ARPA trained by `w2vtk lm train` on the corpus' lm-text.txt."""
    from w2vtk.lm import train_lm

    arpa = cache / f"{corpus.name}-4gram.arpa"
    if not _done(arpa).exists():
        train_lm(corpus / "lm-text.txt", arpa, order=4)
        _done(arpa).touch()
    return arpa


def letter_lm(cache: Path, corpus: Path, order: int = 6) -> Path:
    """A letter n-gram (`T H E | C A T |`) of the corpus' lm-text.txt, for the lexicon-free flashlight search."""
    from w2vtk.lm import train_lm

    arpa = cache / f"{corpus.name}-letters-{order}gram.arpa"
    if not _done(arpa).exists():
        train_lm(corpus / "lm-text.txt", arpa, order=order, letters=True)
        _done(arpa).touch()
    return arpa


def lexicon(cache: Path, corpus: Path) -> Path:
    """The letter lexicon (`WORD<TAB>W O R D |`) of every word of the corpus' 4-gram."""
    from w2vtk.lm import write_lexicon

    path = cache / f"{corpus.name}-lexicon.txt"
    if not _done(path).exists():
        write_lexicon(four_gram(cache, corpus), path)
        _done(path).touch()
    return path


def subset_files(corpus: Path, subset: str) -> list[Path]:
    return sorted((corpus / "LibriSpeech" / subset).rglob("*.flac"))


def transcripts(corpus: Path, subset: str) -> dict[str, str]:
    """utterance id -> upper-case transcript, from the subset's *.trans.txt files."""
    out = {}
    for trans in sorted((corpus / "LibriSpeech" / subset).rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.partition(" ")
            if text:
                out[utt] = text.strip()
    return out


def speech_segments(corpus: Path, count: int, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """(count, seconds * rate) float32: the training subset's utterances end to end, cut into equal
    pieces (real speech at every sample, no padding)."""
    from w2vtk.audio import read_audio

    size = int(seconds * sample_rate)
    need = count * size
    pieces, total = [], 0
    for path in subset_files(corpus, "train-clean-100"):
        wav = read_audio(path)
        pieces.append(wav)
        total += len(wav)
        if total >= need:
            break
    if total < need:
        raise RuntimeError(f"{corpus}: {total / sample_rate:.0f} s of training audio, {need / sample_rate:.0f} "
                           "s needed; synthesize more train minutes")
    return np.concatenate(pieces)[:need].reshape(count, size).copy()


def prepare_corpus(cache: Path, corpus: Path, copies: int) -> Path:
    """A LibriSpeech layout holding `copies` copies of every corpus file (distinct files on disk, each
    copy its own chapter), for timing manifest scans over thousands of files."""
    root = cache / f"prepare-{corpus.name}-x{copies}"
    if _done(root).exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    src = corpus / "LibriSpeech"
    for subset_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for chapter in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
            speaker = chapter.parent.name
            for c in range(copies):
                new_chapter = f"{int(chapter.name) * 100 + c}"
                dst = root / "LibriSpeech" / subset_dir.name / speaker / new_chapter
                dst.mkdir(parents=True)
                for f in sorted(chapter.iterdir()):
                    name = f.name.replace(f"{speaker}-{chapter.name}", f"{speaker}-{new_chapter}")
                    if f.name.endswith(".trans.txt"):
                        text = f.read_text(encoding="utf-8").replace(f"{speaker}-{chapter.name}-",
                                                                     f"{speaker}-{new_chapter}-")
                        (dst / name).write_text(text, encoding="utf-8")
                    else:
                        shutil.copyfile(f, dst / name)
    _done(root).touch()
    return root
