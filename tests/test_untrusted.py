"""Untrusted files: checkpoints whose pickle would run code, at every command that loads one; other
files that could carry code (weights, caches, configs); manifest paths that climb out of their root.

A payload, if it ever ran, would create a marker file; every test checks that it was not created.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiny_runs import FINETUNE_CONF, FINETUNE_SMALL, PRETRAIN_CONF, PRETRAIN_SMALL, SMALL_MODEL, one_line_error
from w2vtk.checkpoint import save_checkpoint
from w2vtk.cli import main


class ShellPayload:
    """Unpickling this runs a shell command (os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload:
    """Unpickling this runs Python code (builtins.exec)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _small_finetuned(prepared: Path) -> dict:
    """A fine-tuned checkpoint's payload for a very small model (random weights)."""
    from w2vtk.config import parse_overrides
    from w2vtk.model import ModelConfig, build_model
    from w2vtk.text import Vocabulary

    vocab = Vocabulary.from_dict_file(prepared / "dict.ltr.txt", "ltr")
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**parse_overrides(SMALL_MODEL)["model"], "latent_vars": 0, "vocab_size": len(vocab)})
    return {"format": "w2vtk", "version": 1, "kind": "finetune", "model_config": cfg.to_dict(),
            "model": build_model(cfg).state_dict(), "vocab": vocab.to_list(), "labels": "ltr", "train_config": None,
            "trainer": {}}


