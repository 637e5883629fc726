"""Forced alignment: exact on log-probabilities whose truth is known, and `w2vtk align` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from test_decode import LTR, emissions, write_finetuned
from w2vtk.alignment import AlignmentError, align_utterance, forced_path
from w2vtk.cli import main
from w2vtk.manifest import read_manifest
from w2vtk.model import base_config
from w2vtk.text import Vocabulary, transcript_to_letters
from w2vtk.word_timing import FrameClock

CLOCK = FrameClock.of(base_config())
UTTERANCES = ["THE CAT SAT ON THE MAT", "A DOG AND A CAT", "THE HAT IS ON THE DOG"]


def silence(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frames where the blank is far the most likely symbol."""
    logits = rng.normal(0.0, 1.0, (frames, len(LTR)))
    logits[:, 0] += 10.0
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


@pytest.mark.parametrize("gap_frames", [3, 25])  # 60 ms and 0.5 s between utterances
def test_joined_utterances_start_and_end_where_the_join_put_them(gap_frames):
    rng = np.random.default_rng(gap_frames)
    pieces, bounds, frame = [silence(gap_frames, rng)], [], gap_frames
    for text in UTTERANCES:
        lp = emissions(text, rng)[:-4]  # ends on its last letter (the final `|` and blanks cut): the gap follows
        pieces += [lp, silence(gap_frames, rng)]
        bounds.append((frame, frame + len(lp)))
        frame += len(lp) + gap_frames
    joined = np.concatenate(pieces)
    labels = " ".join(transcript_to_letters(t) for t in UTTERANCES).split()
    al = align_utterance(joined, labels, LTR, CLOCK, "joined", len(joined) * CLOCK.hop)
    assert [w.word for w in al.words] == " ".join(UTTERANCES).split()
    first = 0
    for text, (start, end) in zip(UTTERANCES, bounds):
        words = al.words[first:first + len(text.split())]
        first += len(text.split())
        assert abs(words[0].start - CLOCK.time(start)) <= 0.06
        assert abs(words[-1].end - CLOCK.time(end)) <= 0.06
        assert all(w.confidence > 0.9 for w in words)
    assert len(al.tokens) == sum(len(t.replace(" ", "")) for t in UTTERANCES)


def test_forced_path_spells_exactly_the_transcript_and_refuses_too_few_frames():
    rng = np.random.default_rng(0)
    lp = emissions("THE CAT", rng)
    ids = [LTR.index(s) for s in "T H E | C A T |".split()]
    path = forced_path(lp, ids)
    collapsed = [int(t) for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
    assert collapsed == ids
    # a transcript the emissions do not favour is still spelled exactly, on the frames it fits best
    other = [LTR.index(s) for s in "D O G |".split()]
    path = forced_path(lp, other)
    assert [int(t) for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])] == other
    with pytest.raises(AlignmentError, match="frames"):
        forced_path(lp[:3], [LTR.index("L"), LTR.index("L"), LTR.index("A")])  # LL needs a blank between


def test_align_command_on_timit_writes_ctm_textgrids_and_phone_boundaries(prepared_timit, tmp_path):
    vocab = Vocabulary.from_dict_file(prepared_timit / "dict.phn.txt", "phn")
    ckpt = write_finetuned(tmp_path / "phn.pt", vocab)
    out = tmp_path / "align"
    res = CliRunner().invoke(main, ["align", "--checkpoint", str(ckpt), "--data", str(prepared_timit),
                                    "--subset", "dev", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "align.json").read_text())
    labels = (prepared_timit / "dev.phn").read_text().splitlines()
    assert summary["utterances"] == len(labels) and summary["tokens"] == sum(len(x.split()) for x in labels)
    tokens = [line.split() for line in (out / "tokens.ctm").read_text().splitlines()]
    assert [f[4] for f in tokens] == " ".join(labels).split()
    # the phone-boundary error: each aligned phone's start against the start in the TIMIT .PHN file (q left out)
    manifest = read_manifest(prepared_timit / "dev.tsv")
    labelled = []
    for i in range(len(manifest)):
        phn = manifest.abspath(i).with_suffix(".PHN").read_text().splitlines()
        labelled += [int(f[0]) / 16 for f in map(str.split, phn) if f[2] != "q"]  # ms at 16 kHz
    err = np.abs(np.array([1000 * float(f[2]) for f in tokens]) - np.array(labelled))
    pb = summary["phone_boundary"]
    assert pb["phones"] == summary["tokens"] == len(labelled)
    assert pb["mean_abs_error_ms"] == pytest.approx(err.mean(), abs=0.6)  # the CTM holds whole milliseconds
    assert pb["within_20ms"] == pytest.approx((err <= 20).mean(), abs=0.01)
    grids = sorted((out / "textgrid").glob("*.TextGrid"))
    assert len(grids) == len(labels)
    grid = grids[0].read_text()
    assert grid.startswith('File type = "ooTextFile"') and 'name = "words"' in grid and 'name = "tokens"' in grid
    ends = [float(x.split("=")[1]) for x in grid.splitlines() if x.strip().startswith("xmax")]
    assert ends[0] == pytest.approx(ends[-1])  # the intervals run to the end of the audio


def test_align_refuses_symbols_outside_the_vocabulary(prepared_timit, tmp_path):
    import shutil

    vocab = Vocabulary.from_dict_file(prepared_timit / "dict.phn.txt", "phn")
    ckpt = write_finetuned(tmp_path / "phn.pt", vocab)
    data = tmp_path / "data"
    shutil.copytree(prepared_timit, data)
    lines = (data / "dev.phn").read_text().splitlines()
    lines[1] += " zz"
    (data / "dev.phn").write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(main, ["align", "--checkpoint", str(ckpt), "--data", str(data), "--subset", "dev",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"{data / 'dev.phn'}:2" in res.output and "zz" in res.output
    assert not (tmp_path / "out").exists()
