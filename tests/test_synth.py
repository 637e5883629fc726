"""espeak-ng corpora: phone mapping, alignment, the disc layouts, determinism."""
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from w2vtk.cli import main
from w2vtk.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS
from w2vtk.errors import W2vtkError
from w2vtk.synth import synth_librispeech, synth_timit
from w2vtk.synth.common import RecordingStyle, VoiceStyle, load_sentences
from w2vtk.synth.texts import load_source, oov_rate, split_sentences
from w2vtk.synth.espeak import ACCENTS, SynthError, check_tools, phonemize
from w2vtk.synth.timit import SA_SENTENCES, TRAIN_SPEAKERS
from w2vtk.synth.timit_phones import align, assign_words, ipa_to_timit, with_closures
from w2vtk.text import PHONES_61, normalize_sentence

W2VTK = str(Path(sys.executable).with_name("w2vtk"))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- text and phones ---------------------------------------------------------------------------
def test_sentence_list():
    sentences = load_sentences()
    assert len(sentences) == 720 and len(set(sentences)) == 720
    assert sentences[0] == "The birch canoe slid on the smooth planks."
    for s in sentences:
        assert re.fullmatch(r"[A-Z' ]+", normalize_sentence(s)), s


@pytest.mark.parametrize("ipa, timit", [("ˈæ", ["ae"]), ("ˌaɪ", ["ay"]), ("tʃ", ["ch"]), ("ɾ", ["dx"]),
                                        ("ˈɑːɹ", ["aa", "r"]), ("ˈa:", ["aa"]), ("aɪə", ["ay", "ax"]), ("əl", ["el"])])
def test_ipa_to_timit(ipa, timit):
    assert ipa_to_timit(ipa) == timit


def test_ipa_to_timit_unknown():
    with pytest.raises(SynthError, match="'ʙ'"):
        ipa_to_timit("ʙ")


def test_phonemes_of_every_accent_map_to_timit():
    # A third of the sentence list (the variants +m1.. +f4 change the voice, not the phonemes).
    text = "\n".join(load_sentences()[::3] + SA_SENTENCES)

    def timit_phones(accent):
        return {p for clause in phonemize(text, accent) for w in clause for ph in w for p in ipa_to_timit(ph)}

    with ThreadPoolExecutor(2) as pool:
        for phones in pool.map(timit_phones, ACCENTS):
            assert phones <= set(PHONES_61), phones - set(PHONES_61)
            assert len(phones) > 30


def test_closures_before_stops():
    assert with_closures(["s", "t", "aa", "p", "ch", "jh", "dx"]) == \
        ["s", "tcl", "t", "aa", "pcl", "p", "tcl", "ch", "dcl", "jh", "dx"]


def test_joined_words_are_split_by_their_references():
    # espeak-ng says "slid on the smooth" as three groups: `on the` is joined.
    groups = [["s", "l", "ih", "d"], ["ao", "n", "dh", "ax"], ["s", "m", "uw", "dh"]]
    refs = [["s", "l", "ih", "d"], ["ao", "n"], ["dh", "iy"], ["s", "m", "uw", "dh"]]
    words = assign_words(groups, refs)
    assert [w for w, _ in words] == [["s", "l", "ih", "d"], ["ao", "n"], ["dh", "ax"], ["s", "m", "uw", "dh"]]
    assert [g for _, g in words] == [0, 1, 1, 2]


def test_align_covers_the_audio_with_contiguous_phones():
    rng = np.random.default_rng(0)
    wav = np.zeros(16000 * 2, np.float32)
    wav[3200:12000] = rng.standard_normal(8800) * 0.1  # clause 1
    wav[16000:28000] = rng.standard_normal(12000) * 0.1  # clause 2, after a 250 ms pause
    clauses = [[["hh", "ay"]], [["dh", "eh", "r"], ["y", "uw"]]]
    rows, words = align(clauses, wav)
    assert rows[0] == (0, 3200, "h#") and rows[-1] == (28000, 32000, "h#")
    assert [p for _, _, p in rows] == ["h#", "hh", "ay", "pau", "dh", "eh", "r", "y", "uw", "h#"]
    assert all(a < b for a, b, _ in rows)
    assert all(rows[i][1] == rows[i + 1][0] for i in range(len(rows) - 1))
    assert rows[3][:2] == (12000, 16000)  # the pause sits on the silent gap
    assert words == [(3200, 12000), (16000, rows[6][1]), (rows[7][0], 28000)]


