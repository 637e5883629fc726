"""TIMIT on disk -> train / dev / test manifests with phone and word labels.

Layout (LDC disc, upper- or lower-case): `TIMIT/{TRAIN,TEST}/DR<1-8>/<speaker>/<SA|SI|SX><n>.{WAV,PHN,WRD,TXT}`.
Splits as in Kaldi's egs/timit: train = all of TRAIN, dev = the 50 dev speakers of TEST, test = the
24 core-test speakers; the SA sentences (read by every speaker) are left out everywhere.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from w2vtk.corpora.common import AudioItem, PrepareSummary, SubsetPlan, build_manifests, check_corpus_dir
from w2vtk.errors import W2vtkError
from w2vtk.text import PHONES_61, fold_phones

log = logging.getLogger(__name__)

DEV_SPEAKERS = (
    "faks0 fdac1 fjem0 mgwt0 mjar0 mmdb1 mmdm2 mpdf0 fcmh0 fkms0 mbdg0 mbwm0 mcsh0 fadg0 fdms0 "
    "fedw0 mgjf0 mglb0 mrtk0 mtaa0 mtdt0 mthc0 mwjg0 fnmr0 frew0 fsem0 mbns0 mmjr0 mdls0 mdlf0 "
    "mdvc0 mers0 fmah0 fdrw0 mrcs0 mrjm4 fcal1 mmwh0 fjsj0 majc0 mjsw0 mreb0 fgjd0 fjmg0 mroa0 "
    "mteb0 mjfc0 mrjr0 fmml0 mrws1").split()
# The core test set: 2 men and 1 woman from each dialect region DR1..DR8, in that order.
CORE_TEST_SPEAKERS = (
    "mdab0 mwbt0 felc0 mtas1 mwew0 fpas0 mjmp0 mlnt0 fpkt0 mlll0 mtls0 fjlm0 mbpm0 mklt0 fnlp0 "
    "mcmj0 mjdh0 fmgd0 mgrt0 mnjm0 fdhc0 mjln0 mpam0 fmld0").split()
PHONE_SETS = (39, 48, 61)
PHONE_DICT = "dict.phn.txt"


def find_timit_root(corpus_dir: str | Path) -> Path:
    """The folder holding TRAIN/ and TEST/ (any case): CORPUS_DIR or up to two levels below it."""
    corpus_dir = check_corpus_dir(corpus_dir, "TIMIT corpus (TRAIN/ and TEST/)")
    frontier = [corpus_dir]
    for _ in range(3):
        for d in frontier:
            names = {c.name.lower() for c in d.iterdir() if c.is_dir()}
            if {"train", "test"} <= names:
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()]
    raise W2vtkError(f"{corpus_dir}: no TIMIT TRAIN/ and TEST/ folders found (looked two levels deep); "
                     "pass the folder of the TIMIT disc")


def _child(directory: Path, name: str) -> Path:
    """`directory/name` in whatever case the disc uses."""
    for c in directory.iterdir():
        if c.name.lower() == name.lower():
            return c
    raise W2vtkError(f"{directory}: no {name} folder")


def read_phones(path: Path) -> list[str]:
    """The 61-set phone labels of a .PHN file (`<start> <end> <phone>` per line)."""
    phones = []
    for n, fields in _timed_lines(path):
        if fields[2] not in PHONES_61:
            raise W2vtkError(f"{path} line {n}: unknown phone {fields[2]!r}, not one of TIMIT's 61 "
                             "phones; correct the label")
        phones.append(fields[2])
    if not phones:
        raise W2vtkError(f"{path}: no phones; re-extract the corpus")
    return phones


def read_words(path: Path) -> list[str]:
    """The words of a .WRD file (`<start> <end> <word>` per line), upper-cased."""
    words = [fields[2].upper() for _, fields in _timed_lines(path)]
    if not words:
        raise W2vtkError(f"{path}: no words; re-extract the corpus")
    return words


def _timed_lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise W2vtkError(f"{path}: not UTF-8/ASCII text ({e.reason}); re-extract the corpus") from None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise W2vtkError(f"{path} line {n}: expected `<start> <end> <label>`, got {line.strip()!r}")
        yield n, fields


def read_speakers(split_dir: Path, root: Path, num_phones: int, keep_sil: bool) -> dict[str, list[AudioItem]]:
    """{speaker id (lower case): utterances} for one of TRAIN/ and TEST/, SA sentences excluded."""
    speakers: dict[str, list[AudioItem]] = {}
    for region in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        for spk_dir in sorted(d for d in region.iterdir() if d.is_dir()):
            files = {f.lower(): f for f in os.listdir(spk_dir)}
            items = []
            for lower, name in sorted(files.items()):
                # Some copies add RIFF conversions named X.WAV.wav beside the SPHERE X.WAV: use X.WAV.
                if not lower.endswith(".wav") or lower.endswith(".wav.wav") or lower.startswith("sa"):
                    continue
                stem = lower[:-len(".wav")]
                labels = {}
                for ext in ("phn", "wrd"):
                    if f"{stem}.{ext}" not in files:
                        raise W2vtkError(f"{spk_dir / name}: no matching .{ext.upper()} file; "
                                         "re-extract the corpus or remove the audio")
                phones = read_phones(spk_dir / files[f"{stem}.phn"])
                try:
                    labels["phn"] = " ".join(fold_phones(phones, num_phones, keep_sil))
                except W2vtkError as e:
                    raise W2vtkError(f"{spk_dir / files[stem + '.phn']}: {e}") from None
                labels["wrd"] = " ".join(read_words(spk_dir / files[f"{stem}.wrd"]))
                path = spk_dir / name
                items.append(AudioItem(str(path), path.relative_to(root).as_posix(), spk_dir.name.lower(), labels))
            if items:
                speakers.setdefault(spk_dir.name.lower(), []).extend(items)
    return speakers


def prepare_timit(corpus_dir: str | Path, out_dir: str | Path, num_phones: int = 39, keep_sil: bool = True,
                  jobs: int = 1, skip_bad: bool = False) -> PrepareSummary:
    """Write OUT_DIR/{train,dev,test}.{tsv,phn,wrd} and dict.phn.txt (from train).

    num_phones: 39 (scoring set, default), 48 (Kaldi's training set) or 61 (TIMIT's own, q deleted).
    keep_sil: keep `sil` (h# and pau for 61) in the labels; Kaldi counts it when scoring.
    """
    if num_phones not in PHONE_SETS:
        raise W2vtkError(f"unknown phone set {num_phones}; use one of {', '.join(map(str, PHONE_SETS))}")
    root = find_timit_root(corpus_dir)
    train = read_speakers(_child(root, "train"), root, num_phones, keep_sil)
    test = read_speakers(_child(root, "test"), root, num_phones, keep_sil)
    dev_found = [s for s in DEV_SPEAKERS if s in test]
    core_found = [s for s in CORE_TEST_SPEAKERS if s in test]
    if not train:
        raise W2vtkError(f"{root}: no utterances in TRAIN; re-extract the corpus")
    if not dev_found or not core_found:
        raise W2vtkError(f"{root}: TEST holds {len(dev_found)} of the 50 dev speakers and {len(core_found)} "
                         "of the 24 core-test speakers; pass a complete TIMIT disc")
    for what, found, full in (("dev", dev_found, DEV_SPEAKERS), ("core-test", core_found, CORE_TEST_SPEAKERS)):
        if len(found) < len(full):
            log.warning("%s: only %d of the %d %s speakers are present", root, len(found), len(full), what)

    def plan(name: str, speakers: dict[str, list[AudioItem]], chosen) -> SubsetPlan:
        return SubsetPlan(name, root, sorted((it for s in chosen for it in speakers[s]), key=lambda it: it.relpath))

    plans = [plan("train", train, train), plan("dev", test, dev_found), plan("test", test, core_found)]
    return build_manifests(out_dir, plans, {PHONE_DICT: ("phn", ["train"])}, jobs=jobs, skip_bad=skip_bad)
