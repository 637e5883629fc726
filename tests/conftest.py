"""Shared fixtures: small espeak-ng corpora built once per test session, and their manifests.

  synth_librispeech   corpus root holding LibriSpeech/{train-clean-100,dev-clean,test-clean}
                      (~1.5 min train, ~0.5 min dev and test) and lm-text.txt
  prepared_librispeech  OUT_DIR of `prepare librispeech` on it (.tsv, .wrd, .ltr, dict.ltr.txt)
  synth_timit         corpus root holding TIMIT/{TRAIN,TEST} (4 train, 3 dev, 3 core-test speakers)
  prepared_timit      OUT_DIR of `prepare timit` on it (train/dev/test .tsv, .phn (39), .wrd, dict.phn.txt)

Treat them as read-only: copy a corpus before damaging it in a test.

With W2VTK_STRICT_SKIPS=1 (as in CI), a test skipped for a missing dependency (see tests/dependencies.py)
fails instead, at collection or at run time alike.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dependencies import STRICT_SKIPS, is_missing_dependency, need_programs

SYNTH_SEED = 1


def _fail_if_missing_dependency(report: pytest.CollectReport | pytest.TestReport) -> None:
    """In a strict run, turn a skip for a missing dependency into a failure that gives the skip's reason."""
    if os.environ.get(STRICT_SKIPS, "") in ("", "0") or not report.skipped or hasattr(report, "wasxfail"):
        return
    if not isinstance(report.longrepr, tuple):
        return
    path, lineno, message = report.longrepr
    reason = message.removeprefix("Skipped: ")
    if is_missing_dependency(reason):
        report.outcome = "failed"
        report.longrepr = f"{path}:{lineno}: {reason}; with {STRICT_SKIPS}=1 a missing dependency is a failure"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    _fail_if_missing_dependency(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    _fail_if_missing_dependency(report)
    return report


@pytest.fixture(scope="session")
def synth_librispeech(tmp_path_factory) -> Path:
    from w2vtk.synth import synth_librispeech as build

    need_programs("espeak-ng", "sox", fix="apt-get install espeak-ng sox")
    root = tmp_path_factory.mktemp("synth_librispeech")
    build(root, train_minutes=1.5, dev_minutes=0.5, test_minutes=0.5, speakers=4, eval_speakers=2,
          seed=SYNTH_SEED, jobs=2)
    return root


@pytest.fixture(scope="session")
def prepared_librispeech(synth_librispeech, tmp_path_factory) -> Path:
    from w2vtk.corpora.librispeech import prepare_librispeech

    out = tmp_path_factory.mktemp("prepared_librispeech")
    prepare_librispeech(synth_librispeech, out, jobs=1)
    return out


@pytest.fixture(scope="session")
def synth_timit(tmp_path_factory) -> Path:
    from w2vtk.synth import synth_timit as build

    need_programs("espeak-ng", "sox", fix="apt-get install espeak-ng sox")
    root = tmp_path_factory.mktemp("synth_timit")
    build(root, train_speakers=4, dev_speakers=3, test_speakers=3, si=3, sx=5, seed=SYNTH_SEED, jobs=2)
    return root


@pytest.fixture(scope="session")
def prepared_timit(synth_timit, tmp_path_factory) -> Path:
    from w2vtk.corpora.timit import prepare_timit

    out = tmp_path_factory.mktemp("prepared_timit")
    prepare_timit(synth_timit, out, num_phones=39, jobs=1)
    return out