def test_missing_tools_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SynthError, match="espeak-ng not found"):
        check_tools()


# --- LibriSpeech layout ----------------------------------------------------------------------
def test_librispeech_layout(synth_librispeech):
    base = synth_librispeech / "LibriSpeech"
    assert sorted(p.name for p in base.iterdir()) == ["SPEAKERS.TXT", "dev-clean", "test-clean", "train-clean-100"]
    speakers, read = {}, {}
    for subset, minutes in (("train-clean-100", 1.5), ("dev-clean", 0.5), ("test-clean", 0.5)):
        seconds = 0.0
        flacs = sorted((base / subset).rglob("*.flac"))
        for flac in flacs:
            spk, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}\.flac", flac.name)
            info = sf.info(str(flac))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            seconds += info.frames / 16000
        assert minutes * 60 <= seconds < minutes * 60 + 10
        utts = set()
        for trans in (base / subset).rglob("*.trans.txt"):
            spk, chapter = trans.parent.parent.name, trans.parent.name
            assert trans.name == f"{spk}-{chapter}.trans.txt"
            lines = trans.read_text().splitlines()
            assert lines == sorted(lines)
            for line in lines:
                utt, text = line.split(" ", 1)
                read.setdefault(subset, set()).add(text)
                utts.add(utt)
        assert utts == {f.stem for f in flacs}
        speakers[subset] = {f.parent.parent.name for f in flacs}
    assert not speakers["train-clean-100"] & (speakers["dev-clean"] | speakers["test-clean"])
    assert not speakers["dev-clean"] & speakers["test-clean"]
    listed = {line.split("|")[0].strip() for line in (base / "SPEAKERS.TXT").read_text().splitlines()[1:]}
    assert listed == set().union(*speakers.values())
    # Dev and test read sentences that neither training nor the LM text holds.
    lm = set((synth_librispeech / "lm-text.txt").read_text().splitlines())
    harvard = {normalize_sentence(s) for s in load_sentences()}
    assert read["train-clean-100"] <= lm <= harvard
    assert not (read["dev-clean"] | read["test-clean"]) & (lm | read["train-clean-100"])
    assert not read["dev-clean"] & read["test-clean"]
    assert len(lm) == len(harvard) - 2 * 100


def test_sentence_sources_are_split_disjointly():
    split = split_sentences(["harvard", "devil"], 50, seed=3)
    assert len(split.dev) == len(split.test) == 50
    norm = lambda xs: {normalize_sentence(x) for x in xs}  # noqa: E731
    assert not norm(split.dev) & norm(split.test) and not (norm(split.dev) | norm(split.test)) & norm(split.train)
    assert split == split_sentences(["harvard", "devil"], 50, seed=3)
    assert split.dev != split_sentences(["harvard", "devil"], 50, seed=4).dev
    assert all(4 <= len(normalize_sentence(x).split()) <= 20 for x in split.train)


@pytest.mark.parametrize("source, at_least", [("harvard", 700), ("kjv", 30000), ("devil", 1500)])
def test_sentence_sources_read_plain_words(source, at_least):
    sentences = load_source(source)
    assert len(sentences) >= at_least
    assert all(re.fullmatch(r"[A-Z' ]+", normalize_sentence(s)) for s in sentences)


def test_a_text_file_as_source(tmp_path):
    prose = tmp_path / "prose.txt"
    prose.write_text("The cat sat on the mat today. It was warm; the sun shone on the old mat!\n"
                     "Numbers like 42 are left out of it. Short one.\n")
    assert load_source(str(prose)) == ["The cat sat on the mat today.", "the sun shone on the old mat!"]
    with pytest.raises(W2vtkError, match="nosuch"):
        load_source(str(tmp_path / "nosuch"))


def test_oov_rate():
    assert oov_rate(["A B C", "A D"], {"A", "B"}) == pytest.approx(40.0)


