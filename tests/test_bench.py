"""Smoke test of the benchmark harness (bench/run.py) on toy sizes: every benchmark runs both sides
and OUT.json has the documented shape. Timings are never asserted (they depend on the machine)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KEYS = ("pretrain_fp32", "pretrain_bf16", "inference", "decode", "prepare")


@pytest.fixture(scope="module")
def bench_results(synth_librispeech, tmp_path_factory):
    sys.path.insert(0, str(REPO))
    from bench import run

    out = tmp_path_factory.mktemp("bench") / "out.json"
    args = ["--json", str(out), "--corpus", str(synth_librispeech), "--cache", str(out.parent / "cache"),
            "--size", "tiny", "--batch", "2", "--seconds", "1", "--infer-batch", "1", "--infer-seconds", "1",
            "--decode-utts", "3", "--decode-jobs", "1", "--prepare-copies", "2", "--reps", "1", "--warmup", "0",
            "--settle", "0", "--threads", "1", "--gemm-size", "256"]
    returned = run.main(args)
    return returned, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_benchmark_reports_both_sides_and_their_ratio(bench_results):
    returned, written = bench_results
    assert set(KEYS) <= set(written)
    assert json.loads(json.dumps(returned)) == written
    for key in KEYS:
        e = written[key]
        assert isinstance(e["unit"], str) and e["unit"]
        assert _positive(e["ours"]) and _positive(e["ref"])
        assert e["ratio"] == pytest.approx(e["ours"] / e["ref"])
        assert e["cpu"]["ratio"] == pytest.approx(e["cpu"]["ours"] / e["cpu"]["ref"])
        assert len(e["wall_s"]["ours"]) == len(e["wall_s"]["ref"]) == 1
        assert e["threads"] == 1


def test_pretraining_reports_memory_flops_and_gemm_fraction(bench_results):
    _, written = bench_results
    assert _positive(written["gemm_peak"]["float32"]["flops_per_s"])
    for key in ("pretrain_fp32", "pretrain_bf16"):
        e = written[key]
        for side in ("ours", "ref"):
            assert e["peak_rss_mb"][side] > e["peak_rss_mb"]["after_import"][side] > 0
            assert _positive(e["flops_per_step"][side])
            assert _positive(e["gemm_fraction"][side]) and _positive(e["gemm_fraction_cpu"][side])
            # each repetition against the peak measured right before it, and the run's opening peak
            assert len(e["gemm_peak_before_each"][side]) == len(e["wall_s"][side])
            assert all(_positive(p) for p in e["gemm_peak_before_each"][side])
            assert _positive(e["model_flops_fraction_opening_peak"][side])
            assert math.isfinite(e["loss"][side])
    assert _positive(written["inference"]["rtf"]["ours"]) and _positive(written["inference"]["peak_rss_mb"]["ref"])
    inference = written["inference"]["flops_per_step"]
    # The same model. Ours runs fewer FLOPs where the positional convolution by DFT matrices and the CNN
    # by minimal filtering pay (not at this toy size), and a little more for the first layer's folded norm.
    assert _positive(inference["ours"]) and 0.7 * inference["ref"] < inference["ours"] < 1.01 * inference["ref"]
    for key in ("pretrain_fp32", "inference"):
        e = written[key]
        assert e["model_flops_per_step"] == e["flops_per_step"]["ref"]
        executed, model = e["flops_per_step"]["ours"], e["model_flops_per_step"]
        assert e["gemm_fraction"]["ours"] > 0  # the same time, divided into the model's FLOPs or ours
        assert e["model_flops_fraction"]["ours"] == pytest.approx(e["gemm_fraction"]["ours"] * model / executed)


def test_a_grouped_convolutions_gradients_count_twice_its_forward():
    """torch's FlopCounterMode counts the weight gradient of a grouped convolution `groups` times over;
    the benchmark's counter does not."""
    import torch

    sys.path.insert(0, str(REPO))
    from bench.worker import flop_counter

    conv = torch.nn.Conv1d(32, 32, 9, groups=4)
    x = torch.randn(2, 32, 50, requires_grad=True)
    with flop_counter() as forward:
        conv(x)
    with flop_counter() as both:
        conv(x).sum().backward()
    assert forward.get_total_flops() > 0
    assert both.get_total_flops() == 3 * forward.get_total_flops()


def test_decoding_reports_word_error_rates_and_prepare_counts_files(bench_results):
    _, written = bench_results
    wer = written["decode"]["wer"]
    for side in ("ours", "ref", "greedy"):
        assert 0.0 <= wer[side] <= 100.0
    assert written["decode"]["utterances"] == 3
    # 2 copies of every file of the corpus
    corpus_files = written["prepare"]["files"]
    assert corpus_files > 0 and corpus_files % 2 == 0


def test_unknown_benchmark_is_refused(capsys):
    sys.path.insert(0, str(REPO))
    from bench import run

    with pytest.raises(SystemExit):
        run.main(["--bench", "pretrain_fp64"])
    assert "unknown benchmark" in capsys.readouterr().err
