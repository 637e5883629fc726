"""Corpus readers and `w2vtk prepare`, on the synthesized corpora of conftest.py."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from w2vtk.cli import main
from w2vtk.corpora.common import HeaderReader, read_headers
from w2vtk.corpora.folder import split_valid
from w2vtk.corpora.librilight import prepare_librilight
from w2vtk.corpora.librispeech import prepare_librispeech
from w2vtk.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS, prepare_timit
from w2vtk.errors import W2vtkError
from w2vtk.manifest import count_symbols, read_labels, read_manifest
from w2vtk.text import LETTERS, PHONES_39, PHONES_48, PHONES_61, fold_61_to_39, transcript_to_letters

W2VTK = str(Path(sys.executable).with_name("w2vtk"))
SUBSETS = ["dev-clean", "test-clean", "train-clean-100"]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([W2VTK, *map(str, args)], capture_output=True, text=True, timeout=300)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    for f in fragments:
        assert str(f) in err[0], err[0]
    assert "Traceback" not in result.output


def _copy(tree: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(tree, dst)
    return dst


def _subset_utterances(corpus: Path, subset: str) -> dict[str, str]:
    lines = {}
    for trans in (corpus / "LibriSpeech" / subset).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            lines[utt] = text
    return lines


# --- LibriSpeech -------------------------------------------------------------------------------
def test_librispeech_manifests(synth_librispeech, prepared_librispeech):
    out = prepared_librispeech
    assert sorted(_files(out)) == sorted(["dict.ltr.txt"] + [f"{s}.{e}" for s in SUBSETS for e in ("tsv", "wrd", "ltr")])
    for subset in SUBSETS:
        m = read_manifest(out / f"{subset}.tsv")
        assert m.root == (synth_librispeech / "LibriSpeech" / subset).resolve()
        assert m.paths == sorted(m.paths)
        words = read_labels(out / f"{subset}.wrd", len(m))
        letters = read_labels(out / f"{subset}.ltr", len(m))
        expected = _subset_utterances(synth_librispeech, subset)
        assert len(m) == len(expected)
        for i, rel in enumerate(m.paths):
            utt = Path(rel).stem
            spk, chapter, _ = utt.split("-")
            assert rel == f"{spk}/{chapter}/{utt}.flac"
            assert words[i] == expected[utt]
            assert letters[i] == transcript_to_letters(words[i])
            assert m.sizes[i] == sf.info(str(m.abspath(i))).frames
    # The dictionary counts the training subset only.
    train = count_symbols((out / "train-clean-100.ltr").read_text().splitlines())
    dict_lines = (out / "dict.ltr.txt").read_text().splitlines()
    # ... and lists the letters it never saw at 0, so dev/test transcripts stay encodable.
    full = {**{s: 0 for s in LETTERS + ["|"]}, **train}
    assert dict_lines == [f"{s} {n}" for s, n in sorted(full.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_librispeech_cli_rerun_is_byte_identical(synth_librispeech, prepared_librispeech, tmp_path):
    first = _cli("prepare", "librispeech", synth_librispeech, tmp_path / "a", "--jobs", 2)
    assert first.returncode == 0, first.stderr
    assert "train-clean-100" in first.stdout and "skipped: 0" in first.stdout
    before = _files(tmp_path / "a")
    second = _invoke("prepare", "librispeech", synth_librispeech / "LibriSpeech", tmp_path / "a", "--jobs", 1)
    assert second.exit_code == 0, second.output
    assert _files(tmp_path / "a") == before == _files(prepared_librispeech)


def test_librispeech_subsets_option(synth_librispeech, tmp_path):
    result = _invoke("prepare", "librispeech", synth_librispeech, tmp_path / "out", "--subsets", "dev-clean")
    assert result.exit_code == 0, result.output
    assert sorted(_files(tmp_path / "out")) == ["dev-clean.ltr", "dev-clean.tsv", "dev-clean.wrd"]
    result = _invoke("prepare", "librispeech", synth_librispeech, tmp_path / "out2", "--subsets", "dev-other")
    _assert_one_line_error(result, "dev-other", "found dev-clean, test-clean, train-clean-100")
    assert not (tmp_path / "out2").exists()


def _first_trans(corpus: Path, subset="dev-clean") -> Path:
    return sorted((corpus / "LibriSpeech" / subset).rglob("*.trans.txt"))[0]


def test_missing_transcript_line_is_reported_by_file_and_line(synth_librispeech, tmp_path):
    corpus = _copy(synth_librispeech, tmp_path)
    trans = _first_trans(corpus)
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    missing = lines[1].split()[0]
    result = _invoke("prepare", "librispeech", corpus, tmp_path / "out")
    _assert_one_line_error(result, trans, "line 2", missing)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["é", "3", ","])
def test_characters_outside_the_vocabulary_are_reported(synth_librispeech, tmp_path, bad):
    corpus = _copy(synth_librispeech, tmp_path)
    trans = _first_trans(corpus)
    lines = trans.read_text().splitlines()
    lines[2] = lines[2] + f" WORD{bad}"
    trans.write_text("\n".join(lines) + "\n")
    result = _invoke("prepare", "librispeech", corpus, tmp_path / "out")
    _assert_one_line_error(result, trans, "line 3", repr(bad))


def test_transcript_line_without_text(synth_librispeech, tmp_path):
    corpus = _copy(synth_librispeech, tmp_path)
    trans = _first_trans(corpus)
    lines = trans.read_text().splitlines()
    lines[0] = lines[0].split()[0]
    trans.write_text("\n".join(lines) + "\n")
    with pytest.raises(W2vtkError, match=r"line 1: .* no transcript"):
        prepare_librispeech(corpus, tmp_path / "out")


@pytest.mark.parametrize("damage", ["corrupt", "empty"])
def test_bad_audio_stops_or_is_skipped(synth_librispeech, tmp_path, damage):
    corpus = _copy(synth_librispeech, tmp_path)
    victim = sorted((corpus / "LibriSpeech" / "train-clean-100").rglob("*.flac"))[3]
    victim.write_bytes(b"not a flac file at all" * 20 if damage == "corrupt" else b"")
    out = tmp_path / "out"
    # A previous good run: a failing run must leave it as it was.
    prepare_librispeech(synth_librispeech, out)
    before = _files(out)
    result = _cli("prepare", "librispeech", corpus, out)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert str(victim) in result.stderr and "--skip-bad" in result.stderr
    assert _files(out) == before

    result = _invoke("prepare", "librispeech", corpus, out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped: 1" in result.stdout
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(f"{victim}\t")
    m = read_manifest(out / "train-clean-100.tsv")
    assert victim.relative_to(m.root).as_posix() not in m.paths
    assert len(m) == len(before["train-clean-100.ltr"].decode().splitlines()) - 1
    assert len(read_labels(out / "train-clean-100.ltr", len(m))) == len(m)
    assert len(read_labels(out / "train-clean-100.wrd", len(m))) == len(m)


def test_audio_without_any_transcript_file(synth_librispeech, tmp_path):
    corpus = _copy(synth_librispeech, tmp_path)
    trans = _first_trans(corpus)
    trans.unlink()
    with pytest.raises(W2vtkError, match=r"no \*\.trans\.txt"):
        prepare_librispeech(corpus, tmp_path / "out")


def test_transcript_line_whose_audio_is_missing(synth_librispeech, tmp_path):
    corpus = _copy(synth_librispeech, tmp_path)
    trans = _first_trans(corpus)
    with trans.open("a") as f:
        f.write(f"{trans.name.split('.')[0]}-0999 A GHOST LINE\n")
    with pytest.raises(W2vtkError, match="0999.flac: no such audio file"):
        prepare_librispeech(corpus, tmp_path / "out")
    summary = prepare_librispeech(corpus, tmp_path / "out", skip_bad=True)
    assert len(summary.skipped) == 1


def test_summary_counts(synth_librispeech, prepared_librispeech):
    summary = prepare_librispeech(synth_librispeech, prepared_librispeech.parent / "again", jobs=2)
    by_name = {s.name: s for s in summary.subsets}
    m = read_manifest(prepared_librispeech / "train-clean-100.tsv")
    assert by_name["train-clean-100"].files == len(m)
    assert by_name["train-clean-100"].speakers == len({p.split("/")[0] for p in m.paths}) == 4
    assert by_name["train-clean-100"].hours == pytest.approx(sum(m.sizes) / 16000 / 3600)
    assert "train-clean-100" in summary.table() and "skipped: 0" in summary.table()


def test_parallel_header_reads_match_the_loop(synth_librispeech):
    paths = [str(p) for p in sorted(synth_librispeech.rglob("*.flac"))] + ["/nonexistent.flac"]
    serial = read_headers(paths, jobs=1)
    assert read_headers(paths, jobs=2) == serial
    assert serial[-1][0] is None and "no such audio file" in serial[-1][1]
    assert all(n == sf.info(p).frames for p, (n, _) in zip(paths[:-1], serial[:-1]))


def test_header_reader_takes_paths_in_pieces_and_reads_each_once(synth_librispeech):
    paths = [str(p) for p in sorted(synth_librispeech.rglob("*.flac"))]
    with HeaderReader(jobs=2) as reader:
        reader.BATCH = 4  # several tasks in flight while paths still arrive
        for i in range(0, len(paths), 3):
            reader.submit(paths[i:i + 3] + paths[:2])  # the repeats are not queued again
        queued = sum(len(batch) for batch, _ in reader._tasks) + len(reader._pending)
        sent = len(reader._tasks)
        found = reader.results()
    assert queued == len(paths) and sent > 1
    assert list(found) == paths
    assert [found[p] for p in paths] == read_headers(paths, jobs=1)


# --- Libri-light -------------------------------------------------------------------------------
@pytest.fixture
def librilight_corpus(synth_librispeech, tmp_path) -> Path:
    """The synthesized chapters spread over Libri-light's 1h/{0..5}/clean and 9h/clean folders."""
    chapters = sorted(c for s in SUBSETS for c in (synth_librispeech / "LibriSpeech" / s).glob("*/*"))
    parts = [f"1h/{i}/clean" for i in range(6)] + ["9h/clean"]
    base = tmp_path / "librispeech_finetuning"
    for i, chapter in enumerate(chapters):
        part = parts[min(i, len(parts) - 1)]
        shutil.copytree(chapter, base / part / chapter.parent.name / chapter.name)
    return tmp_path


