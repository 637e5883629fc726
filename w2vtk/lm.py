"""n-gram language models: build them with KenLM, check and load them, and write letter lexicons.

Models are modified Kneser-Ney ARPA files made by KenLM's `lmplz` (optionally converted to KenLM's
binary format by `build_binary`), or downloaded ones such as LibriSpeech's `4-gram.arpa.gz`. KenLM
reads ARPA, gzipped ARPA and its binary format directly; binary files load in seconds (ARPA: minutes
for the LibriSpeech 4-gram) and are memory-mapped, so decoding processes share one copy.

The LM's words are upper case, like our transcripts (`w2vtk.text.normalize_sentence`).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

# KenLM's compile-time KENLM_MAX_ORDER (the pip package and our lmplz use the default, 6).
MAX_ORDER = 6
SENTENCE_SYMBOLS = ("<s>", "</s>", "<unk>")
_BINARY_MAGIC = b"mmap lm "
_SETUP_HINT = "run bin/setup.sh, which builds KenLM's lmplz and build_binary into the environment"


class LanguageModelError(W2vtkError):
    """An LM file is missing, truncated, of an unsupported order, or KenLM failed on it."""


# ---------------------------------------------------------------- KenLM programs

def kenlm_program(name: str) -> str:
    """Path of a KenLM program (`lmplz`, `build_binary`): next to the Python executable first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise LanguageModelError(f"KenLM's {name} was found neither in {beside.parent} nor on PATH; {_SETUP_HINT}")


# ---------------------------------------------------------------- text

