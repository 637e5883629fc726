"""Health checks: the rules over logged records (w2vtk.training.health), the live warnings of provoked
tiny runs, and `w2vtk check`."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_plot import PNG_MAGIC
from tiny_runs import W2VTK, finetune_cmd, one_line_error, pretrain_cmd, run
from w2vtk.manifest import read_manifest
from w2vtk.training.health import (HealthMonitor, RunFacts, diagnose, explain_divergence, healthy_ranges,
                                   read_log)
from w2vtk.training.health_check import check_run


def _pretrain_facts(**kw) -> RunFacts:
    """The tiny demo's pretraining (recipes/librispeech/conf/pretrain_tiny.yaml, 800 updates)."""
    base = dict(kind="pretrain", max_updates=800, warmup_end=30, log_interval=10, lr=1e-3, clip_norm=5.0,
                precision="fp32", groups=2, num_codes=128, num_negatives=20, diversity_weight=0.1,
                latent_temp=(2.0, 0.5, 0.995))
    return RunFacts(**(base | kw))


def _finetune_facts(**kw) -> RunFacts:
    base = dict(kind="finetune", max_updates=800, warmup_end=80, log_interval=20, lr=2e-3, clip_norm=5.0,
                precision="fp32", freeze_updates=0)
    return RunFacts(**(base | kw))


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _demo_pretrain_records(until: int = 800) -> list[dict]:
    """The curves of the tiny demo's healthy pretraining (docs/demo_pretrain.png), one record per 10 updates."""
    out = []
    for step in range(10, until + 1, 10):
        t = step / 800
        ppl = _lerp(80, 120, step / 80) if step < 80 else _lerp(120, 50, min(1.0, (step - 80) / 500))
        out.append({"step": step, "accuracy": 0.06 if step < 100 else _lerp(0.09, 0.33, t), "prob_perplexity": ppl,
                    "code_perplexity": ppl - 4, "diversity": 1 - ppl / 128, "grad_norm": 0.1 + t,
                    "loss": _lerp(3.1, 2.2, t)})
    return out


def test_the_healthy_demo_curves_raise_nothing_at_any_point():
    facts, records = _pretrain_facts(), _demo_pretrain_records()
    for i in range(1, len(records) + 1):
        assert diagnose(facts, records[:i]) == [], records[i - 1]


def test_the_published_healthy_base_log_lies_in_the_healthy_ranges():
    """fairseq BASE at 22k updates (fairseq issue 3391): loss 3.45, perplexities about 26 of 640,
    temperature 1.79, accuracy 0.49."""
    facts = _pretrain_facts(max_updates=400_000, warmup_end=32_000, log_interval=200, num_codes=640, num_negatives=100,
                            latent_temp=(2.0, 0.5, 0.999995))
    record = {"step": 22_200, "loss": 3.449, "prob_perplexity": 25.864, "code_perplexity": 25.847, "accuracy": 0.48972,
              "grad_norm": 1.383}
    for key, rng in healthy_ranges(facts).items():
        assert rng.contains(record[key]), (key, rng)
    assert diagnose(facts, [dict(record, step=s) for s in range(200, 22_201, 200)]) == []


def test_a_short_run_is_not_judged_on_what_it_had_no_time_to_learn():
    facts = _pretrain_facts(max_updates=8, warmup_end=2, log_interval=1, num_codes=32, num_negatives=5)
    records = [{"step": s, "accuracy": 1 / 6, "prob_perplexity": 26, "code_perplexity": 25, "diversity": 0.2,
                "grad_norm": 1.0} for s in range(1, 9)]
    assert diagnose(facts, records) == []


def test_accuracy_at_chance_after_the_warm_up():
    facts = _pretrain_facts()
    records = [dict(r, accuracy=0.05) for r in _demo_pretrain_records()]
    found = {s: [x.name for x in diagnose(facts, records[:i + 1])] for i, s in enumerate(r["step"] for r in records)}
    start = facts.learning_from
    assert start == 200
    assert all("chance" not in names for s, names in found.items() if s < start + facts.stretch)
    assert "chance" in found[start + facts.stretch] and "chance" in found[800]


def test_gradient_norm_near_zero_and_exploding():
    facts = _pretrain_facts()
    dead = [dict(r, grad_norm=0.0) if r["step"] > 300 else r for r in _demo_pretrain_records()]
    assert "grad_zero" in [x.name for x in diagnose(facts, dead)]
    wild = [dict(r, grad_norm=1e4) if r["step"] > 300 else r for r in _demo_pretrain_records()]
    assert "grad_exploding" in [x.name for x in diagnose(facts, wild)]
    spike = [dict(r, grad_norm=1e4) if r["step"] == 300 else r for r in _demo_pretrain_records()]
    assert diagnose(facts, spike) == []  # one window is no stretch


def test_fine_tuning_rules():
    facts = _finetune_facts()
    train = [{"step": s, "loss": 1.0, "grad_norm": 3.0, "ctc_infeasible": 0.0} for s in range(20, 801, 20)]
    falling = [{"valid": True, "step": s, "wer": 100 - s / 10, "empty_output": 0.0} for s in range(200, 801, 200)]
    assert diagnose(facts, train + falling) == []
    flat = [dict(r, wer=95.0) for r in falling]
    assert [x.name for x in diagnose(facts, train + flat)] == ["wer_flat"]
    blank = [dict(r, wer=100.0, empty_output=1.0) for r in falling]
    assert {"blank", "wer_flat"} == {x.name for x in diagnose(facts, train + blank)}
    assert diagnose(facts, train + blank[:2]) == []  # one validation past half the run: not yet
    long_targets = [dict(r, ctc_infeasible=0.3) for r in train]
    assert [x.name for x in diagnose(facts, long_targets)] == ["ctc_infinite"]


