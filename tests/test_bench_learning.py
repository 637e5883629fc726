"""The learning benchmark's measures (bench/learning.py), read from logs in the trainer's format."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import learning  # noqa: E402


def _write_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def experiment(tmp_path) -> Path:
    exp = tmp_path / "exp"
    accuracy = {10: 0.05, 20: 0.06, 30: 0.09, 40: 0.12, 50: 0.2}  # K = 10: chance 1/11, twice that 0.18
    _write_log(exp / "pretrain" / "log.jsonl",
               [{"step": s, "accuracy": a, "loss": 2.0} for s, a in accuracy.items()]
               + [{"valid": True, "step": 50, "accuracy": 0.17, "loss": 2.1}])
    (exp / "pretrain" / "config.yaml").write_text("task:\n  num_negatives: 10\n")
    for model, emitted in (("pretrained", [0.1, 0.6, 0.8]), ("scratch", [0.0, 0.0, 0.3])):
        _write_log(exp / "finetune" / model / "log.jsonl",
                   [{"step": 10, "loss": 3.0}] + [{"valid": True, "step": 50 * (i + 1), "wer": 90.0, "emitted": e}
                                                  for i, e in enumerate(emitted)])
        for decoding, wer in (("greedy", 60.0 if model == "pretrained" else 80.0), ("4gram", 40.0)):
            (exp / "decode" / model / "test-clean" / decoding).mkdir(parents=True)
            (exp / "decode" / model / "test-clean" / decoding / "wer.json").write_text(json.dumps({"wer": wer}))
    return exp


def test_pretraining_take_off_and_final_accuracy(experiment):
    s = learning.pretraining_summary(experiment)
    assert s["chance"] == pytest.approx(1 / 11)
    assert s["leaves_chance_at"] == 50 and s["leaves_chance_fraction"] == 1.0
    assert s["valid_accuracy"] == 0.17


def test_blank_plateau_and_error_rates(experiment):
    assert learning.finetuning_summary(experiment, "pretrained")["leaves_blank_at"] == 100
    assert learning.finetuning_summary(experiment, "scratch")["leaves_blank_at"] is None
    row = learning.summarize_run("c", 1, experiment, None)
    assert row["all_pretrained_greedy"] == 60.0 and row["all_scratch_greedy"] == 80.0
    assert row["all_relative_reduction_greedy"] == pytest.approx(25.0)
    assert row["all_relative_reduction_4gram"] == pytest.approx(0.0)


def test_test_words_missing_from_the_lm_text(tmp_path):
    corpus = tmp_path / "corpus"
    chapter = corpus / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 THE CAT SAT\n1-2-0001 A DOG\n")
    (corpus / "lm-text.txt").write_text("THE CAT\nA BIRD SAT\n")
    assert learning.oov_of_test_clean(corpus) == pytest.approx(100 * 1 / 5)  # DOG
    assert "| c | 1 | 20.0 |" in learning.table([{"corpus": "c", "seed": 1, "test_oov": 20.0}])


def test_spread_over_runs():
    s = learning.spread([{"seed": 1, "x": 1.0, "y": None}, {"seed": 2, "x": 3.0, "y": 2.0}, {"seed": 3, "x": 2.0}])
    assert s["x"] == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert s["y"]["n"] == 1 and "seed" not in s
    assert "| c |" in learning.table([{"corpus": "c", "seed": 1}])