def test_librilight_splits(librilight_corpus, tmp_path):
    out = tmp_path / "out"
    result = _invoke("prepare", "librilight", librilight_corpus, out)
    assert result.exit_code == 0, result.output
    base = (librilight_corpus / "librispeech_finetuning").resolve()
    splits = {}
    for name in ("train-10m", "train-1h", "train-10h"):
        m = read_manifest(out / f"{name}.tsv")
        assert m.root == base
        assert len(read_labels(out / f"{name}.ltr", len(m))) == len(m)
        splits[name] = m.paths
    assert {p.split("/clean/")[0] for p in splits["train-10m"]} == {"1h/0"}
    assert {p.split("/clean/")[0] for p in splits["train-1h"]} == {f"1h/{i}" for i in range(6)}
    assert set(splits["train-10h"]) == set(splits["train-1h"]) | {str(p.relative_to(base)) for p in (base / "9h").rglob("*.flac")}
    assert set(splits["train-10m"]) < set(splits["train-1h"]) < set(splits["train-10h"])
    ltr = (out / "train-10h.ltr").read_text().splitlines()
    assert (out / "dict.ltr.txt").read_text().splitlines()[0] == f"| {count_symbols(ltr)['|']}"


def test_librilight_incomplete(librilight_corpus, tmp_path, caplog):
    base = librilight_corpus / "librispeech_finetuning"
    shutil.rmtree(base / "9h")
    prepare_librilight(librilight_corpus, tmp_path / "out")
    assert "no 9h: writing train-10m, train-1h only" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tsv")) == ["train-10m.tsv", "train-1h.tsv"]
    shutil.rmtree(base / "1h" / "3")
    prepare_librilight(librilight_corpus, tmp_path / "out2")
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.tsv")) == ["train-10m.tsv"]
    shutil.rmtree(base / "1h" / "0")
    with pytest.raises(W2vtkError, match="1h/0"):
        prepare_librilight(librilight_corpus, tmp_path / "out3")