def test_recording_and_voice_styles(tmp_path):
    out = tmp_path / "styled"
    summary = synth_librispeech(out, train_minutes=0.2, dev_minutes=0.1, test_minutes=0.1, speakers=2,
                                eval_speakers=1, seed=2, jobs=2, voices=VoiceStyle(variants=("klatt", "Annie")),
                                recording=RecordingStyle(gain_db=(-12.0, -12.0), snr_db=(20.0, 20.0), bits=8))
    voices = [line.split("espeak-ng ")[1].split()[0] for line in
              (out / "LibriSpeech" / "SPEAKERS.TXT").read_text().splitlines()[1:]]
    assert {v.split("+")[1] for v in voices} == {"klatt", "Annie"}
    assert set(summary.oov) == {"dev-clean", "test-clean"} and "out-of-vocabulary" in summary.table()
    wav, _ = sf.read(next(out.rglob("*.flac")), dtype="float32")
    levels = wav * 128  # 8-bit samples: multiples of 1/128
    assert np.allclose(levels, np.round(levels)) and len(np.unique(levels)) > 20
    assert np.abs(wav).max() < 10 ** (-12 / 20) * 1.2  # 12 dB down from espeak-ng's full scale
    # The noise floor fills the pauses: no run of digital silence.
    assert (wav[:1600] != 0).mean() > 0.5
    with pytest.raises(W2vtkError, match="--bits"):
        RecordingStyle(bits=2)


