"""Label text: letter transcripts with `|` word boundaries, TIMIT phone sets, and vocabularies.

Label files are line-aligned with a manifest (see w2vtk.manifest); this module turns one line of
them into symbols and ids and back. The vocabulary layout follows fairseq's dictionaries so that
fairseq's fine-tuned checkpoints keep their output order.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from w2vtk.errors import W2vtkError

WORD_SEPARATOR = "|"
# fairseq's Dictionary puts these first; its CTC heads use <s> (index 0) as the blank.
SPECIAL_SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>"]
BLANK_INDEX = 0
PAD_INDEX = 1
LABEL_KINDS = ("ltr", "phn", "sp")
SENTENCEPIECE_SPACE = "\u2581"  # sentencepiece's "▁" marks the start of a word

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]
_LETTER_WORD = re.compile(r"^[A-Z']+$")
_LETTER_TEXT = re.compile(r"[A-Z']+(?: [A-Z']+)*")  # upper-case words, one space apart


class TranscriptError(W2vtkError):
    """A transcript holds characters outside the label vocabulary."""


def normalize_sentence(text: str) -> str:
    """Written English -> a LibriSpeech-style transcript: `It's late-night.` -> `IT'S LATE NIGHT`.

    Hyphens and dashes separate words; other punctuation is dropped. Raises TranscriptError for
    anything that is not a letter, apostrophe or punctuation (digits must be written out).
    """
    upper = text.upper().replace("\u2019", "'")
    upper = re.sub(r"[-\u2013\u2014/]", " ", upper)
    upper = re.sub(r"[.,;:!?\"()]", " ", upper)
    words = upper.split()
    for w in words:
        if not _LETTER_WORD.match(w):
            bad = next(c for c in w if not ("A" <= c <= "Z" or c == "'"))
            raise TranscriptError(f"character {bad!r} in {text!r} is not a letter or apostrophe; "
                                  "spell numbers and symbols out as words")
    return " ".join(words)


def transcript_to_letters(text: str) -> str:
    """`HELLO WORLD` -> `H E L L O | W O R L D |`: letters separated by spaces, `|` after every word.

    The transcript must be letters, apostrophes and spaces (LibriSpeech's format; lower case is
    upper-cased); anything else raises TranscriptError naming the character, so that a caller can
    add the file and line.
    """
    if _LETTER_TEXT.fullmatch(text):  # LibriSpeech's own lines: one string operation, no per-word loop
        return " ".join(text.replace(" ", WORD_SEPARATOR)) + " " + WORD_SEPARATOR
    out: list[str] = []
    for w in text.split():
        upper = w.upper()
        if not _LETTER_WORD.match(upper) or len(upper) != len(w):
            bad = next(c for c in w if not ("A" <= c.upper() <= "Z" or c == "'") or len(c.upper()) > 1)
            raise TranscriptError(f"character {bad!r} is outside the letter vocabulary "
                                  "(A-Z and apostrophe)")
        out.extend(upper)
        out.append(WORD_SEPARATOR)
    return " ".join(out)


def letters_to_words(letters: Iterable[str]) -> list[str]:
    """Inverse of transcript_to_letters on a symbol sequence: split on `|`, drop empty words."""
    return "".join(letters).replace(WORD_SEPARATOR, " ").split()


# --- TIMIT phone sets ------------------------------------------------------------------------
# 60-48-39 folding of Lee & Hon (1989) as used by Kaldi's egs/timit: (61-symbol, 48-symbol, 39-symbol).
# q (glottal stop) has no entry: it is deleted before any folding.
_FOLDING = [
    ("aa", "aa", "aa"), ("ae", "ae", "ae"), ("ah", "ah", "ah"), ("ao", "ao", "aa"),
    ("aw", "aw", "aw"), ("ax", "ax", "ah"), ("ax-h", "ax", "ah"), ("axr", "er", "er"),
    ("ay", "ay", "ay"), ("b", "b", "b"), ("bcl", "vcl", "sil"), ("ch", "ch", "ch"),
    ("d", "d", "d"), ("dcl", "vcl", "sil"), ("dh", "dh", "dh"), ("dx", "dx", "dx"),
    ("eh", "eh", "eh"), ("el", "el", "l"), ("em", "m", "m"), ("en", "en", "n"),
    ("eng", "ng", "ng"), ("epi", "epi", "sil"), ("er", "er", "er"), ("ey", "ey", "ey"),
    ("f", "f", "f"), ("g", "g", "g"), ("gcl", "vcl", "sil"), ("h#", "sil", "sil"),
    ("hh", "hh", "hh"), ("hv", "hh", "hh"), ("ih", "ih", "ih"), ("ix", "ix", "ih"),
    ("iy", "iy", "iy"), ("jh", "jh", "jh"), ("k", "k", "k"), ("kcl", "cl", "sil"),
    ("l", "l", "l"), ("m", "m", "m"), ("n", "n", "n"), ("ng", "ng", "ng"),
    ("nx", "n", "n"), ("ow", "ow", "ow"), ("oy", "oy", "oy"), ("p", "p", "p"),
    ("pau", "sil", "sil"), ("pcl", "cl", "sil"), ("r", "r", "r"), ("s", "s", "s"),
    ("sh", "sh", "sh"), ("t", "t", "t"), ("tcl", "cl", "sil"), ("th", "th", "th"),
    ("uh", "uh", "uh"), ("uw", "uw", "uw"), ("ux", "uw", "uw"), ("v", "v", "v"),
    ("w", "w", "w"), ("y", "y", "y"), ("z", "z", "z"), ("zh", "zh", "sh"),
]
GLOTTAL_STOP = "q"
SILENCE = "sil"
PHONES_61 = sorted([p61 for p61, _, _ in _FOLDING] + [GLOTTAL_STOP])
PHONES_48 = sorted({p48 for _, p48, _ in _FOLDING})
PHONES_39 = sorted({p39 for _, _, p39 in _FOLDING})
_61_TO_48 = {p61: p48 for p61, p48, _ in _FOLDING}
# One table folds both 61- and 48-symbol sequences to 39 (the 48 set is the 61 set's folding, plus
# vcl, cl and sil), so a model trained on 48 phones is scored with the same function.
_TO_39 = {p61: p39 for p61, _, p39 in _FOLDING} | {p48: p39 for _, p48, p39 in _FOLDING}
# In the 61 set, h# and pau are the silences that become `sil`; closures and epi stay phones there.
_SILENCES_61 = {"h#", "pau"}


class PhoneError(W2vtkError):
    """A phone symbol outside the TIMIT phone set."""


def _check_phones(phones: Sequence[str], allowed: Iterable[str], set_name: str) -> None:
    allowed = set(allowed)
    for p in phones:
        if p not in allowed:
            raise PhoneError(f"unknown phone {p!r}: not in the TIMIT {set_name}-phone set")


def fold_61_to_48(phones: Sequence[str], keep_sil: bool = True) -> list[str]:
    """TIMIT 61 phones -> Kaldi's 48 training phones; q is deleted.

    keep_sil=False drops `sil` (h# and pau) from the result.
    """
    _check_phones(phones, PHONES_61, "61")
    out = [_61_TO_48[p] for p in phones if p != GLOTTAL_STOP]
    return out if keep_sil else [p for p in out if p != SILENCE]


def fold_61_to_39(phones: Sequence[str], keep_sil: bool = True) -> list[str]:
    """TIMIT 61 phones -> the 39 scoring phones of Lee & Hon (1989); q is deleted.

    Closures, epi, h# and pau all become `sil`, which counts as a phone in Kaldi's scoring
    (keep_sil=True, the default); keep_sil=False drops it, as some papers do.
    """
    _check_phones(phones, PHONES_61, "61")
    return fold_to_39(phones, keep_sil)


def fold_48_to_39(phones: Sequence[str], keep_sil: bool = True) -> list[str]:
    """Kaldi's 48 training phones -> the 39 scoring phones (for scoring a 48-phone model)."""
    _check_phones(phones, PHONES_48, "48")
    return fold_to_39(phones, keep_sil)


def fold_to_39(phones: Sequence[str], keep_sil: bool = True) -> list[str]:
    """61-, 48- or 39-set phones -> 39-set phones (q deleted; `sil` dropped if not keep_sil)."""
    out = []
    for p in phones:
        if p == GLOTTAL_STOP:
            continue
        if p not in _TO_39:
            raise PhoneError(f"unknown phone {p!r}: not in the TIMIT 61-, 48- or 39-phone sets")
        out.append(_TO_39[p])
    return out if keep_sil else [p for p in out if p != SILENCE]


def fold_phones(phones: Sequence[str], num_phones: int, keep_sil: bool = True) -> list[str]:
    """61-set phones -> the `num_phones` set (61, 48 or 39); q is always deleted.

    For 61 the symbols are kept (keep_sil=False drops h# and pau).
    """
    if num_phones == 39:
        return fold_61_to_39(phones, keep_sil)
    if num_phones == 48:
        return fold_61_to_48(phones, keep_sil)
    if num_phones == 61:
        _check_phones(phones, PHONES_61, "61")
        return [p for p in phones if p != GLOTTAL_STOP and (keep_sil or p not in _SILENCES_61)]
    raise W2vtkError(f"unknown phone set size {num_phones}; use 39, 48 or 61")


# --- Vocabulary ------------------------------------------------------------------------------
class Vocabulary:
    """Symbols of a CTC output layer: index 0 is the blank (fairseq's `<s>`), then `<pad>`, `</s>`,
    `<unk>`, then the label symbols in the order of the dictionary file.

    `kind` says how label lines are split into words: "ltr" (letters with `|`), "phn" (every phone
    is a word, for PER), "sp" (sentencepiece pieces, `▁` starts a word).
    """

    def __init__(self, symbols: Sequence[str], kind: str):
        if kind not in LABEL_KINDS:
            raise W2vtkError(f"unknown label kind {kind!r}; use one of {', '.join(LABEL_KINDS)}")
        if list(symbols[:len(SPECIAL_SYMBOLS)]) != SPECIAL_SYMBOLS:
            raise W2vtkError(f"a vocabulary must start with {' '.join(SPECIAL_SYMBOLS)}; "
                             f"got {' '.join(symbols[:4])}")
        self.symbols = list(symbols)
        self.kind = kind
        self._index = {}
        for i, s in enumerate(self.symbols):
            if s in self._index:
                raise W2vtkError(f"symbol {s!r} appears twice in the {kind} vocabulary")
            self._index[s] = i

    @classmethod
    def from_dict_file(cls, path: str | Path, kind: str) -> "Vocabulary":
        """Read a fairseq dictionary (`<symbol> <count>` per line, e.g. dict.ltr.txt)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise W2vtkError(f"{path}: no such dictionary; run `w2vtk prepare ...` to make it") from None
        except UnicodeDecodeError as e:
            raise W2vtkError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        symbols = list(SPECIAL_SYMBOLS)
        seen = set(symbols)
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
                raise W2vtkError(f"{path} line {n}: expected `<symbol> <count>`, got {line!r}")
            if fields[0] in seen:
                raise W2vtkError(f"{path} line {n}: symbol {fields[0]!r} appears twice")
            seen.add(fields[0])
            symbols.append(fields[0])
        if len(symbols) == len(SPECIAL_SYMBOLS):
            raise W2vtkError(f"{path}: dictionary is empty")
        return cls(symbols, kind)

    @classmethod
    def from_list(cls, symbols: Sequence[str], kind: str) -> "Vocabulary":
        """Rebuild from `to_list()` (as stored in checkpoints)."""
        return cls(symbols, kind)

    def to_list(self) -> list[str]:
        return list(self.symbols)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self.symbols, self.kind) == (other.symbols, other.kind)

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self.kind!r}, size={len(self)})"

    @property
    def word_separator(self) -> str | None:
        return WORD_SEPARATOR if self.kind == "ltr" else None

    def index(self, symbol: str) -> int:
        try:
            return self._index[symbol]
        except KeyError:
            raise W2vtkError(f"symbol {symbol!r} is not in the {self.kind} vocabulary") from None

    def encode(self, line: str) -> list[int]:
        """One label-file line (space-separated symbols) -> ids."""
        return [self.index(s) for s in line.split()]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.symbols[i] for i in ids]

    def to_words(self, ids: Iterable[int]) -> list[str]:
        """Ids (already CTC-collapsed, blanks removed or not) -> words; special symbols are dropped."""
        syms = [self.symbols[i] for i in ids if i >= len(SPECIAL_SYMBOLS)]
        if self.kind == "ltr":
            return letters_to_words(syms)
        if self.kind == "sp":
            return "".join(syms).replace(SENTENCEPIECE_SPACE, " ").split()
        return syms
