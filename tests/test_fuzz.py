"""Fuzzing: the text parsers (manifests, label and transcript files, dictionaries, ARPA headers, lexicons,
configs and overrides) with hypothesis, and the binary readers (audio, checkpoints, KenLM models) with a
few hundred mutated files each, in a child process with a memory limit.

Whatever the input, a parser returns or raises W2vtkError with a one-line message; any other exception,
a MemoryError, a crash or a hang is a bug.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny_runs import ENV, ROOT
from w2vtk.errors import W2vtkError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CHILD_MEMORY = 2 << 30  # bytes of heap a fuzzed reader may use before it counts as a MemoryError
FILES_PER_READER = {"audio": 600, "checkpoint": 300, "kenlm": 300}


def only_clear_errors(fn, *args) -> None:
    try:
        fn(*args)
    except W2vtkError as e:
        assert "\n" not in str(e), repr(str(e))


# Pieces that make random text look like the files: paths, tabs, numbers, ARPA and lexicon lines.
PIECES = ["\t", "/", "..", "../x.flac", "a/../../b.flac", "/abs/x.wav", "x.flac\t16000", "x\t-1", "x\t1e3",
          "x\t99999999999999999999999", "\\data\\", "ngram 1=3", "ngram 2=1", "ngram 7=1", "ngram 99999999999=1",
          "ngram 1=-4", "\\1-grams:", "\\2-grams:", "-1.5\tA\t-0.3", "-1\t<s>", "\\end\\", "HELLO\tH E L L O |",
          "\tH E L |", "A 12", "| 5", "<s> 1", "0 1600 h#", "1600 3200 xx", "3200 100 sh", "1272-128104-0000 HELLO",
          "1272-128104-0000", "utt WORLD'S", "utt CAFÉ", "\ufeff", "\r", " ", "\x00", "é", "NaN", "inf"]
lines = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=30)), max_size=12).map("\n".join)
text_bytes = st.one_of(st.binary(max_size=400), lines.map(lambda s: s.encode("utf-8", "surrogatepass")),
                       st.tuples(lines, st.binary(max_size=8)).map(
                           lambda t: t[0].encode("utf-8", "surrogatepass") + t[1]))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(data=text_bytes, count=st.integers(0, 5))
def test_manifest_and_label_parsers(scratch, data, count):
    from w2vtk.manifest import read_labels, read_manifest

    path = scratch / "subset.tsv"
    path.write_bytes(data)
    only_clear_errors(read_manifest, path)
    only_clear_errors(read_labels, path, count)


@FUZZ
@given(data=text_bytes)
def test_transcript_phone_and_dictionary_parsers(scratch, data):
    """LibriSpeech chapter transcripts (through the chapter reader), TIMIT .PHN/.WRD, dict.*.txt."""
    import shutil

    from w2vtk.corpora.librispeech import read_chapters
    from w2vtk.corpora.timit import read_phones, read_words
    from w2vtk.text import Vocabulary

    chapter = scratch / "chapter" / "1272" / "128104"
    shutil.rmtree(scratch / "chapter", ignore_errors=True)
    chapter.mkdir(parents=True)
    (chapter / "1272-128104.trans.txt").write_bytes(data)
    (chapter / "1272-128104-0000.flac").write_bytes(b"")
    only_clear_errors(read_chapters, scratch / "chapter", scratch / "chapter")
    phn = scratch / "SX1.PHN"
    phn.write_bytes(data)
    only_clear_errors(read_phones, phn)
    only_clear_errors(read_words, phn)
    for kind in ("ltr", "phn"):
        only_clear_errors(Vocabulary.from_dict_file, phn, kind)


@FUZZ
@given(data=text_bytes)
def test_arpa_and_lexicon_parsers(scratch, data):
    """What is read of an LM file or lexicon named by --lm/--lexicon before KenLM sees it."""
    from w2vtk.lm import arpa_unigrams, check_lm_file, lexicon_words, read_lexicon

    for name in ("lm.arpa", "lm.arpa.gz"):
        path = scratch / name
        path.write_bytes(data if name.endswith(".arpa") else _gzip(data))
        for reader in (check_lm_file, arpa_unigrams, read_lexicon, lexicon_words):
            only_clear_errors(reader, path)


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


# YAML-shaped values for config files: nested sections with the real keys, values of every type.
KEYS = ["model", "task", "data", "optim", "trainer", "lr", "max_tokens", "conv_layers", "betas", "latent_temp",
        "phase_ratio", "encoder_layers", "encoder_embed_dim", "scheduler", "mask_length", "labels", "precision",
        "device", "dropout", "update_freq", "max_updates", "unknown"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.sampled_from([".inf", "-.inf", ".nan", "1e400", "1e-4", "0x10", "~", "[1, 2]", "{a: 1}"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=16)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
       overrides=st.lists(st.one_of(st.text(max_size=24), st.builds(
           lambda k, v: f"{k}={v}", st.sampled_from(["optim.lr", "model.conv_layers", "data.max_tokens",
                                                     "task.latent_temp", "optim.phase_ratio", "trainer.x",
                                                     "model", "optim.lr.x", "a..b"]),
           st.sampled_from(["1e-3", "-1", ".inf", "[[.inf, 1, 1]]", "[1, -1, 1]", "abc", "", "{x: 1}", "1e400",
                            "[0.1, 0.4, 0.5]", "9223372036854775808"]))), max_size=3))
def test_config_files_and_overrides(scratch, doc, overrides):
    from w2vtk.config import load_config
    from w2vtk.training.config import FinetuneConfig, PretrainConfig

    path = scratch / "conf.yaml"
    path.write_text(yaml.safe_dump(doc))
    for cls in (PretrainConfig, FinetuneConfig):
        only_clear_errors(load_config, cls, path, overrides)


@FUZZ
@given(data=text_bytes)
def test_config_file_bytes(scratch, data):
    from w2vtk.config import load_config
    from w2vtk.training.config import PretrainConfig

    path = scratch / "conf.yaml"
    path.write_bytes(data)
    only_clear_errors(load_config, PretrainConfig, path)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                                     st.text(max_size=6), st.sampled_from(["F32", "F16", "I64", "BOOL", "X"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets",
                                                                                    "__metadata__"]), inner,
                                                                   max_size=4)), max_leaves=12)


small = st.one_of(st.integers(-3, 20), st.sampled_from([0.0, 4.0, True, 2**63, "4"]))
tensor_entries = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "U8"]),
                                        "shape": st.lists(small, max_size=3),
                                        "data_offsets": st.lists(small, min_size=2, max_size=2)})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), st.one_of(tensor_entries, json_values), max_size=3),
       body=st.binary(max_size=64),
       size_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40]))
def test_safetensors_reader(scratch, header, body, size_delta):
    """The weight file of a transformers folder (`w2vtk import`): a JSON header describing the tensors."""
    import json
    import struct

    from w2vtk.convert.safetensors import read_safetensors

    text = json.dumps(header).encode()
    path = scratch / "model.safetensors"
    path.write_bytes(struct.pack("<Q", max(0, len(text) + size_delta)) + text + body)
    only_clear_errors(read_safetensors, path)


# ------------------------------------------------------------------------------------- binary readers

@pytest.fixture(scope="module")
def seed_files(tmp_path_factory, synth_librispeech) -> dict[str, list[Path]]:
    """Valid files to mutate: audio in every format the readers take, a checkpoint (zip and old format),
    a 3-gram ARPA."""
    import numpy as np
    import soundfile as sf
    import torch

    from w2vtk.checkpoint import save_checkpoint
    from w2vtk.lm import train_lm
    from w2vtk.model import build_model, tiny_config

    d = tmp_path_factory.mktemp("fuzz_seeds")
    t = np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    audio = [d / "a.flac", d / "a.wav", d / "a.sph", d / "a8k.wav", d / "stereo.flac"]
    sf.write(audio[0], wav, 16000)
    sf.write(audio[1], wav, 16000, subtype="PCM_16")
    sf.write(audio[2], wav, 16000, format="NIST", subtype="PCM_16")
    sf.write(audio[3], wav[:8000], 8000, subtype="PCM_16")
    sf.write(audio[4], np.stack([wav, wav], axis=1), 16000)
    cfg = tiny_config(conv_layers=[[8, 10, 5]] + [[8, 3, 2]] * 4 + [[8, 2, 2]] * 2, encoder_embed_dim=16,
                      encoder_layers=1, encoder_ffn_embed_dim=16, encoder_attention_heads=2, conv_pos=4,
                      conv_pos_groups=2, final_dim=8, latent_vars=4)
    payload = {"kind": "pretrain", "model_config": cfg.to_dict(), "model": build_model(cfg).state_dict()}
    save_checkpoint(d / "c.pt", payload)
    torch.save({"format": "w2vtk", "version": 1, **payload}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    train_lm(synth_librispeech / "lm-text.txt", d / "lm.arpa", order=3)
    return {"audio": audio, "checkpoint": [d / "c.pt", d / "legacy.pt"], "kenlm": [d / "lm.arpa"]}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (CHILD_MEMORY, CHILD_MEMORY))


@pytest.mark.parametrize("kind", sorted(FILES_PER_READER))
def test_binary_readers_on_mutated_files(kind, seed_files, tmp_path):
    """audio_info + read_audio, load_checkpoint + model_from_checkpoint, load_kenlm + scoring: only
    W2vtkError, never another exception, a crash or a MemoryError (the child's heap is capped)."""
    count = FILES_PER_READER[kind]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_inputs.py"), kind, "1", str(count),
                           str(tmp_path), *map(str, seed_files[kind])], capture_output=True, text=True, env=ENV,
                          cwd=ROOT / "tests", preexec_fn=_limit_memory, timeout=600)
    out = proc.stdout.splitlines()
    tried = [line.split(" ", 1)[1] for line in out if line.startswith("TRY ")]
    failures = [line for line in out if line.startswith("FAIL ")]
    assert proc.returncode == 0 and out[-1:] == ["DONE"], (
        f"the reader died (status {proc.returncode}) on {tried[-1] if tried else '?'}:\n{proc.stderr[-3000:]}")
    assert len(tried) == count
    assert not failures, "\n".join(failures[:10])
