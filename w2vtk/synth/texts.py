"""Sentences for the synthetic corpora, from public-domain English texts, and their split into
disjoint training, dev and test sentences.

Sources (each a list of sentences that `normalize_sentence` accepts, within a word-count range):
  harvard   the Harvard sentences (IEEE 1969), shipped with w2vtk
  kjv       the King James Bible (1611), from Debian's bible-kjv (`bible` prints it)
  devil     Ambrose Bierce's The Devil's Dictionary (1911), from Debian's dict-devil
  FILE      any text file: sentences per line, or running prose (split at sentence ends)

As in LibriSpeech, dev and test read sentences that no training utterance reads, and the LM text
(every sentence of the sources but the dev and test ones) excludes them too.
"""
from __future__ import annotations

import gzip
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from w2vtk.errors import W2vtkError
from w2vtk.synth.common import load_sentences
from w2vtk.text import TranscriptError, normalize_sentence

DEVIL_FILE = Path("/usr/share/dictd/devil.dict.dz")
SOURCES = ("harvard", "kjv", "devil")
WORDS_RANGE = (4, 20)  # words per sentence read aloud


def _kjv_text() -> str:
    if shutil.which("bible") is None:
        raise W2vtkError("sentence source kjv needs Debian's bible-kjv (apt-get install bible-kjv)")
    proc = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], input="", capture_output=True, text=True)
    # Verse lines are "  <n> text"; chapter headings ("Genesis 1") are skipped.
    verses = [m.group(1) for m in re.finditer(r"^\s+\d+ (.+)$", proc.stdout, flags=re.M)]
    if len(verses) < 30000:
        raise W2vtkError(f"bible printed {len(verses)} verses, expected about 31,000; reinstall bible-kjv-text")
    return "\n".join(verses)


def _devil_text() -> str:
    if not DEVIL_FILE.exists():
        raise W2vtkError(f"sentence source devil needs {DEVIL_FILE} (apt-get install dict-devil)")
    with gzip.open(DEVIL_FILE, "rt", encoding="latin-1") as f:
        text = f.read()
    body = text[text.find("ABASEMENT, n."):]
    # Headwords ("ABASEMENT, n.") and the poets' initials ("G.J.") are not sentences.
    body = re.sub(r"^[A-Z][A-Z' -]+, (n|v|adj|adv|pp|pro|prep|conj|x)\.(, [a-z]+\.)*", "", body, flags=re.M)
    return re.sub(r"^\s+[A-Z]\.[A-Z]\.\s*$", "", body, flags=re.M)


def prose_sentences(text: str) -> list[str]:
    """Running prose -> sentences and clauses, split at . ! ? ; : (and blank lines)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        out += [s.strip() for s in re.split(r"(?<=[.!?;:])\s+", flat) if s.strip()]
    return out


def readable(sentence: str, words: tuple[int, int] = WORDS_RANGE) -> bool:
    """True when the sentence normalises to a transcript (letters only) of min..max words."""
    if re.search(r"[\[\]_*&=+<>{}|#@$%~^`\d]", sentence):
        return False
    try:
        n = len(normalize_sentence(sentence).split())
    except TranscriptError:
        return False
    return words[0] <= n <= words[1]


def load_source(source: str, words: tuple[int, int] = WORDS_RANGE) -> list[str]:
    """The readable sentences of one source (a name in SOURCES or a text file's path), unique, in order."""
    if source == "harvard":
        candidates = load_sentences()
    elif source == "kjv":
        candidates = prose_sentences(_kjv_text())
    elif source == "devil":
        candidates = prose_sentences(_devil_text())
    else:
        path = Path(source)
        if not path.is_file():
            raise W2vtkError(f"sentence source {source!r}: neither one of {', '.join(SOURCES)} nor a text file")
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = [s.strip() for s in text.splitlines() if s.strip()]
        # Lines that end sentences are sentences (or several); otherwise the lines wrap running prose.
        if lines and sum(line[-1] in ".!?" for line in lines) >= 0.8 * len(lines):
            candidates = [s for line in lines for s in prose_sentences(line)]
        else:
            candidates = prose_sentences(text)
    seen, out = set(), []
    for s in candidates:
        if readable(s, words):
            key = normalize_sentence(s)
            if key not in seen:
                seen.add(key)
                out.append(s)
    if not out:
        raise W2vtkError(f"sentence source {source!r} holds no sentence of {words[0]}-{words[1]} plain words")
    return out


@dataclass(frozen=True)
class SentenceSplit:
    """Disjoint sentence lists: dev and test read their own; `train` is every other sentence of the
    sources, which training utterances read and the LM text holds."""

    train: list[str]
    dev: list[str]
    test: list[str]


def split_sentences(sources: list[str], eval_sentences: int, seed: int,
                    words: tuple[int, int] = WORDS_RANGE) -> SentenceSplit:
    """Pool the sources' sentences, shuffle them with `seed`, and set aside `eval_sentences` for
    dev and as many for test; training reads the rest."""
    pool: list[str] = []
    for source in sources:
        pool += load_source(source, words)
    if len(pool) < 2 * eval_sentences + 10:
        raise W2vtkError(f"sentence sources {', '.join(sources)} hold {len(pool)} sentences: too few to set "
                         f"aside {eval_sentences} each for dev and test; add a source or lower --eval-sentences")
    random.Random(f"{seed}/sentences").shuffle(pool)
    return SentenceSplit(train=pool[2 * eval_sentences:], dev=pool[:eval_sentences],
                         test=pool[eval_sentences:2 * eval_sentences])


def oov_rate(transcripts: list[str], vocabulary: set[str]) -> float:
    """Percentage of the transcripts' word tokens (normalised transcripts) not in `vocabulary`."""
    tokens = [w for t in transcripts for w in t.split()]
    return 100.0 * sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)
