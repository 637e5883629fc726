"""Every case of the bad-input corpus (tests/badinput.py) through the real command line.

A case is either handled as documented (exit 0 and the case's own check), or stops with exit status 2
and a single `error: ...` line that names the file and the fix, without a traceback, and leaves its
outputs as they were.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from badinput import CASES, Invocation, Workspace
from tiny_runs import SMALL_MODEL, W2VTK, one_line_error, run
from w2vtk.cli import main

MIN_CASES = 25


@pytest.fixture(scope="module")
def assets(prepared_librispeech, synth_librispeech, tmp_path_factory) -> dict[str, Path]:
    """A fine-tuned checkpoint of a very small model (random weights), a 3-gram and its lexicon."""
    from w2vtk.checkpoint import save_checkpoint
    from w2vtk.config import parse_overrides
    from w2vtk.lm import train_lm, write_lexicon
    from w2vtk.model import ModelConfig, build_model
    from w2vtk.text import Vocabulary

    d = tmp_path_factory.mktemp("badinput_assets")
    vocab = Vocabulary.from_dict_file(prepared_librispeech / "dict.ltr.txt", "ltr")
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**parse_overrides(SMALL_MODEL)["model"], "latent_vars": 0, "vocab_size": len(vocab)})
    save_checkpoint(d / "finetuned.pt", {"kind": "finetune", "model_config": cfg.to_dict(),
                                         "model": build_model(cfg).state_dict(), "vocab": vocab.to_list(),
                                         "labels": "ltr", "train_config": None})
    arpa = train_lm(synth_librispeech / "lm-text.txt", d / "lm.arpa", order=3)
    write_lexicon(arpa, d / "lexicon.txt")
    return {"checkpoint": d / "finetuned.pt", "arpa": arpa, "lexicon": d / "lexicon.txt"}


def snapshot(path: Path):
    """What `path` holds: None if absent, bytes for a file, {relative path: bytes} for a folder. An
    experiment folder's `.lock` (the flock file naming the last run's PID) is not an output."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))
            if p.name != ".lock"}


def invoke(inv: Invocation) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `w2vtk ARGS`, in-process or as a subprocess."""
    if inv.process:
        res = run([W2VTK, *inv.args])
        return res.returncode, res.stdout, res.stderr
    res = CliRunner().invoke(main, inv.args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a crash: show its traceback
    return res.exit_code, res.stdout, res.stderr


def test_the_corpus_has_enough_cases():
    assert len(CASES) >= MIN_CASES, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, assets, synth_librispeech, prepared_librispeech, synth_timit, tmp_path):
    ws = Workspace(tmp=tmp_path, librispeech=synth_librispeech, prepared=prepared_librispeech, timit=synth_timit,
                   **assets)
    inv = CASES[name](ws)
    before = {p: snapshot(p) for p in inv.untouched}
    status, stdout, stderr = invoke(inv)
    if inv.error is None:
        assert status == 0, stderr[-3000:]
        assert "Traceback" not in stderr
        if inv.check is not None:
            inv.check(stdout)
        return
    assert status == 2, (status, stdout[-2000:], stderr[-3000:])
    line = one_line_error(stderr)
    for fragment in inv.error:
        assert fragment in line, f"{fragment!r} not in: {line}"
    for path, held in before.items():
        assert snapshot(path) == held, f"{path} changed"
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"


def test_a_case_through_a_real_process(assets, synth_librispeech, prepared_librispeech, synth_timit, tmp_path):
    """The in-process runs above see what a shell sees: the same case as a subprocess."""
    ws = Workspace(tmp=tmp_path, librispeech=synth_librispeech, prepared=prepared_librispeech, timit=synth_timit,
                   **assets)
    inv = CASES["transcript_line_duplicated"](ws)
    res = run([W2VTK, *inv.args])
    assert res.returncode == 2
    assert all(f in one_line_error(res.stderr) for f in inv.error)
    assert res.stderr.strip() == one_line_error(res.stderr)
