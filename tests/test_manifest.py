from collections import Counter

import pytest
import soundfile as sf

from w2vtk.manifest import (ManifestError, count_symbols, read_labels, read_manifest, write_dict,
                            write_subset)


def _tsv(tmp_path, text, name="train.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_manifest(tmp_path):
    (tmp_path / "audio").mkdir()
    m = read_manifest(_tsv(tmp_path, f"{tmp_path / 'audio'}\na/1.flac\t16000\nb/2.flac\t320\n"))
    assert m.root == tmp_path / "audio"
    assert m.paths == ["a/1.flac", "b/2.flac"] and m.sizes == [16000, 320] and len(m) == 2
    assert m.abspath(1) == tmp_path / "audio" / "b" / "2.flac"


def test_absolute_paths_are_allowed_by_design(tmp_path):
    m = read_manifest(_tsv(tmp_path, f"{tmp_path}\n/elsewhere/x.wav\t5\n"))
    assert str(m.abspath(0)) == "/elsewhere/x.wav"


def test_moved_root_says_how_to_fix(tmp_path):
    tsv = _tsv(tmp_path, f"{tmp_path / 'gone'}\nx.flac\t1\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(tsv)
    msg = str(e.value)
    assert str(tsv) in msg and "moved" in msg and "line 1" in msg and "w2vtk prepare" in msg


@pytest.mark.parametrize("line, problem", [
    ("x.flac 100", "2 fields|tab-separated"),  # a space, not a tab
    ("x.flac\t100\textra", "3 tab-separated"),
    ("x.flac\tmany", "not an integer"),
    ("x.flac\t-3", "negative"),
    ("../outside.flac\t10", "escapes"),
    ("a/../../outside.flac\t10", "escapes"),
    ("\t10", "empty audio path"),
])
def test_malformed_lines_are_reported_with_line_number(tmp_path, line, problem):
    tsv = _tsv(tmp_path, f"{tmp_path}\nok.flac\t1\n{line}\n")
    with pytest.raises(ManifestError, match=rf"line 3: .*({problem})"):
        read_manifest(tsv)


def test_dotdot_that_stays_inside_is_fine(tmp_path):
    m = read_manifest(_tsv(tmp_path, f"{tmp_path}\na/../b.flac\t1\n"))
    assert m.paths == ["a/../b.flac"]


def test_empty_and_missing_manifests(tmp_path):
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(_tsv(tmp_path, ""))
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "nope.tsv")


def test_read_labels_checks_line_count_and_encoding(tmp_path):
    path = tmp_path / "train.ltr"
    path.write_text("A |\nB |\n")
    assert read_labels(path, 2) == ["A |", "B |"]
    with pytest.raises(ManifestError, match=r"2 lines, but train.tsv lists 3"):
        read_labels(path, 3, manifest="train.tsv")
    path.write_bytes(b"A |\nB \xff |\n")
    with pytest.raises(ManifestError, match="line 2: not UTF-8"):
        read_labels(path, 2)


def test_write_subset_round_trips_and_is_atomic(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    rows = [("s/1.flac", 100), ("s/2.flac", 200)]
    write_subset(tmp_path / "out", "dev", root, rows, {"wrd": ["A B", "C"], "ltr": ["A | B |", "C |"]})
    m = read_manifest(tmp_path / "out" / "dev.tsv")
    assert (m.root, m.paths, m.sizes) == (root, ["s/1.flac", "s/2.flac"], [100, 200])
    assert read_labels(tmp_path / "out" / "dev.ltr", 2) == ["A | B |", "C |"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.ltr", "dev.tsv", "dev.wrd"]


@pytest.mark.parametrize("rows, labels, problem", [
    ([("../x.flac", 1)], {}, "escapes"),
    ([("x.flac", 1)], {"wrd": []}, "0 label lines for 1"),
    ([("x.flac", 1)], {"wrd": ["A\nB"]}, "line break"),
])
def test_write_subset_checks_before_writing(tmp_path, rows, labels, problem):
    with pytest.raises(ManifestError, match=problem):
        write_subset(tmp_path / "out", "dev", tmp_path, rows, labels)
    assert not (tmp_path / "out").exists()


def test_write_dict_orders_by_count_then_symbol(tmp_path):
    counts = count_symbols(["B A |", "A C |", "C"])
    assert counts == Counter({"A": 2, "C": 2, "|": 2, "B": 1})
    write_dict(tmp_path / "dict.ltr.txt", counts)
    assert (tmp_path / "dict.ltr.txt").read_text() == "A 2\nC 2\n| 2\nB 1\n"


def test_prepared_manifest_sizes_match_the_audio(synth_librispeech, prepared_librispeech):
    m = read_manifest(prepared_librispeech / "dev-clean.tsv")
    flacs = sorted((synth_librispeech / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    assert sorted(m.abspath(i).resolve() for i in range(len(m))) == [f.resolve() for f in flacs] != []
    for i in range(len(m)):
        assert sf.info(str(m.abspath(i))).frames == m.sizes[i]
    assert len(read_labels(prepared_librispeech / "dev-clean.ltr", len(m))) == len(m)