def test_the_monitor_warns_once_per_episode():
    facts = _pretrain_facts()
    monitor = HealthMonitor(facts)
    warned = []
    for r in _demo_pretrain_records():
        r = dict(r, prob_perplexity=2.0, code_perplexity=2.0, diversity=0.98) if 300 < r["step"] <= 500 else r
        warned += [(x.name, x.step) for x in monitor.observe(r)]
    assert [name for name, _ in warned].count("collapse") == 1
    assert all(300 + facts.stretch <= step <= 500 for _, step in warned), warned


def test_why_a_run_diverged():
    facts = _pretrain_facts(lr=10.0)
    grew = [{"step": s, "grad_norm": g} for s, g in ((1, 2.0), (2, 3.0), (3, 2.5), (4, 400.0))]
    x = explain_divergence(facts, grew, 15, 10)
    assert "grew from" in x.evidence and "optim.lr=10" in x.cause and "lower optim.lr" in x.fix
    overflow = [{"step": 1, "grad_norm": 2.0}, {"step": 2, "grad_norm": math.inf}]
    assert "infinite" in explain_divergence(facts, overflow, 12, 10).evidence
    steady = [{"step": s, "grad_norm": 1.0} for s in range(1, 5)]
    assert "audio" in explain_divergence(facts, steady, 15, 10).cause
    assert "fp16" in explain_divergence(_pretrain_facts(precision="fp16"), steady, 15, 10).cause


# ------------------------------------------------------------------------------------- provoked tiny runs

def _health(exp: Path) -> list[str]:
    return [r["health"] for r in read_log(exp / "log.jsonl") if "health" in r]


def _check(exp: Path):
    from w2vtk.cli import main

    return CliRunner().invoke(main, ["check", str(exp)])


def test_healthy_tiny_run_raises_nothing_and_check_says_healthy(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    res = run(pretrain_cmd(prepared_librispeech, exp, valid="dev-clean", updates=8))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "health |" not in res.stderr and _health(exp) == []
    result = _check(exp)
    assert result.exit_code == 0, result.output
    assert "verdict: healthy" in result.output and "prob_perplexity (train, update 8)" in result.output


def test_collapse_is_warned_and_check_judges_the_run_unhealthy(prepared_librispeech, tmp_path):
    """No diversity penalty, a near-hard Gumbel softmax and a large LR: the codebook collapses."""
    exp = tmp_path / "exp"
    res = run(pretrain_cmd(prepared_librispeech, exp, "task.diversity_weight=0", "task.latent_temp=[0.05,0.05,1.0]",
                           "optim.lr=0.5", "--save-interval", "100", updates=20))
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "health |" in line]
    assert any("codebook collapse" in w and "task.diversity_weight" in w for w in warnings), res.stderr[-3000:]
    assert any("diversity loss not falling" in w for w in warnings), warnings
    assert {"collapse", "diversity"} <= set(_health(exp))
    result = _check(exp)
    assert result.exit_code == 1, result.output
    assert "verdict: UNHEALTHY" in result.output and "codebook collapse" in result.output
    assert "OUT OF RANGE" in result.output

    from w2vtk.plot import plot_experiments, read_training_log

    assert "prob_perplexity" in read_training_log(exp).healthy
    assert plot_experiments([exp]).read_bytes()[:8] == PNG_MAGIC


def test_exploding_run_stops_saying_why(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    res = run(pretrain_cmd(prepared_librispeech, exp, "optim.lr=10", "--save-interval", "100", updates=30))
    assert res.returncode == 2, res.stderr[-3000:]
    line = one_line_error(res.stderr)
    assert "non-finite" in line and "gradient norm" in line and "optim.lr=10" in line and "resume" in line
    assert "diverged" in _health(exp)
    result = _check(exp)
    assert result.exit_code == 1 and "non-finite losses" in result.output, result.output


def test_fine_tuning_that_outputs_only_blanks_is_warned(prepared_librispeech, tmp_path):
    exp = tmp_path / "exp"
    res = run(finetune_cmd(prepared_librispeech, exp, "--valid-subset", "dev-clean", "--valid-interval", "5",
                           "--save-interval", "100", "data.max_valid_batches=2", "optim.lr=1e-2", updates=20))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "all-blank output" in res.stderr and "blank" in _health(exp), res.stderr[-3000:]
    assert _check(exp).exit_code == 1


def test_targets_longer_than_their_frames_are_warned(prepared_librispeech, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared_librispeech, data)
    ltr = data / "train-clean-100.ltr"
    ltr.write_text("".join(" ".join([line] * 8) + "\n" for line in ltr.read_text().splitlines()))
    exp = tmp_path / "exp"
    res = run(finetune_cmd(data, exp, "--save-interval", "100", updates=6))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "infinite CTC losses" in res.stderr and "ctc_infinite" in _health(exp), res.stderr[-3000:]
    # every target now needs more frames than its audio has (one per letter, at most one frame per 320
    # samples), so every training window reports all its utterances infeasible
    sizes = read_manifest(data / "train-clean-100.tsv").sizes
    assert all(len(line.split()) > size / 320 for line, size in zip(ltr.read_text().splitlines(), sizes))
    rows = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and not r.get("valid")]
    assert len(train) == 6 and all(r["ctc_infeasible"] == 1.0 for r in train), train


def test_check_refuses_a_folder_without_a_log(tmp_path):
    res = run([W2VTK, "check", str(tmp_path)])
    assert res.returncode == 2
    assert "log.jsonl: no such file" in one_line_error(res.stderr)
