"""LM-weight tuning: search points, the search on synthetic emissions, and `w2vtk tune-lm` end to end."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from test_decode import LTR, SENTENCE, emissions, letter_index, write_finetuned
from w2vtk.cli import main
from w2vtk.decoding import DecoderOptions
from w2vtk.errors import W2vtkError
from w2vtk.lm import train_lm, write_lexicon
from w2vtk.text import Vocabulary
from w2vtk.tune import best_trial, trial_points, trials_table, tune_weights

LM_TEXT = ["THE CAT SAT ON THE MAT"] * 6 + ["THE HAT IS RED"] * 2 + ["A DOG SAT ON A LOG", "THE DOG AND THE CAT"]


def test_trial_points_random_and_grid():
    pts = trial_points(20, (0.0, 5.0), (-5.0, 5.0), "random", seed=3)
    assert len(pts) == 20 and len(set(pts)) == 20
    assert all(0 <= w <= 5 and -5 <= b <= 5 for w, b in pts)
    assert pts == trial_points(20, (0.0, 5.0), (-5.0, 5.0), "random", seed=3)
    assert pts != trial_points(20, (0.0, 5.0), (-5.0, 5.0), "random", seed=4)
    grid = trial_points(12, (0.0, 3.0), (-1.0, 1.0), "grid")
    assert len(grid) == 12 and sorted({w for w, _ in grid}) == [0.0, 1.0, 2.0, 3.0]
    assert sorted({b for _, b in grid}) == [-1.0, 0.0, 1.0]
    assert trial_points(5, (2.0, 2.0), (-1.0, 1.0), "grid") == [(2.0, b) for b in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    with pytest.raises(W2vtkError, match="empty search range"):
        trial_points(4, (3.0, 1.0), (0.0, 1.0))
    with pytest.raises(W2vtkError, match="--trials"):
        trial_points(0, (0.0, 1.0), (0.0, 1.0))


def test_tuning_finds_a_weight_at_which_the_lm_corrects_the_acoustics(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(LM_TEXT) + "\n")
    lm = train_lm(tmp_path / "t.txt", tmp_path / "lm.arpa", order=3)
    rng = np.random.default_rng(0)
    # acoustics prefer HAT (by a margin) where the transcript says CAT, in every utterance
    logprobs = [emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("H", 1.5)}) for _ in range(4)]
    refs = [SENTENCE.split()] * 4
    options = DecoderOptions(decoder="flashlight", lm=str(lm), beam=20)
    points = [(0.0, 0.0), (0.5, 0.0), (4.0, 0.0)]
    trials = tune_weights(logprobs, refs, LTR, options, points, progress=False)
    assert [t.lm_weight for t in trials] == [0.0, 0.5, 4.0]
    assert trials[0].counts.sub == 4 and trials[-1].counts.errors == 0
    best = best_trial(trials)
    assert best.lm_weight == 4.0 and best.rate == 0.0
    table = trials_table(trials, "wer").splitlines()
    assert table[0].split("\t")[:4] == ["trial", "lm_weight", "word_score", "wer"]
    assert table[3].endswith("*") and not table[1].endswith("*")
    with pytest.raises(W2vtkError, match="beam decoder"):
        tune_weights(logprobs, refs, LTR, DecoderOptions(), points)


def test_tune_lm_command_caches_the_acoustic_model_output(prepared_librispeech, synth_librispeech, tmp_path, caplog):
    vocab = Vocabulary.from_dict_file(prepared_librispeech / "dict.ltr.txt", "ltr")
    ckpt = write_finetuned(tmp_path / "model.pt", vocab)
    arpa = train_lm(synth_librispeech / "lm-text.txt", tmp_path / "lm.arpa", order=3)
    write_lexicon(arpa, tmp_path / "lexicon.txt")
    out = tmp_path / "tune" / "lm_weights.json"
    args = ["tune-lm", "--checkpoint", str(ckpt), "--data", str(prepared_librispeech), "--subset", "dev-clean",
            "--lm", str(arpa), "--lexicon", str(tmp_path / "lexicon.txt"), "--beam", "5", "--trials", "4",
            "--out", str(out)]
    runner = CliRunner()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    rows = (out.parent / "lm_weights.trials.tsv").read_text().splitlines()[1:]
    assert len(rows) == result["trials"] == 4
    rates = [float(r.split("\t")[3]) for r in rows]
    assert result["wer"] == pytest.approx(min(rates), abs=1e-4)
    best_row = next(r.split("\t") for r in rows if r.endswith("*"))
    assert (float(best_row[1]), float(best_row[2])) == (result["lm_weight"], result["word_score"])
    assert "best lm_weight" in res.output
    cache = list((out.parent / "logprobs-cache").glob("dev-clean-*.npz"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    caplog.clear()
    caplog.set_level(logging.INFO, logger="w2vtk")
    res = runner.invoke(main, args + ["--search", "grid"])
    assert res.exit_code == 0, res.output
    assert "log-probabilities from the cache" in caplog.text and cache[0].stat().st_mtime_ns == stamp
    res = runner.invoke(main, args[:-2] + ["--out", str(tmp_path / "x.json"), "--lm-weight-range", "3", "1"])
    assert res.exit_code == 2 and "empty search range" in res.output
