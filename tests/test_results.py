"""RESULTS.md and results.json from a recipe's decode/<model>/<subset>/<decoding>/wer.json files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from w2vtk.cli import main
from w2vtk.results import ResultsError, collect_scores, results_table, write_results
from w2vtk.scoring import ErrorCounts, summary_dict


def _score(exp: Path, model: str, subset: str, decoding: str, errors: int, tokens: int = 200,
           metric: str = "wer") -> None:
    out = exp / "decode" / model / subset / decoding
    out.mkdir(parents=True)
    # The summary `w2vtk decode` writes (w2vtk.scoring.summary_dict).
    counts = ErrorCounts(ref_tokens=tokens, sub=errors, sentences=10, sentence_errors=min(errors, 10))
    (out / "wer.json").write_text(json.dumps(summary_dict(counts, metric)))


@pytest.fixture
def exp(tmp_path) -> Path:
    exp = tmp_path / "exp"
    for model, greedy, lm in (("pretrained", 60, 30), ("scratch", 180, 150)):
        for subset, extra in (("dev-clean", 0), ("test-clean", 4)):
            _score(exp, model, subset, "greedy", greedy + extra)
            _score(exp, model, subset, "4gram", lm + extra)
        # What `w2vtk tune-lm --out` writes (the keys the table shows).
        (exp / "decode" / model / "lm_weights.json").write_text(json.dumps(
            {"lm_weight": 1.5, "word_score": -0.5, "wer": 14.5, "subset": "dev-clean", "trials": 32,
             "decoder": "flashlight"}))
    (exp / "plots").mkdir()
    (exp / "plots" / "finetune.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return exp


def test_table_rows_and_columns(exp):
    table = results_table(collect_scores(exp))
    lines = table.splitlines()
    assert lines[0] == "WER (%)"
    assert lines[2] == ("| subset | pretrained, greedy | pretrained, 4gram | scratch, greedy | scratch, 4gram |")
    assert lines[4] == "| dev-clean | 30.00 | 15.00 | 90.00 | 75.00 |"
    assert lines[5] == "| test-clean | 32.00 | 17.00 | 92.00 | 77.00 |"


def test_write_results(exp):
    md, js = write_results(exp, title="LibriSpeech tiny", notes="A synthesized corpus.")
    text = md.read_text()
    assert text.startswith("# LibriSpeech tiny\n\nA synthesized corpus.\n")
    assert "| test-clean | 32.00 | 17.00 | 92.00 | 77.00 |" in text
    assert ("- pretrained (lm_weights.json): lm_weight 1.5, word_score -0.5 (WER 14.50% on dev-clean, "
            "best of 32 trials)") in text
    assert "![plots/finetune.png](plots/finetune.png)" in text
    data = json.loads(js.read_text())
    assert data["metric"] == "wer"
    assert data["results"]["scratch"]["test-clean"]["4gram"]["wer"] == 77.0
    assert data["tuning"]["pretrained"]["lm_weights"]["lm_weight"] == 1.5
    assert data["plots"] == ["plots/finetune.png"]


def test_missing_cells_and_phone_error_rates(tmp_path):
    exp = tmp_path / "timit"
    _score(exp, "pretrained", "dev", "greedy", 20, metric="per")
    _score(exp, "pretrained", "test", "greedy", 25, metric="per")
    _score(exp, "pretrained", "test", "phone-lm", 22, metric="per")
    table = results_table(collect_scores(exp))
    assert table.startswith("PER (%)")
    assert "| dev | 10.00 | - |" in table and "| test | 12.50 | 11.00 |" in table


def test_no_decodings(tmp_path):
    with pytest.raises(ResultsError, match="run the recipe's decoding stage"):
        collect_scores(tmp_path)


def test_unreadable_or_rateless_score(tmp_path):
    out = tmp_path / "decode" / "m" / "dev" / "greedy"
    out.mkdir(parents=True)
    (out / "wer.json").write_text("{truncated")
    with pytest.raises(ResultsError, match=r"wer\.json: unreadable"):
        collect_scores(tmp_path)
    (out / "wer.json").write_text(json.dumps({"errors": 3}))
    with pytest.raises(ResultsError, match="no error rate"):
        collect_scores(tmp_path)


def test_mixed_metrics_refused(tmp_path):
    _score(tmp_path, "m", "dev", "greedy", 3, metric="wer")
    _score(tmp_path, "m", "test", "greedy", 3, metric="per")
    with pytest.raises(ResultsError, match="mixed error rates"):
        collect_scores(tmp_path)


def test_cli(exp, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("Made by the test.\n")
    result = CliRunner().invoke(main, ["results", str(exp), "--notes", str(notes)])
    assert result.exit_code == 0, result.output
    assert "| dev-clean | 30.00 | 15.00 | 90.00 | 75.00 |" in result.output
    assert (exp / "RESULTS.md").read_text().startswith("# Results: exp\n\nMade by the test.")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["results", str(empty)])
    assert result.exit_code == 2 and result.output.startswith("error: ")


def test_intervals_and_paired_probabilities_from_the_trn_files(tmp_path):
    """ref.trn and hyp.trn beside wer.json (as `w2vtk decode` writes them) give each rate a 95% interval
    over speaker blocks and each pair of columns that differ in one way the probability of improvement."""
    from w2vtk.decode import write_scores

    rng = np.random.default_rng(0)
    ids = [f"{spk}-1-{u}" for spk in range(100, 112) for u in range(5)]
    refs = [[f"w{int(x)}" for x in rng.integers(0, 50, 12)] for _ in ids]

    def noisy(p: float) -> list[list[str]]:
        return [[("x" if rng.random() < p else w) for w in r] for r in refs]

    exp = tmp_path / "exp"
    systems = {("pretrained", "greedy"): 0.2, ("pretrained", "4gram"): 0.1, ("scratch", "greedy"): 0.6}
    for (model, decoding), p in systems.items():
        out = exp / "decode" / model / "test-clean" / decoding
        out.mkdir(parents=True)
        write_scores(out, ids, refs, noisy(p), "wer")
    md, js = write_results(exp)
    data = json.loads(js.read_text())
    for (model, decoding), p in systems.items():
        s = data["results"][model]["test-clean"][decoding]
        low, high = s["ci95"]
        assert low < s["wer"] < high and high - low < 25, s
    pairs = {(c["better"], c["worse"]): c["p_better"] for c in data["comparisons"]}
    assert pairs.keys() == {("pretrained, 4gram", "pretrained, greedy"), ("pretrained, greedy", "scratch, greedy")}
    assert all(p > 0.99 for p in pairs.values()), pairs
    text = md.read_text()
    ci = data["results"]["pretrained"]["test-clean"]["4gram"]["ci95"]
    assert f"({ci[0]:.2f}-{ci[1]:.2f})" in text
    assert "test-clean: pretrained, 4gram better than pretrained, greedy: p = " in text


def test_results_link_the_ctm_of_each_subset(exp):
    for model, decoding in (("pretrained", "greedy"), ("scratch", "4gram")):
        (exp / "decode" / model / "test-clean" / decoding / "hyp.ctm").write_text("u A 0.1 0.2 WORD 0.9\n")
    md, _ = write_results(exp)
    text = md.read_text()
    assert ("- test-clean: [pretrained, greedy](decode/pretrained/test-clean/greedy/hyp.ctm), "
            "[scratch, 4gram](decode/scratch/test-clean/4gram/hyp.ctm)") in text
    assert "- dev-clean:" not in text  # no CTM there, no link


def test_each_pair_of_columns_is_compared_once(tmp_path):
    """Four columns of one subset give four pairs that differ in one way, whichever column is better."""
    from w2vtk.decode import write_scores

    rng = np.random.default_rng(1)
    ids = [f"{spk}-1-{u}" for spk in range(100, 106) for u in range(4)]
    refs = [[f"w{int(x)}" for x in rng.integers(0, 50, 10)] for _ in ids]
    # The first column in the table's order (pretrained, 4gram) is the worst, so it loses its first pair.
    systems = {("pretrained", "4gram"): 0.7, ("pretrained", "greedy"): 0.2, ("scratch", "4gram"): 0.4,
               ("scratch", "greedy"): 0.5}
    for (model, decoding), p in systems.items():
        out = tmp_path / "exp" / "decode" / model / "test-clean" / decoding
        out.mkdir(parents=True)
        write_scores(out, ids, refs, [[("x" if rng.random() < p else w) for w in r] for r in refs], "wer")
    _, js = write_results(tmp_path / "exp")
    pairs = [frozenset((c["better"], c["worse"])) for c in json.loads(js.read_text())["comparisons"]]
    assert sorted(map(sorted, pairs)) == sorted(map(sorted, [
        {"pretrained, 4gram", "pretrained, greedy"}, {"pretrained, 4gram", "scratch, 4gram"},
        {"pretrained, greedy", "scratch, greedy"}, {"scratch, 4gram", "scratch, greedy"}]))
