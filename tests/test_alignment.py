"""Forced alignment: exact on log-probabilities whose truth is known, and `w2vtk align` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from test_decode import LTR, emissions, write_finetuned
from w2vtk.alignment import AlignmentError, align_utterance, ctc_viterbi, forced_path
from w2vtk.cli import main
from w2vtk.manifest import read_manifest
from w2vtk.model import base_config
from w2vtk.text import Vocabulary, transcript_to_letters
from w2vtk.word_timing import FrameClock

CLOCK = FrameClock.of(base_config())
UTTERANCES = ["THE CAT SAT ON THE MAT", "A DOG AND A CAT", "THE HAT IS ON THE DOG"]


def pause(frames: int, rng: np.random.Generator, marked: str = "blank") -> np.ndarray:
    """Frames of a pause. marked: "blank", the blank is far the most likely symbol on every frame; "|",
    the word separator is (models fine-tuned on `.ltr` lines mark pauses so); "|_|", the separator on
    the pause's first and last six frames (as trained models mark a pause's edges: 120 ms), the blank
    between."""
    logits = rng.normal(0.0, 1.0, (frames, len(LTR)))
    separator = np.zeros(frames, dtype=bool)
    if marked == "|":
        separator[:] = True
    elif marked == "|_|":
        separator[:6] = separator[-6:] = True
    logits[separator, LTR.index("|")] += 10.0
    logits[~separator, 0] += 10.0
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


@pytest.mark.parametrize("gap_frames,marked", [(3, "blank"), (25, "blank"), (3, "|"), (25, "|"), (25, "|_|")])
def test_joined_utterances_start_and_end_where_the_join_put_them(gap_frames, marked):
    """Pauses of 60 ms and 0.5 s before, between and after the utterances; the pause before the first
    word and a pause marked `|` at its edges only are each taken as the separator, not as a word."""
    rng = np.random.default_rng(gap_frames)
    pieces, bounds, frame = [pause(gap_frames, rng, marked)], [], gap_frames
    for text in UTTERANCES:
        lp = emissions(text, rng)[:-4]  # ends on its last letter (the final `|` and blanks cut): the gap follows
        pieces += [lp, pause(gap_frames, rng, marked)]
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


def brute_force_best(logprobs: np.ndarray, ids: list[int]) -> float:
    """The best score of any frame labelling that CTC-collapses to `ids`, by enumerating them all."""
    import itertools

    frames, vocab = logprobs.shape
    best = -np.inf
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = [s for i, s in enumerate(path) if s != 0 and (i == 0 or s != path[i - 1])]
        if collapsed == ids:
            best = max(best, float(sum(logprobs[t, s] for t, s in enumerate(path))))
    return best


def test_viterbi_is_torchaudios_forced_align_and_best_on_exact_ties():
    import torch
    import torchaudio.functional as AF

    rng = np.random.default_rng(0)
    for _ in range(50):  # no ties: the same path and score as torchaudio's forced_align
        frames = int(rng.integers(6, 40))
        ids = [int(i) for i in rng.integers(1, 6, int(rng.integers(1, frames // 2)))]
        lp = rng.normal(0.0, 3.0, (frames, 6))
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        path, score = ctc_viterbi(lp, ids)
        ref_path, ref_scores = AF.forced_align(torch.tensor(lp, dtype=torch.float32)[None],
                                               torch.tensor([ids], dtype=torch.int32), blank=0)
        assert path.tolist() == ref_path[0].tolist() and score == pytest.approx(float(ref_scores.sum()), abs=1e-3)
    for _ in range(150):  # whole-number scores tie often (as saturated posteriors do): still a best path
        frames, ids = int(rng.integers(2, 6)), [int(i) for i in rng.integers(1, 3, int(rng.integers(1, 3)))]
        if len(ids) + sum(a == b for a, b in zip(ids, ids[1:])) > frames:
            continue
        lp = -rng.integers(0, 3, (frames, 3)).astype(np.float64)
        path, score = ctc_viterbi(lp, ids)
        assert score == float(lp[np.arange(frames), path].sum()) == brute_force_best(lp, ids)


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
