"""`w2vtk pretrain --init CKPT`: continued pretraining from our checkpoints and imported ones, the
optimizer carried on only on request, and checkpoints that cannot continue refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tiny_runs import one_line_error, pretrain_cmd, run
from w2vtk.checkpoint import load_checkpoint, save_checkpoint

N = 4  # updates of each run
VALID = ["--valid-subset", "dev-clean", "--valid-interval", str(N), "data.max_valid_batches=2"]


def _valid_loss(exp: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("valid")}


@pytest.fixture(scope="module")
def scratch(prepared_librispeech, tmp_path_factory) -> Path:
    """N updates from random weights."""
    exp = tmp_path_factory.mktemp("scratch") / "exp"
    res = run(pretrain_cmd(prepared_librispeech, exp, *VALID, updates=N))
    assert res.returncode == 0, res.stderr[-3000:]
    return exp


def test_continuing_from_a_checkpoint_beats_starting_from_scratch(scratch, prepared_librispeech, tmp_path):
    exp = tmp_path / "continued"
    init = scratch / "checkpoints" / "last.pt"
    res = run(pretrain_cmd(prepared_librispeech, exp, *VALID, "--init", str(init), updates=N))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"continuing from {init}" in res.stderr
    continued, fresh = _valid_loss(exp)[N], _valid_loss(scratch)[N]
    assert continued < fresh, (continued, fresh)
    # A fresh schedule: the update count starts at 0 and the first LR is the warm-up's.
    rows = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines() if '"valid"' not in x]
    first = load_checkpoint(init)
    assert rows[0]["step"] == 1 and rows[0]["temperature"] == first["train_config"]["task"]["latent_temp"][0]


def test_resume_optimizer_carries_on_the_update_count_and_adam_state(scratch, prepared_librispeech, tmp_path):
    from w2vtk.cli import main

    exp = tmp_path / "continued"
    init = scratch / "checkpoints" / "last.pt"
    res = CliRunner().invoke(main, pretrain_cmd(prepared_librispeech, exp, "--init", str(init), "--resume-optimizer",
                                                updates=N + 2)[1:])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (exp / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [N + 1, N + 2]
    ckpt = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["step"] == N + 2
    start = load_checkpoint(init)["trainer"]["optimizer"]["state"]
    assert all(ckpt["trainer"]["optimizer"]["state"][k]["step"] == start[k]["step"] + 2 for k in start)


def test_continuing_from_an_imported_checkpoint(scratch, prepared_librispeech, tmp_path):
    """Our checkpoint exported to transformers and imported again: the quantizer and heads come along."""
    from w2vtk.cli import main
    from w2vtk.convert import export_weights, import_checkpoint

    export_weights(scratch / "checkpoints" / "last.pt", tmp_path / "hf", "hf")
    imported = tmp_path / "imported.pt"
    import_checkpoint(tmp_path / "hf", imported)
    assert load_checkpoint(imported)["kind"] == "import"
    exp = tmp_path / "continued"
    res = CliRunner().invoke(main, pretrain_cmd(prepared_librispeech, exp, "--init", str(imported), updates=1)[1:])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, pretrain_cmd(prepared_librispeech, tmp_path / "b", "--init", str(imported),
                                                "--resume-optimizer", updates=1)[1:])
    assert res.exit_code == 2 and "leave out --resume-optimizer" in one_line_error(res.stderr)


def test_checkpoints_that_cannot_continue_are_refused(scratch, prepared_librispeech, tmp_path):
    from w2vtk.cli import main

    init = scratch / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(init)
    ctc = dict(ckpt, kind="finetune", vocab=["<blank>", "A"],
               model_config=dict(ckpt["model_config"], vocab_size=2, latent_vars=0),
               model={k: v for k, v in ckpt["model"].items() if not k.startswith(("quantizer.", "project_q."))}
               | {"ctc_head.weight": torch.zeros(2, 32), "ctc_head.bias": torch.zeros(2)})
    save_checkpoint(tmp_path / "ctc.pt", ctc)
    cases = [(["--init", str(tmp_path / "ctc.pt")], "without a quantizer"),
             (["--init", str(init), "model.encoder_layers=1"], "another architecture"),
             (["--resume-optimizer"], "needs --init")]
    for extra, words in cases:
        exp = tmp_path / "refused"
        res = CliRunner().invoke(main, pretrain_cmd(prepared_librispeech, exp, *extra, updates=1)[1:])
        assert res.exit_code == 2, (extra, res.output)
        line = one_line_error(res.stderr)
        assert words in line, line
        assert not (exp / "checkpoints").exists()