def _evil_files(payload: dict, directory: Path, marker: Path) -> dict[str, Path]:
    """The payload with a code-running object inside, as a torch zip file, an old non-zip torch file and a
    bare pickle; two kinds of payload."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, cls in (("shell", ShellPayload), ("exec", ExecPayload)):
        evil = {**payload, "train_config": {"optim": cls(marker)}}
        files[f"{kind}-zip"] = directory / f"{kind}-zip.pt"
        torch.save(evil, files[f"{kind}-zip"])
        files[f"{kind}-legacy"] = directory / f"{kind}-legacy.pt"
        torch.save(evil, files[f"{kind}-legacy"], _use_new_zipfile_serialization=False)
    files["bare-pickle"] = directory / "bare.pt"
    files["bare-pickle"].write_bytes(pickle.dumps({"format": "w2vtk", "x": ShellPayload(marker)}, protocol=2))
    return files


@pytest.fixture(scope="module")
def evil(prepared_librispeech, tmp_path_factory):
    d = tmp_path_factory.mktemp("untrusted")
    marker = d / "PWNED"
    files = _evil_files(_small_finetuned(prepared_librispeech), d / "ckpt", marker)
    yield files, marker
    assert not marker.exists(), "a payload ran"


def _refused(result, path: Path, marker: Path) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    line = one_line_error(result.stderr)
    assert str(path) in line and "refused" in line and ("system" in line or "exec" in line), line
    assert not marker.exists(), "the payload ran"


def _commands(path: Path, data: Path, tmp: Path, audio: Path) -> dict[str, list[str]]:
    """Every command that takes a checkpoint file, pointed at `path`."""
    return {
        "finetune --init": ["finetune", "--config", str(FINETUNE_CONF), "--data", str(data), "--train-subset",
                            "train-clean-100", "--exp-dir", str(tmp / "ft"), "--init", str(path), *FINETUNE_SMALL],
        "decode": ["decode", "--checkpoint", str(path), "--data", str(data), "--subset", "dev-clean", "--out",
                   str(tmp / "dec")],
        "transcribe": ["transcribe", "--checkpoint", str(path), str(audio)],
        "extract": ["extract", "--checkpoint", str(path), "--out", str(tmp / "feats"), str(audio)],
        "export": ["export", str(path), str(tmp / "hf")],
        "import": ["import", str(path), str(tmp / "imported.pt")],
    }


@pytest.mark.parametrize("command", ["finetune --init", "decode", "transcribe", "extract", "export", "import"])
def test_checkpoint_whose_pickle_runs_code_is_refused_everywhere(command, evil, prepared_librispeech, tmp_path):
    files, marker = evil
    audio = Path(open(prepared_librispeech / "dev-clean.tsv").readline().strip())
    audio = next(audio.rglob("*.flac"))
    for name, path in files.items():
        args = _commands(path, prepared_librispeech, tmp_path, audio)[command]
        result = CliRunner().invoke(main, args)
        _refused(result, path, marker)
        assert not [p for p in tmp_path.iterdir()], f"{command} with {name} wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_from_a_planted_last_pt_is_refused(stage, evil, prepared_librispeech, tmp_path):
    """Someone with write access to an experiment folder plants a last.pt: resuming refuses it."""
    files, marker = evil
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    shutil.copy(files["exec-zip"], exp / "checkpoints" / "last.pt")
    conf, small = (PRETRAIN_CONF, PRETRAIN_SMALL) if stage == "pretrain" else (FINETUNE_CONF, FINETUNE_SMALL)
    result = CliRunner().invoke(main, [stage, "--config", str(conf), "--data", str(prepared_librispeech),
                                       "--train-subset", "train-clean-100", "--exp-dir", str(exp), *small])
    _refused(result, exp / "checkpoints" / "last.pt", marker)


def test_transformers_folder_whose_weights_run_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]}))
    torch.save({"wav2vec2.masked_spec_embed": torch.zeros(4), "evil": ExecPayload(marker)},
               folder / "pytorch_model.bin")
    result = CliRunner().invoke(main, ["import", str(folder), str(tmp_path / "o.pt")])
    assert result.exit_code == 2, result.output
    line = one_line_error(result.stderr)
    assert "pytorch_model.bin" in line and "refused" in line
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("where", ["checkpoint", "fairseq", "transformers"])
def test_garbage_instead_of_weights_is_a_clear_error(where, tmp_path):
    """Files that are no pickle at all (text, random bytes): one line naming the file, no traceback."""
    for i, data in enumerate([b"hello world", b"\x80\x02}q\x00(X\x01\x00\x00\x00", bytes(range(256)) * 3]):
        path = tmp_path / f"g{i}.pt"
        path.write_bytes(data)
        if where == "checkpoint":
            args, named = ["export", str(path), str(tmp_path / "out")], path
        elif where == "fairseq":
            args, named = ["import", str(path), str(tmp_path / "o.pt")], path
        else:
            folder = tmp_path / f"hf{i}"
            folder.mkdir()
            (folder / "config.json").write_text('{"model_type": "wav2vec2"}')
            shutil.copy(path, folder / "pytorch_model.bin")
            args, named = ["import", str(folder), str(tmp_path / "o.pt")], folder / "pytorch_model.bin"
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (data, result.output, result.exception)
        assert str(named) in one_line_error(result.stderr)


def test_logprob_cache_holding_a_pickle_is_ignored(prepared_librispeech, tmp_path):
    """decode's cache of log-probabilities is read without pickle: a planted object array is not loaded
    (the code in it does not run), the cache is recomputed and the result is the same."""
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "model.pt"
    payload = _small_finetuned(prepared_librispeech)
    save_checkpoint(ckpt, {k: v for k, v in payload.items() if k not in ("format", "version")})
    cache = tmp_path / "cache"
    args = ["decode", "--checkpoint", str(ckpt), "--data", str(prepared_librispeech), "--subset", "dev-clean",
            "--cache-dir", str(cache)]
    first = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    (cached,) = cache.glob("*.npz")
    with open(cached, "wb") as f:
        np.savez(f, lengths=np.array([ExecPayload(marker)], dtype=object), logprobs=np.zeros((1, 2)))
    second = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert not marker.exists()
    assert (tmp_path / "a" / "hyp.trn").read_text() == (tmp_path / "b" / "hyp.trn").read_text()


def test_config_with_a_python_tag_is_refused(prepared_librispeech, tmp_path):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"optim:\n  lr: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(main, ["pretrain", "--config", str(cfg), "--data", str(prepared_librispeech),
                                       "--train-subset", "train-clean-100", "--exp-dir", str(tmp_path / "exp")])
    assert result.exit_code == 2
    assert str(cfg) in one_line_error(result.stderr)
    assert not marker.exists() and not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------------- manifest paths

def _manifest_with(prepared: Path, tmp: Path, subset: str, relpath: str) -> Path:
    data = tmp / "data"
    shutil.copytree(prepared, data)
    tsv = data / f"{subset}.tsv"
    lines = tsv.read_text().splitlines()
    lines[2] = f"{relpath}\t{lines[2].split(chr(9))[1]}"
    tsv.write_text("\n".join(lines) + "\n")
    return data


@pytest.mark.parametrize("relpath", ["../secret.flac", "a/../../secret.flac", "..", "./../../etc/passwd"])
def test_manifest_paths_cannot_climb_out_of_the_root(relpath, prepared_librispeech, tmp_path):
    data = _manifest_with(prepared_librispeech, tmp_path, "dev-clean", relpath)
    for args in (["decode", "--checkpoint", "unused.pt", "--data", str(data), "--subset", "dev-clean", "--out",
                  str(tmp_path / "o")],
                 ["pretrain", "--config", str(PRETRAIN_CONF), "--data", str(data), "--train-subset", "dev-clean",
                  "--exp-dir", str(tmp_path / "exp"), *PRETRAIN_SMALL]):
        if args[0] == "decode":
            ckpt = tmp_path / "unused.pt"
            save_checkpoint(ckpt, {k: v for k, v in _small_finetuned(prepared_librispeech).items()
                                   if k not in ("format", "version")})
            args[2] = str(ckpt)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        line = one_line_error(result.stderr)
        assert str(data / "dev-clean.tsv") in line and "line 3" in line and "escapes the manifest root" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "exp").exists()


def test_inner_dotdot_and_absolute_paths_are_allowed_by_design(prepared_librispeech, tmp_path):
    """`a/../b` stays inside the root; an absolute path names its file wherever it is (by design: a
    manifest may gather files from several places)."""
    from w2vtk.dataset import load_dataset

    root = Path(open(prepared_librispeech / "dev-clean.tsv").readline().strip())
    first, second = (line.split("\t")[0] for line in (prepared_librispeech / "dev-clean.tsv").read_text()
                     .splitlines()[1:3])
    speaker = first.split("/")[0]
    data = _manifest_with(prepared_librispeech, tmp_path, "dev-clean", f"{speaker}/../{second}")
    tsv = data / "dev-clean.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = f"{root / first}\t{lines[1].split(chr(9))[1]}"
    tsv.write_text("\n".join(lines) + "\n")
    ds = load_dataset(data, "dev-clean", crop=False, max_sample_size=10**7, min_sample_size=0, normalize=False, seed=1)
    reference = load_dataset(prepared_librispeech, "dev-clean", crop=False, max_sample_size=10**7, min_sample_size=0,
                             normalize=False, seed=1)
    for i in (0, 1):
        assert torch.equal(ds[i].wav, reference[i].wav)
