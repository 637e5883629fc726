"""Training curves from log.jsonl: parsing (resumes, torn lines), the panels drawn, the PNG, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from w2vtk.cli import main
from w2vtk.plot import (DEFAULT_PNG, PlotError, panels_for, plot_experiments, plot_training,
                        read_training_log)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pretrain_record(step: int) -> dict:
    # The keys `w2vtk pretrain` logs (w2vtk/training/trainer.py, w2vtk/pretraining.py).
    return {"step": step, "epoch": 0, "accuracy": 0.05 + 0.01 * step, "code_perplexity": 60.0 + step,
            "contrastive": 3.2 - 0.01 * step, "diversity": 0.4, "loss": 6.9 - 0.05 * step, "penalty": 0.37,
            "prob_perplexity": 62.0 + step, "temperature": 2.0 * 0.995 ** step, "lr": 1e-5 * step,
            "grad_norm": 3.0, "audio_seconds_per_second": 4.0}


def _finetune_record(step: int) -> dict:
    return {"step": step, "epoch": 0, "loss": 9.0 - 0.1 * step, "tokens": 300.0, "lr": 1e-4,
            "grad_norm": 7.0, "audio_seconds_per_second": 15.0}


def _write_log(exp: Path, records: list[dict], tail: str = "") -> Path:
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return exp


@pytest.fixture
def pretrain_exp(tmp_path) -> Path:
    records = [_pretrain_record(s) for s in range(1, 21)]
    records.insert(10, {"valid": True, "step": 10, "loss": 6.0, "contrastive": 3.1, "accuracy": 0.07,
                        "prob_perplexity": 75.0, "code_perplexity": 70.0})
    return _write_log(tmp_path / "pretrain", records)


@pytest.fixture
def finetune_exp(tmp_path) -> Path:
    records = [_finetune_record(s) for s in range(1, 11)]
    records += [{"valid": True, "step": 5, "loss": 8.0, "wer": 101.0}, {"valid": True, "step": 10, "loss": 7.0,
                                                                      "wer": 90.5}]
    return _write_log(tmp_path / "finetune", records)


def _titles(*exps: Path) -> list[str]:
    return [title for title, _ in panels_for([read_training_log(e) for e in exps])]


def test_reads_train_and_valid_curves(pretrain_exp):
    run = read_training_log(pretrain_exp)
    assert run.name == "pretrain"
    steps, values = run.train.series["loss"]
    assert steps == list(range(1, 21)) and values[0] == pytest.approx(6.85)
    assert run.valid.series["accuracy"] == ([10], [0.07])
    assert "epoch" not in run.train.series and "step" not in run.train.series


def test_panels_follow_the_logged_keys(pretrain_exp, finetune_exp):
    pre = _titles(pretrain_exp)
    assert {"loss", "loss terms", "accuracy of the positive", "codebook perplexity", "Gumbel temperature",
            "learning rate", "gradient norm"} <= set(pre)
    assert "validation error rate (%)" not in pre
    fine = _titles(finetune_exp)
    assert "validation error rate (%)" in fine
    assert not {"Gumbel temperature", "codebook perplexity", "accuracy of the positive"} & set(fine)
    # Two runs together: the union of their panels.
    assert set(_titles(pretrain_exp, finetune_exp)) == set(pre) | set(fine)


def test_resumed_run_keeps_the_last_record_of_a_step(tmp_path):
    records = [_finetune_record(s) for s in (1, 2, 3)] + [dict(_finetune_record(2), loss=1.5)]
    run = read_training_log(_write_log(tmp_path / "exp", records))
    assert run.train.series["loss"] == ([1, 2, 3], [8.9, 1.5, pytest.approx(8.7)])


def test_torn_last_line_is_skipped(tmp_path):
    run = read_training_log(_write_log(tmp_path / "exp", [_finetune_record(1)], tail='{"step": 2, "lo'))
    assert run.train.series["loss"][0] == [1]


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "log.jsonl").write_text(json.dumps(_finetune_record(1)) + "\nnot json\n"
                                   + json.dumps(_finetune_record(2)) + "\n")
    with pytest.raises(PlotError, match=r"log\.jsonl:2: not a JSON record"):
        read_training_log(exp)


def test_missing_or_empty_log(tmp_path):
    with pytest.raises(PlotError, match="no such file"):
        read_training_log(tmp_path)
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(PlotError, match="no logged updates"):
        read_training_log(tmp_path)


def test_log_without_plottable_quantities(tmp_path):
    exp = _write_log(tmp_path / "exp", [{"step": 1, "epoch": 0, "tokens": 3.0}])
    with pytest.raises(PlotError, match="none of the plotted quantities"):
        plot_experiments([exp])


def test_png_default_location_and_size(pretrain_exp):
    import matplotlib.image

    out = plot_experiments([pretrain_exp])
    assert out == pretrain_exp / DEFAULT_PNG
    assert out.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out).shape
    # 7 panels in 3 columns: 3 rows of 5 x 3.5 inches at 100 dpi.
    assert (width, height) == (1500, 1050)
    assert not list(pretrain_exp.glob(".*.tmp"))


def test_several_runs_need_an_output_and_matching_names(pretrain_exp, finetune_exp, tmp_path):
    with pytest.raises(PlotError, match="--out"):
        plot_experiments([pretrain_exp, finetune_exp])
    with pytest.raises(PlotError, match="one name per folder"):
        plot_experiments([pretrain_exp, finetune_exp], tmp_path / "x.png", names=["a"])
    out = plot_experiments([pretrain_exp, finetune_exp], tmp_path / "both.png", names=["a", "b"])
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_training_needs_runs(tmp_path):
    with pytest.raises(PlotError):
        plot_training([], tmp_path / "x.png")


def test_cli(finetune_exp, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["plot", str(finetune_exp)])
    assert result.exit_code == 0, result.output
    assert (finetune_exp / DEFAULT_PNG).is_file()
    out = tmp_path / "sub dir" / "curves.png"
    result = runner.invoke(main, ["plot", str(finetune_exp), "--out", str(out), "--title", "fine-tuning"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_error_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "log.jsonl: no such file" in result.output
    assert "Traceback" not in result.output


def test_health_records_are_no_curve_points_and_healthy_ranges_are_shaded(pretrain_exp, monkeypatch):
    """A `health` record logged at the same update as a training window leaves that window's values; with
    the run's config.yaml the panels shade the healthy ranges."""
    import yaml

    from w2vtk.config import to_dict
    from w2vtk.training.config import PretrainConfig

    with open(pretrain_exp / "log.jsonl", "a") as f:
        f.write(json.dumps({"health": "collapse", "step": 20, "since": 10, "symptom": "codebook collapse"}) + "\n")
    assert read_training_log(pretrain_exp).train.series["loss"][1][-1] == pytest.approx(6.9 - 0.05 * 20)
    assert read_training_log(pretrain_exp).healthy == {}  # no config.yaml: nothing to shade
    cfg = to_dict(PretrainConfig())
    cfg["optim"].update(max_updates=20, warmup_updates=2)
    (pretrain_exp / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = read_training_log(pretrain_exp)
    assert run.healthy["prob_perplexity"].low == pytest.approx(6.4) and run.healthy["prob_perplexity"].high == 640

    import matplotlib.axes

    shaded = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda ax, *a, **kw: shaded.append(ax.get_title() or kw.get("label")) or real(ax, *a, **kw))
    plot_training([run], pretrain_exp / "out.png")
    assert len(shaded) == 3  # the two perplexities and the gradient norm (accuracy: not before update 100)


def test_alignment_picture(tmp_path):
    import numpy as np

    from w2vtk.audio import write_audio
    from w2vtk.plot import plot_alignment

    write_audio(tmp_path / "utt1.wav", 0.1 * np.sin(np.arange(32000) / 5.0).astype(np.float32))
    (tmp_path / "words.ctm").write_text("utt1 A 0.100 0.400 HELLO 0.9000\nutt1 A 0.600 0.300 WORLD 0.4000\n"
                                        "utt2 A 0.000 0.100 OTHER 1.0000\n")
    res = CliRunner().invoke(main, ["plot", "--audio", str(tmp_path / "utt1.wav"), "--ctm", str(tmp_path / "words.ctm"),
                                    "-o", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PlotError, match="no words of 'utt3'"):
        plot_alignment(tmp_path / "utt1.wav", tmp_path / "words.ctm", tmp_path / "b.png", utterance="utt3")
    write_audio(tmp_path / "utt9.wav", np.zeros(16000, np.float32))
    with pytest.raises(PlotError, match="--utterance"):  # two recordings, neither named like the audio
        plot_alignment(tmp_path / "utt9.wav", tmp_path / "words.ctm", tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()