def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a UTF-8 text file, transparently gunzipping `.gz` files (e.g. librispeech-lm-norm.txt.gz)."""
    path = Path(path)
    if not path.is_file():
        raise LanguageModelError(f"{path}: no such file")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def normalized_lines(path: str | os.PathLike, normalize: bool = True) -> Iterator[str]:
    """The non-empty lines of a corpus as upper-case words (`w2vtk.text.normalize_sentence`), or, with
    normalize=False, only whitespace-collapsed. A line that cannot be normalised (digits, symbols)
    raises LanguageModelError naming the file and line."""
    from w2vtk.text import TranscriptError, normalize_sentence

    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if normalize:
                try:
                    line = normalize_sentence(line)
                except TranscriptError as e:
                    raise LanguageModelError(f"{path}:{lineno}: {e}; or pass --no-normalize to use the text "
                                             "as it is") from None
            words = line.split()
            if words:
                yield " ".join(words)


# ---------------------------------------------------------------- building

def _stream_lines(lines: Iterable[str], pipe: IO[bytes], failure: list) -> None:
    try:
        for line in lines:
            pipe.write(line.encode("utf-8") + b"\n")
    except BrokenPipeError:
        pass  # lmplz died; its stderr says why
    except BaseException as e:  # reported by the caller after lmplz exits
        failure.append(e)
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


def spelled_lines(lines: Iterable[str]) -> Iterator[str]:
    """Each line's words spelled as letters, `|` after every word (`T H E | C A T |`): a letter LM's text."""
    for line in lines:
        yield " ".join(tok for word in line.split() for tok in letter_spelling(word))


def _run_lmplz(text: str | os.PathLike, sink: IO[bytes], order: int, prune: list[int] | None,
               discount_fallback: bool, memory: str, normalize: bool, tmp_dir: Path,
               letters: bool = False) -> tuple[int, str]:
    """Run lmplz with the normalised text (spelled, with `letters`) on stdin, copying the ARPA it prints
    into `sink`."""
    cmd = [kenlm_program("lmplz"), "-o", str(order), "-S", memory, "-T", str(tmp_dir) + os.sep]
    if prune:
        cmd += ["--prune", *map(str, prune)]
    if discount_fallback:
        cmd.append("--discount_fallback")
    log.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failure: list = []
    stderr: list[bytes] = []
    lines = normalized_lines(text, normalize)
    feeder = threading.Thread(target=_stream_lines, args=(spelled_lines(lines) if letters else lines, proc.stdin,
                                                          failure), daemon=True)
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    feeder.start()
    drain.start()
    shutil.copyfileobj(proc.stdout, sink, 1 << 20)
    proc.wait()
    feeder.join()
    drain.join()
    if failure:
        raise failure[0]
    return proc.returncode, b"".join(stderr).decode("utf-8", "replace")


def _lmplz_error_summary(stderr: str) -> str:
    progress = ("=", "*", "-", "Chain", "Name:", "Reading")
    lines = [ln for ln in stderr.splitlines() if ln.strip() and ln.strip() != "ERROR" and not ln.startswith(progress)]
    return (lines[-1] if lines else "no message")[:300]


class _LmplzFailed(Exception):
    def __init__(self, stderr: str):
        super().__init__(stderr)
        self.stderr = stderr
        self.too_small = "BadDiscountException" in stderr or "--discount_fallback" in stderr


def _write_arpa(text, arpa: Path, order, prune, fallback, memory, normalize, letters) -> None:
    # lmplz's sort files go to a folder of their own beside the output (where the space is), removed
    # afterwards: a failed lmplz (too little text for its discounts) leaves them behind now and then.
    with atomic_open(arpa, "wb") as raw, tempfile.TemporaryDirectory(prefix=f".{arpa.name}.lmplz-",
                                                                     dir=arpa.parent) as sort_dir:
        if arpa.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                rc, stderr = _run_lmplz(text, gz, order, prune, fallback, memory, normalize, Path(sort_dir), letters)
        else:
            rc, stderr = _run_lmplz(text, raw, order, prune, fallback, memory, normalize, Path(sort_dir), letters)
        if rc != 0:
            raise _LmplzFailed(stderr)  # leaves no partial file behind


def default_lmplz_memory(text: str | os.PathLike) -> str:
    """lmplz's sorting memory for a corpus: 8x its (uncompressed) size, at least 256M, at most 25% of RAM.

    lmplz's own default (80% of RAM) makes even a tiny model take seconds to allocate.
    """
    size = Path(text).stat().st_size
    with open(text, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            size *= 4  # typical text compression ratio
    mib = max(256, 8 * size // (1 << 20))
    try:
        ram_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        mib = min(mib, max(256, ram_mib // 4))
    except (ValueError, OSError):
        pass
    return f"{mib}M"


def train_lm(text: str | os.PathLike, arpa: str | os.PathLike, order: int = 4, prune: list[int] | None = None,
             discount_fallback: bool | None = None, memory: str | None = None, normalize: bool = True,
             binary: str | os.PathLike | None = None, letters: bool = False) -> Path:
    """Build a modified Kneser-Ney ARPA model of `order` from `text` (one sentence per line, may be .gz).

    `prune`: lmplz's count thresholds per order (e.g. [0, 0, 1]: drop singleton trigrams and above).
    `discount_fallback`: None retries with lmplz's `--discount_fallback` when the text is too small
    for Kneser-Ney discount estimation (as with tiny corpora), True always passes it, False never.
    `memory`: lmplz's sorting memory (`-S`: 25%, 2G, ...; None: `default_lmplz_memory`). An `arpa`
    ending in `.gz` is gzipped.
    `binary`: also write KenLM's binary format there. `letters`: a letter LM, each sentence spelled
    `T H E | C A T |` (for the lexicon-free flashlight decoder; orders up to 6 see about a word back).
    """
    arpa = Path(arpa)
    if not 2 <= order <= MAX_ORDER:
        raise LanguageModelError(f"--order {order}: KenLM supports orders 2 to {MAX_ORDER}")
    if prune and (len(prune) > order or any(p < 0 for p in prune) or prune != sorted(prune)):
        raise LanguageModelError(f"--prune {' '.join(map(str, prune))}: give at most {order} non-negative, "
                                 "non-decreasing count thresholds, one per order starting with unigrams")
    if not Path(text).is_file():
        raise LanguageModelError(f"{text}: no such text file")
    memory = memory or default_lmplz_memory(text)
    attempts = [bool(discount_fallback)] if discount_fallback is not None else [False, True]
    for i, fallback in enumerate(attempts):
        try:
            _write_arpa(text, arpa, order, prune, fallback, memory, normalize, letters)
            break
        except _LmplzFailed as e:
            if e.too_small and i + 1 < len(attempts):
                log.warning("%s is too small to estimate Kneser-Ney discounts; retrying with lmplz "
                            "--discount_fallback", text)
                continue
            if e.too_small:
                raise LanguageModelError(f"lmplz failed on {text}: the text is too small to estimate Kneser-Ney "
                                         "discounts; use more text or allow --discount-fallback") from None
            raise LanguageModelError(f"lmplz failed on {text}: {_lmplz_error_summary(e.stderr)}") from None
    info = check_lm_file(arpa)
    log.info("wrote %s: %s n-grams", arpa, " ".join(f"{n + 1}:{c}" for n, c in enumerate(info.ngram_counts)))
    if binary is not None:
        build_binary(arpa, binary)
    return arpa


def build_binary(arpa: str | os.PathLike, out: str | os.PathLike, data_structure: str = "probing") -> Path:
    """Convert an ARPA file to KenLM's binary format (`probing`: fastest; `trie`: smallest)."""
    arpa, out = Path(arpa), Path(out)
    check_lm_file(arpa)
    if data_structure not in ("probing", "trie"):
        raise LanguageModelError(f"binary data structure {data_structure!r}: use probing or trie")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [kenlm_program("build_binary"), "-S", "25%", "-T", str(out.parent) + os.sep, data_structure,
           str(arpa), str(tmp)]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        detail = _lmplz_error_summary(proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace"))
        raise LanguageModelError(f"build_binary failed on {arpa} ({detail}); if the ARPA file is truncated or "
                                 "corrupt, download it again or rebuild it with `w2vtk lm train`")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- checking and loading

@dataclass(frozen=True)
class LmFileInfo:
    path: Path
    kind: str                 # "arpa" | "arpa.gz" | "binary"
    ngram_counts: tuple[int, ...]  # per order, from the ARPA header; () for binary files

    @property
    def order(self) -> int | None:
        return len(self.ngram_counts) or None


def _corrupt(path: Path, what: str) -> LanguageModelError:
    return LanguageModelError(f"{path}: {what}; the file is truncated or not a language model: download it "
                              "again or rebuild it with `w2vtk lm train`")


def check_lm_file(path: str | os.PathLike) -> LmFileInfo:
    """Identify an LM file and check what can be checked cheaply: the ARPA header and the order.

    Truncation in the body of an ARPA file is caught by `load_kenlm` (KenLM reports where it ends).
    """
    path = Path(path)
    if not path.is_file():
        raise LanguageModelError(f"{path}: no such language model file")
    with open(path, "rb") as f:
        head = f.read(len(_BINARY_MAGIC))
    if head.startswith(_BINARY_MAGIC):
        return LmFileInfo(path, "binary", ())
    kind = "arpa.gz" if head[:2] == b"\x1f\x8b" else "arpa"
    counts: dict[int, int] = {}
    try:
        with open_text(path) as f:
            seen_data = False
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if not seen_data:
                    if line != "\\data\\":
                        raise _corrupt(path, f"first line is {line[:40]!r}, not \\data\\ (an ARPA header)")
                    seen_data = True
                    continue
                if line.startswith("ngram "):
                    n, _, c = line[6:].partition("=")
                    counts[int(n)] = int(c)
                else:
                    break
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:
        raise _corrupt(path, f"cannot read the ARPA header ({e})") from None
    if not counts:
        raise _corrupt(path, "no `ngram N=count` lines after \\data\\")
    # Compare with 1..len(counts), not 1..max(counts): a corrupt header may claim any order.
    if sorted(counts) != list(range(1, len(counts) + 1)) or min(counts.values()) < 0:
        raise _corrupt(path, f"the header lists orders {sorted(counts)} with counts "
                             f"{[counts[n] for n in sorted(counts)]}")
    order = len(counts)
    if order > MAX_ORDER:
        raise LanguageModelError(f"{path}: a {order}-gram model, but KenLM here supports orders up to {MAX_ORDER}; "
                                 f"rebuild it with `w2vtk lm train --order {MAX_ORDER}` (or lower)")
    return LmFileInfo(path, kind, tuple(counts[i] for i in range(1, order + 1)))


# What KenLM's Python bindings raise for a bad file; UnicodeDecodeError when its message quotes bytes of the
# file that are not UTF-8.
KENLM_LOAD_ERRORS = (OSError, RuntimeError, UnicodeDecodeError)


def kenlm_load_error(path: str | os.PathLike, err: Exception) -> LanguageModelError:
    """Turn KenLM's multi-line C++ exception text into our one-line message naming the file and the fix."""
    if isinstance(err, UnicodeDecodeError):
        return LanguageModelError(f"{path}: KenLM cannot read it: it holds bytes that are not UTF-8 text; the file is "
                                  "corrupt: download it again or rebuild it with `w2vtk lm train`")
    msg = " ".join(str(err).split())
    if "compiled to support up to" in msg or "order" in msg and "KENLM_MAX_ORDER" in msg:
        return LanguageModelError(f"{path}: the model's order is higher than KenLM here supports ({MAX_ORDER}); "
                                  f"rebuild it with `w2vtk lm train --order {MAX_ORDER}` (or lower)")
    detail = msg.split("threw")[-1].strip() if "threw" in msg else msg
    detail = re.sub(r"^Cannot read model '[^']*' \((.*)\)$", r"\1", detail)
    return LanguageModelError(f"{path}: KenLM cannot read it ({detail[:200]}); the file is truncated or corrupt: "
                              "download it again or rebuild it with `w2vtk lm train`")


def load_kenlm(path: str | os.PathLike):
    """A `kenlm.Model`, after `check_lm_file`; KenLM's load errors become LanguageModelError."""
    import kenlm

    info = check_lm_file(path)
    if info.kind != "binary":
        log.info("loading ARPA %s (convert it with `w2vtk lm binary` to load faster)", info.path)
    try:
        return kenlm.Model(str(info.path))
    except KENLM_LOAD_ERRORS as e:
        raise kenlm_load_error(info.path, e) from None


def arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA model's 1-gram section (without <s>, </s>, <unk>), in file order.

    Reads only the start of the file. A binary model has no readable word list: give a lexicon.
    """
    info = check_lm_file(path)
    if info.kind == "binary":
        raise LanguageModelError(f"{path}: a KenLM binary file has no readable word list; give the lexicon "
                                 "(`w2vtk lm lexicon` makes one from the LM's text or ARPA file) or the ARPA file")
    words: list[str] = []
    entries = 0
    in_unigrams = False
    with open_text(info.path) as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
                continue
            if not in_unigrams or not line:
                continue
            if line.startswith("\\"):
                break
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise _corrupt(info.path, f"bad 1-gram line {line[:60]!r}")
            entries += 1
            if fields[1] not in SENTENCE_SYMBOLS:
                words.append(fields[1])
    if entries != info.ngram_counts[0]:
        raise _corrupt(info.path, f"the 1-gram section has {entries} entries, the header says {info.ngram_counts[0]}")
    return words


# ---------------------------------------------------------------- lexicons

def lexicon_words(path: str | os.PathLike) -> list[str]:
    """Unique upper-case words, in order of first appearance, from a word list, a text corpus or an ARPA file."""
    path = Path(path)
    with open_text(path) as f:
        first = next((ln.strip() for ln in f if ln.strip()), "")
    if first == "\\data\\":
        words: Iterable[str] = arpa_unigrams(path)
    else:
        words = (w for line in normalized_lines(path) for w in line.split())
    return list(dict.fromkeys(words))


def letter_spelling(word: str) -> list[str]:
    """fairseq's letter-lexicon spelling: the letters then the word boundary `|`."""
    return [*word, "|"]


def write_lexicon(source: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write a letter lexicon (`WORD\\tW O R D |` per line) for the words of `source`; returns the word count."""
    words = lexicon_words(source)
    if not words:
        raise LanguageModelError(f"{source}: no words found (expected a word list, text or ARPA file)")
    atomic_write_text(out, "".join(f"{w}\t{' '.join(letter_spelling(w))}\n" for w in words))
    return len(words)


def read_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """Read a lexicon (`WORD<TAB or space>tok tok ...` per line) into {word: [spelling, ...]}."""
    path = Path(path)
    if not path.is_file():
        raise LanguageModelError(f"{path}: no such lexicon file")
    lexicon: dict[str, list[list[str]]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if line[0].isspace():  # the word column is empty: the spelling's first token is no word
                raise LanguageModelError(f"{path}:{lineno}: no word before the spelling {line.strip()[:60]!r}; "
                                         "each line is `WORD<TAB>W O R D |`: add the word or make the lexicon "
                                         "with `w2vtk lm lexicon`")
            if len(fields) < 2:
                raise LanguageModelError(f"{path}:{lineno}: expected `WORD<TAB>W O R D |`, got {line.strip()[:60]!r}; "
                                         "make lexicons with `w2vtk lm lexicon`")
            lexicon.setdefault(fields[0], []).append(fields[1:])
    if not lexicon:
        raise LanguageModelError(f"{path}: empty lexicon; make one with `w2vtk lm lexicon`")
    return lexicon