# --- TIMIT -------------------------------------------------------------------------------------
def test_timit_splits(synth_timit, prepared_timit):
    root = (synth_timit / "TIMIT").resolve()
    speakers = {}
    for subset in ("train", "dev", "test"):
        m = read_manifest(prepared_timit / f"{subset}.tsv")
        assert m.root == root and m.paths == sorted(m.paths)
        assert not any(Path(p).name.startswith("SA") for p in m.paths)  # SA excluded everywhere
        speakers[subset] = {p.split("/")[2].lower() for p in m.paths}
        phones = read_labels(prepared_timit / f"{subset}.phn", len(m))
        words = read_labels(prepared_timit / f"{subset}.wrd", len(m))
        for i, rel in enumerate(m.paths):
            stem = m.abspath(i).with_suffix("")
            phn61 = [line.split()[2] for line in stem.with_suffix(".PHN").read_text().splitlines()]
            assert phones[i] == " ".join(fold_61_to_39(phn61))
            assert words[i] == " ".join(line.split()[2] for line in stem.with_suffix(".WRD").read_text().splitlines()).upper()
            assert m.sizes[i] == sf.info(str(m.abspath(i))).frames
        assert {p for line in phones for p in line.split()} <= set(PHONES_39)
        assert all(p.startswith("TRAIN/" if subset == "train" else "TEST/") for p in m.paths)
        assert len(m) == 8 * len(speakers[subset])  # 3 SI + 5 SX per speaker
    assert speakers["dev"] <= set(DEV_SPEAKERS) and len(speakers["dev"]) == 3
    assert speakers["test"] <= set(CORE_TEST_SPEAKERS) and len(speakers["test"]) == 3
    train = count_symbols((prepared_timit / "train.phn").read_text().splitlines())
    assert (prepared_timit / "dict.phn.txt").read_text().splitlines() == \
        [f"{s} {n}" for s, n in sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_timit_other_test_speakers_are_not_used(synth_timit, tmp_path):
    corpus = _copy(synth_timit, tmp_path)
    dev_dir = next(d for d in (corpus / "TIMIT" / "TEST").glob("DR*/*") if d.name.lower() in DEV_SPEAKERS)
    shutil.copytree(dev_dir, dev_dir.parent / "MZZZ9")  # a TEST speaker in neither list
    prepare_timit(corpus, tmp_path / "out")
    for subset in ("train", "dev", "test"):
        assert "MZZZ9" not in (tmp_path / "out" / f"{subset}.tsv").read_text()


@pytest.mark.parametrize("phones, allowed", [("48", PHONES_48), ("61", PHONES_61)])
def test_timit_phone_sets(synth_timit, prepared_timit, tmp_path, phones, allowed):
    result = _invoke("prepare", "timit", synth_timit, tmp_path / "out", "--phones", phones)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out" / "train.phn").read_text().splitlines()
    symbols = {p for line in lines for p in line.split()}
    assert symbols <= set(allowed) and "q" not in symbols
    assert len(symbols & ({"vcl", "cl"} if phones == "48" else {"tcl", "h#"})) > 0
    # Same utterances, same words, whatever the phone set.
    assert (tmp_path / "out" / "train.tsv").read_bytes() == (prepared_timit / "train.tsv").read_bytes()
    assert (tmp_path / "out" / "dev.wrd").read_bytes() == (prepared_timit / "dev.wrd").read_bytes()


def test_timit_without_sil(synth_timit, prepared_timit, tmp_path):
    prepare_timit(synth_timit, tmp_path / "out", keep_sil=False)
    with_sil = (prepared_timit / "dev.phn").read_text().splitlines()
    without = (tmp_path / "out" / "dev.phn").read_text().splitlines()
    assert without == [" ".join(p for p in line.split() if p != "sil") for line in with_sil]


def test_timit_lowercase_layout(synth_timit, prepared_timit, tmp_path):
    lower = tmp_path / "timit_lower"
    for path in sorted((synth_timit / "TIMIT").rglob("*")):
        if path.is_file():
            dst = lower / str(path.relative_to(synth_timit)).lower()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
    prepare_timit(lower / "timit", tmp_path / "out")  # pointing at the disc folder itself works too
    for subset in ("train", "dev", "test"):
        for ext in ("phn", "wrd"):
            assert (tmp_path / "out" / f"{subset}.{ext}").read_bytes() == (prepared_timit / f"{subset}.{ext}").read_bytes()
        ours = (tmp_path / "out" / f"{subset}.tsv").read_text().splitlines()[1:]
        theirs = (prepared_timit / f"{subset}.tsv").read_text().splitlines()[1:]
        assert ours == [line.lower() for line in theirs]


def test_timit_unknown_phone_is_reported(synth_timit, tmp_path):
    corpus = _copy(synth_timit, tmp_path)
    phn = sorted((corpus / "TIMIT" / "TRAIN").rglob("SX*.PHN"))[0]
    lines = phn.read_text().splitlines()
    start, end, _ = lines[4].split()
    lines[4] = f"{start} {end} xq"
    phn.write_text("\n".join(lines) + "\n")
    result = _cli("prepare", "timit", corpus, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {phn} line 5: unknown phone 'xq', not one of TIMIT's 61 phones; correct the label"
    assert not (tmp_path / "out").exists()


def test_timit_unknown_phone_in_sa_is_ignored(synth_timit, tmp_path):
    corpus = _copy(synth_timit, tmp_path)
    sa = sorted((corpus / "TIMIT" / "TRAIN").rglob("SA1.PHN"))[0]
    sa.write_text("0 10 xq\n")
    prepare_timit(corpus, tmp_path / "out")  # SA files are never read


def test_timit_missing_label_file(synth_timit, tmp_path):
    corpus = _copy(synth_timit, tmp_path)
    wrd = sorted((corpus / "TIMIT" / "TEST").rglob("SI*.WRD"))[0]
    wrd.unlink()
    with pytest.raises(W2vtkError, match=r"no matching \.WRD"):
        prepare_timit(corpus, tmp_path / "out")


def test_not_a_timit_folder(tmp_path):
    with pytest.raises(W2vtkError, match="no TIMIT TRAIN/ and TEST/"):
        prepare_timit(tmp_path, tmp_path / "out")


# --- unlabelled audio --------------------------------------------------------------------------
def test_split_valid_is_seeded():
    assert split_valid(100, 0.1, seed=3) == split_valid(100, 0.1, seed=3)
    assert split_valid(100, 0.1, seed=3) != split_valid(100, 0.1, seed=4)
    assert len(split_valid(100, 0.1, seed=3)) == 10
    assert len(split_valid(5, 0.01, seed=3)) == 1  # a positive fraction keeps one file
    assert split_valid(5, 0.0, seed=3) == set()
    with pytest.raises(W2vtkError):
        split_valid(5, 1.0, seed=3)


def test_prepare_audio_folder(synth_librispeech, tmp_path):
    audio = synth_librispeech / "LibriSpeech"
    result = _invoke("--seed", 7, "prepare", "audio", audio, tmp_path / "a", "--valid-percent", 0.1)
    assert result.exit_code == 0, result.output
    train, valid = read_manifest(tmp_path / "a" / "train.tsv"), read_manifest(tmp_path / "a" / "valid.tsv")
    everything = sorted(str(p.relative_to(audio)) for p in audio.rglob("*.flac"))
    assert sorted(train.paths + valid.paths) == everything
    assert len(valid) == round(0.1 * len(everything)) and not set(train.paths) & set(valid.paths)
    assert train.paths == sorted(train.paths)
    again = _invoke("--seed", 7, "prepare", "audio", audio, tmp_path / "b", "--valid-percent", 0.1)
    assert again.exit_code == 0 and _files(tmp_path / "a") == _files(tmp_path / "b")
    other = _invoke("--seed", 8, "prepare", "audio", audio, tmp_path / "c", "--valid-percent", 0.1)
    assert other.exit_code == 0 and _files(tmp_path / "c") != _files(tmp_path / "a")
    assert "-" in result.stdout.splitlines()[1]  # no speakers for unlabelled audio


def test_prepare_audio_extension_filter(synth_librispeech, tmp_path):
    result = _invoke("prepare", "audio", synth_librispeech, tmp_path / "out", "--ext", "wav")
    _assert_one_line_error(result, "no audio files with extension wav")
    result = _invoke("prepare", "audio", synth_librispeech, tmp_path / "out", "--valid-percent", 1.5)
    assert result.exit_code == 2 and "valid-percent" in result.output


def test_output_directory_that_is_a_file(synth_librispeech, tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(W2vtkError, match="exists and is not a directory"):
        prepare_librispeech(synth_librispeech, tmp_path / "out")
    result = _invoke("prepare", "librispeech", synth_librispeech, tmp_path / "out")  # click's usage error
    assert result.exit_code == 2 and "is a file" in result.output


def test_timit_speaker_lists():
    assert len(DEV_SPEAKERS) == len(set(DEV_SPEAKERS)) == 50
    assert len(CORE_TEST_SPEAKERS) == len(set(CORE_TEST_SPEAKERS)) == 24
    assert not set(DEV_SPEAKERS) & set(CORE_TEST_SPEAKERS)
    assert all(s[0] in "mf" and s[-1].isdigit() and len(s) == 5 for s in DEV_SPEAKERS + CORE_TEST_SPEAKERS)
    # Core test: two men and one woman from each of the eight dialect regions.
    assert [s[0] for s in CORE_TEST_SPEAKERS] == list("mmf" * 8)
