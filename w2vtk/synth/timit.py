"""A synthetic TIMIT: TIMIT/{TRAIN,TEST}/DR<n>/<speaker>/<SA|SI|SX><n>.{WAV,PHN,WRD,TXT}.

.WAV is NIST SPHERE (16 kHz, 16-bit), .PHN holds TIMIT's 61 phones with approximate boundaries
(see w2vtk.synth.timit_phones), .WRD the words, .TXT `0 <samples> <sentence>`. Speakers are named
after TIMIT's own: TRAIN/DR1 speakers, the 50 dev speakers and the 24 core-test speakers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from w2vtk.audio import SAMPLE_RATE
from w2vtk.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS
from w2vtk.errors import W2vtkError
from w2vtk.synth.common import Speaker, Staging, SynthSummary, load_sentences, make_speakers, pool_map
from w2vtk.synth.espeak import check_tools, phonemize, synthesize
from w2vtk.synth.timit_phones import align, assign_words, ipa_to_timit, with_closures
from w2vtk.text import normalize_sentence

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
    with Staging(out_dir) as staging:
        progress = tqdm(total=len(plan), desc="TIMIT", unit="utt", disable=None, leave=False)

        def render(u: _TimitUtterance):
            out = _render_timit(u, references)
            progress.update(1)
            return out

        lengths = {}
        for u, (wav, phn, wrd) in zip(plan, pool_map(render, plan, jobs)):
            lengths[u.directory, u.name] = len(wav)
            folder = staging.path / top / case(u.directory)
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / case(u.name)
            # Plain writes: the whole folder is renamed into place once complete (see Staging).
            sf.write(f"{stem}{case('.WAV')}", wav, SAMPLE_RATE, format="NIST", subtype="PCM_16")
            Path(f"{stem}{case('.PHN')}").write_text("".join(f"{a} {b} {p}\n" for a, b, p in phn))
            Path(f"{stem}{case('.WRD')}").write_text("".join(f"{a} {b} {w}\n" for a, b, w in wrd))
            Path(f"{stem}{case('.TXT')}").write_text(f"0 {len(wav)} {u.text}\n")
        progress.close()
        staging.publish(top)
    rows = []
    for label, members in (("TRAIN", TRAIN_SPEAKERS), ("TEST (dev)", DEV_SPEAKERS),
                           ("TEST (core)", CORE_TEST_SPEAKERS)):
        chosen = [u for u in plan if u.speaker.id in members]
        minutes = sum(lengths[u.directory, u.name] for u in chosen) / SAMPLE_RATE / 60
        rows.append((label, len(chosen), minutes, len({u.speaker.id for u in chosen})))
    return SynthSummary(out_dir, rows)
