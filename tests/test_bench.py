"""The benchmark harness (bench/run.py) on toy sizes: every benchmark runs both sides under equal
settings, and OUT.json holds what the README says, consistent with itself. Timings are never
asserted (they depend on the machine); what the timings feed (ratios, fractions, dropped
repetitions, targets) and the decoders' word error rates are."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KEYS = ("pretrain_fp32", "pretrain_bf16", "inference", "decode_lexicon_free", "decode_lexicon", "prepare")
UTTERANCES = 6


@pytest.fixture(scope="module")
def bench_results(synth_librispeech, tmp_path_factory):
    from bench import run

    out = tmp_path_factory.mktemp("bench") / "out.json"
    # two warm-ups: transformers' sides try sdpa in one and eager in the other
    args = ["--json", str(out), "--corpus", str(synth_librispeech), "--cache", str(out.parent / "cache"),
            "--size", "tiny", "--batch", "2", "--seconds", "1", "--infer-batch", "1", "--infer-seconds", "1",
            "--decode-utts", str(UTTERANCES), "--decode-jobs", "2", "--prepare-copies", "2", "--prepare-jobs", "2",
            "--reps", "2", "--warmup", "2", "--settle", "0", "--threads", "1"]
    returned = run.main(args)
    return returned, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_benchmark_reports_both_sides_under_equal_settings(bench_results):
    from bench.run import TARGETS

    returned, written = bench_results
    assert set(KEYS) <= set(written) and "decode" not in written
    assert json.loads(json.dumps(returned)) == written
    for key in KEYS:
        e = written[key]
        assert e["settings"] == "equal"
        assert _positive(e["ours"]) and _positive(e["ref"])
        assert e["ratio"] == pytest.approx(e["ours"] / e["ref"])
        assert e["cpu"]["ratio"] == pytest.approx(e["cpu"]["ours"] / e["cpu"]["ref"])
        assert len(e["wall_s"]["ours"]) == len(e["wall_s"]["ref"]) == 2
        assert e["threads"] == 1
        met = e["ratio"] >= TARGETS[key] and ("wer_ours" not in e or e["wer_ours"] <= e["wer_ref"])
        assert e["target"] == {"ratio": TARGETS[key], "met": met}
    for key in ("pretrain_fp32", "pretrain_bf16"):
        assert written[key]["optimizer"] == "torch.optim.AdamW(fused=True), both sides"
    for key in ("pretrain_fp32", "pretrain_bf16", "inference"):
        assert written[key]["host_memory"] == "both"
    for key in ("decode_lexicon_free", "decode_lexicon"):
        assert written[key]["jobs"] == {"ours": 2, "ref": 2}
    assert written["prepare"]["jobs"] == {"ours": 2, "ref": 2, "ref_1_process": 1}


def test_the_table_states_each_target_and_whether_it_is_met(bench_results):
    from bench.run import TARGETS, table

    _, written = bench_results
    rows = {line.split()[0]: line for line in table(written).splitlines()}
    for key in KEYS:
        assert f">= {TARGETS[key]:g}x" in rows[key]
        assert (" yes " in rows[key]) == written[key]["target"]["met"]
        assert (" MISSED " in rows[key]) != written[key]["target"]["met"]


def test_the_reference_runs_the_faster_of_its_attention_kernels(bench_results):
    _, written = bench_results
    for key in ("pretrain_fp32", "pretrain_bf16", "inference"):
        attention = written[key]["attention_ref"]
        tried = attention["warmup_s"]
        assert set(tried) == {"sdpa", "eager"} and all(len(t) == 1 for t in tried.values())
        assert attention["chosen"] == min(tried, key=lambda k: min(tried[k]))


def test_hardware_fraction_counts_executed_flops_of_kept_repetitions(bench_results):
    _, written = bench_results
    for key in ("pretrain_fp32", "pretrain_bf16", "inference"):
        e = written[key]
        f = e["hardware_fraction"]
        all_peaks = f["peaks_before_each"]["ours"] + f["peaks_before_each"]["ref"]
        assert f["peak_flops_per_s"] == max(all_peaks) and _positive(f["peak_flops_per_s"])
        assert f["peak_dtype"] == ("bfloat16" if key == "pretrain_bf16" else "float32")
        for side in ("ours", "ref"):
            peaks, walls = f["peaks_before_each"][side], e["wall_s"][side]
            assert len(peaks) == len(walls)
            kept = [e["flops_per_step"][side] / w / f["peak_flops_per_s"]
                    for w, p in zip(walls, peaks) if p >= f["drop_below"] * f["peak_flops_per_s"]]
            assert f[side]["kept"] == len(kept) and f[side]["dropped"] == len(walls) - len(kept)
            if kept:
                assert f[side]["min"] == pytest.approx(min(kept)) and f[side]["max"] == pytest.approx(max(kept))
                assert f[side]["median"] == pytest.approx(statistics.median(kept))
    inference = written["inference"]["flops_per_step"]
    # The same model. Ours runs fewer FLOPs where the positional convolution by DFT matrices and the CNN
    # by minimal filtering pay (not at this toy size), and a little more for the first layer's folded norm.
    assert _positive(inference["ours"]) and 0.7 * inference["ref"] < inference["ours"] < 1.01 * inference["ref"]
    for key in ("pretrain_fp32", "pretrain_bf16"):
        assert math.isfinite(written[key]["loss"]["ours"]) and math.isfinite(written[key]["loss"]["ref"])
        for side in ("ours", "ref"):
            assert written[key]["peak_rss_mb"][side] > written[key]["peak_rss_mb"]["after_import"][side] > 0


def test_low_peak_repetitions_are_dropped_from_the_fraction():
    from bench.harness import SideResult
    from bench.run import _hardware_fraction

    def side(walls, peaks, flops):
        return SideResult(walls=walls, cpus=walls, extra={"flops": flops},
                          peaks=[{"flops_per_s": p, "kernel": "k", "dtype": "float32"} for p in peaks])

    res = {"ours": side([1.0, 2.0, 1.0], [100.0, 80.0, 95.0], 50.0), "ref": side([4.0, 5.0], [89.0, 100.0], 100.0)}
    f = _hardware_fraction(res, 0.9)["hardware_fraction"]
    assert f["peak_flops_per_s"] == 100.0
    assert (f["ours"]["kept"], f["ours"]["dropped"]) == (2, 1)  # 80 < 0.9 x 100
    assert f["ours"]["min"] == f["ours"]["max"] == pytest.approx(0.5)
    assert (f["ref"]["kept"], f["ref"]["dropped"]) == (1, 1)  # 89 < 90
    assert f["ref"]["median"] == pytest.approx(100.0 / 5.0 / 100.0)


def test_decoding_runs_on_held_out_text_and_equal_searches_agree(bench_results):
    _, written = bench_results
    for key in ("decode_lexicon_free", "decode_lexicon"):
        e = written[key]
        assert e["utterances"] == UTTERANCES
        assert e["test_sentences_in_lm_text"] == 0 and e["oov_rate"] > 0
        assert e["wer_greedy"] > 0 and math.isfinite(e["wer_ours"]) and math.isfinite(e["wer_ref"])
    free = written["decode_lexicon_free"]
    assert free["wer_ours"] < free["wer_greedy"]  # the letter LM repairs confused letters
    lexicon = written["decode_lexicon"]
    # the same search through the same C++ decoder: the same words
    assert lexicon["wer_ours"] == lexicon["wer_ref"]
    assert lexicon["search"]["ours"] == lexicon["search"]["ref"]
    # a lexicon search can only produce lexicon words: every word outside the LM's is an error
    assert lexicon["wer_ours"] >= lexicon["oov_rate"]


def test_prepare_counts_files_and_compares_with_one_process_too(bench_results):
    _, written = bench_results
    e = written["prepare"]
    assert e["files"] > 0 and e["files"] % 2 == 0  # 2 copies of every file of the corpus
    one = e["ref_1_process"]
    assert one["ratio"] == pytest.approx(statistics.median(one["wall_s"]) / statistics.median(e["wall_s"]["ours"]))


def test_a_grouped_convolutions_gradients_count_twice_its_forward():
    """torch's FlopCounterMode counts the weight gradient of a grouped convolution `groups` times over;
    the benchmark's counter does not."""
    import torch

    from bench.worker import flop_counter

    conv = torch.nn.Conv1d(32, 32, 9, groups=4)
    x = torch.randn(2, 32, 50, requires_grad=True)
    with flop_counter() as forward:
        conv(x)
    with flop_counter() as both:
        conv(x).sum().backward()
    assert forward.get_total_flops() > 0
    assert both.get_total_flops() == 3 * forward.get_total_flops()


def test_unknown_benchmark_is_refused(capsys):
    from bench import run

    with pytest.raises(SystemExit):
        run.main(["--bench", "decode"])
    assert "unknown benchmark" in capsys.readouterr().err