def test_librispeech_is_deterministic_and_rerun_leaves_no_stale_files(tmp_path):
    small = dict(train_minutes=0.2, dev_minutes=0.1, test_minutes=0.1, speakers=2, eval_speakers=1)
    synth_librispeech(tmp_path / "a", seed=5, jobs=1, **small)
    synth_librispeech(tmp_path / "b", seed=5, jobs=2, **small)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    synth_librispeech(tmp_path / "c", seed=6, jobs=2, **small)
    assert _tree(tmp_path / "c") != _tree(tmp_path / "a")
    # Re-running into the same folder with other sizes replaces the subsets wholesale.
    synth_librispeech(tmp_path / "b", seed=5, jobs=2, **{**small, "train_minutes": 0.4})
    synth_librispeech(tmp_path / "b", seed=5, jobs=2, **small)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_synth_librispeech_cli_other_subsets(tmp_path):
    result = CliRunner().invoke(main, ["--seed", "3", "synth", "librispeech", str(tmp_path), "--train-minutes", "0",
                                       "--dev-minutes", "0.1", "--test-minutes", "0", "--other", "--eval-speakers", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "LibriSpeech").iterdir()) == ["SPEAKERS.TXT", "dev-clean", "dev-other"]
    assert "dev-other" in result.stdout
    clean = next((tmp_path / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    noisy = next((tmp_path / "LibriSpeech" / "dev-other").rglob("*.flac"))
    # The noise fills espeak-ng's silences: the quietest 10 ms frame is far louder than in clean speech.
    def floor(path):
        wav, _ = sf.read(str(path))
        frames = wav[: len(wav) // 160 * 160].reshape(-1, 160)
        return np.sqrt((frames ** 2).mean(axis=1)).min()
    assert floor(noisy) > 10 * floor(clean) + 1e-4


def test_synth_librilight_split_is_part_of_train_clean_100(tmp_path):
    result = CliRunner().invoke(main, ["synth", "librispeech", str(tmp_path), "--train-minutes", "0.3",
                                       "--librilight-minutes", "0.15", "--dev-minutes", "0", "--test-minutes", "0",
                                       "--speakers", "2"])
    assert result.exit_code == 0, result.output
    split = tmp_path / "librispeech_finetuning" / "1h" / "0" / "clean"
    train = tmp_path / "LibriSpeech" / "train-clean-100"
    flacs = sorted(split.rglob("*.flac"))
    assert len({f.parent.parent.name for f in flacs}) == 2  # both speakers
    assert 0.15 * 60 <= sum(sf.info(str(f)).duration for f in flacs) < 0.3 * 60
    for f in flacs:
        rel = f.relative_to(split)
        assert f.read_bytes() == (train / rel).read_bytes()
    for trans in split.rglob("*.trans.txt"):
        lines = trans.read_text().splitlines()
        assert [x.split()[0] for x in lines] == sorted(f.name[:-5] for f in trans.parent.glob("*.flac"))
        assert set(lines) <= set((train / trans.relative_to(split)).read_text().splitlines())
    bad = CliRunner().invoke(main, ["synth", "librispeech", str(tmp_path / "x"), "--train-minutes", "0.1",
                                    "--librilight-minutes", "0.2"])
    assert bad.exit_code == 2 and "--train-minutes" in bad.output


# --- TIMIT layout ------------------------------------------------------------------------------
TIMIT_PATH = re.compile(r"TIMIT/(TRAIN|TEST)/DR([1-8])/([MF][A-Z]{3}\d)/(SA[12]|SI\d+|SX\d+)\.(WAV|PHN|WRD|TXT)")


def test_timit_layout(synth_timit):
    files = sorted(p.relative_to(synth_timit).as_posix() for p in synth_timit.rglob("*") if p.is_file())
    per_speaker: dict[tuple[str, str, str], set[str]] = {}
    for f in files:
        match = TIMIT_PATH.fullmatch(f)
        assert match, f
        split, region, spk, utt, _ = match.groups()
        per_speaker.setdefault((split, region, spk.lower()), set()).add(utt)
    for (split, region, spk), utts in per_speaker.items():
        assert {"SA1", "SA2"} <= utts and len(utts) == 10
        assert sum(u.startswith("SI") for u in utts) == 3 and sum(u.startswith("SX") for u in utts) == 5
        if split == "TRAIN":
            assert spk in TRAIN_SPEAKERS
        elif spk in CORE_TEST_SPEAKERS:
            assert int(region) == CORE_TEST_SPEAKERS.index(spk) // 3 + 1
        else:
            assert spk in DEV_SPEAKERS
    splits = [(s, spk in DEV_SPEAKERS) for s, _, spk in per_speaker]
    assert splits.count(("TRAIN", False)) == 4 and splits.count(("TEST", True)) == 3
    assert len(per_speaker) == 10


def test_timit_files(synth_timit):
    texts = {}
    for wav in sorted(synth_timit.rglob("*.WAV")):
        assert wav.read_bytes()[:8] == b"NIST_1A\n"
        info = sf.info(str(wav))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("NIST", "PCM_16", 16000, 1)
        txt = wav.with_suffix(".TXT").read_text()
        start, end, text = txt.rstrip("\n").split(" ", 2)
        assert (int(start), int(end)) == (0, info.frames) and txt.endswith("\n")
        rows = [line.split() for line in wav.with_suffix(".PHN").read_text().splitlines()]
        assert rows[0][0] == "0" and int(rows[-1][1]) == info.frames
        assert rows[0][2] == rows[-1][2] == "h#"
        assert all(int(a[1]) == int(b[0]) for a, b in zip(rows, rows[1:]))
        assert all(int(a) < int(b) for a, b, _ in rows)
        phones = [p for _, _, p in rows]
        assert set(phones) <= set(PHONES_61)
        for prev, p in zip(phones, phones[1:]):
            if p in ("p", "t", "k", "b", "d", "g"):
                assert prev == p + "cl", (wav, phones)
        words = [line.split() for line in wav.with_suffix(".WRD").read_text().splitlines()]
        assert [w for _, _, w in words] == normalize_sentence(text).lower().split()
        bounds = [(int(a), int(b)) for a, b, _ in words]
        assert all(0 < a <= b <= info.frames for a, b in bounds)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(bounds, bounds[1:]))
        texts.setdefault(wav.stem, set()).add(text)
    assert texts["SA1"] == {SA_SENTENCES[0]} and texts["SA2"] == {SA_SENTENCES[1]}
    # An SX number is the same sentence for every speaker who reads it, and some are shared.
    assert all(len(v) == 1 for k, v in texts.items() if k.startswith("SX"))


def test_timit_is_deterministic_and_cli_lowercase(tmp_path):
    tiny = dict(train_speakers=1, dev_speakers=1, test_speakers=1, si=1, sx=1)
    synth_timit(tmp_path / "a", seed=2, jobs=2, **tiny)
    result = subprocess.run([W2VTK, "--seed", "2", "synth", "timit", str(tmp_path / "b"), "--train-speakers", "1",
                             "--dev-speakers", "1", "--test-speakers", "1", "--si", "1", "--sx", "1", "--lowercase",
                             "--jobs", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert {k.lower(): v for k, v in a.items()} == b
    assert all(k == k.lower() for k in b) and len(b) == 3 * 4 * 4


def test_timit_speaker_limits(tmp_path):
    with pytest.raises(W2vtkError, match="--dev-speakers"):
        synth_timit(tmp_path, dev_speakers=51)
    assert not (tmp_path / "TIMIT").exists()
