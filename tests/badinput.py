"""A corpus of bad inputs: each case damages a copy of the synthesized corpora (or writes a bad file) and
says which `w2vtk` command meets it and what must happen.

Either the command handles the input as documented (`Invocation.error` is None and `check` verifies
the handling), or it stops with a one-line `error: ...` naming the file and the fix (every fragment in
`Invocation.error` must appear in that line) and exit status 2, with no traceback, and every path in
`untouched` is as it was before (no partial output).

Cases are plain functions `case(ws) -> Invocation`, registered in CASES by name.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tiny_runs import FINETUNE_CONF, FINETUNE_SMALL, PRETRAIN_CONF, PRETRAIN_SMALL


@dataclass
class Workspace:
    """Where a case builds its inputs (`tmp`, empty) and the read-only material it copies from."""

    tmp: Path
    librispeech: Path  # synthesized corpus root (LibriSpeech/<subset>/...)
    prepared: Path  # its manifests
    timit: Path  # synthesized TIMIT root (TIMIT/{TRAIN,TEST}/...)
    checkpoint: Path  # a fine-tuned (letters) checkpoint of a very small model
    arpa: Path  # a 3-gram of the corpus text
    lexicon: Path  # its letter lexicon


@dataclass
class Invocation:
    args: list[str]  # w2vtk's arguments
    error: tuple[str, ...] | None = None  # fragments of the one-line error (file, fix); None: must succeed
    check: Callable[[str], None] | None = None  # after a success: verify the handling (gets stdout)
    untouched: tuple[Path, ...] = ()  # must hold after the run exactly what they held before (or not exist)
    process: bool = False  # run as a real subprocess instead of in-process


CASES: dict[str, Callable[[Workspace], Invocation]] = {}


def case(fn: Callable[[Workspace], Invocation]) -> Callable[[Workspace], Invocation]:
    CASES[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------------------------------ building blocks

def copy_librispeech(ws: Workspace, subset: str = "dev-clean") -> Path:
    """A corpus root holding one subset of the synthesized LibriSpeech."""
    root = ws.tmp / "corpus"
    shutil.copytree(ws.librispeech / "LibriSpeech" / subset, root / "LibriSpeech" / subset)
    return root


def chapter(root: Path, subset: str = "dev-clean") -> tuple[Path, list[Path]]:
    """(transcript, flac files) of the first chapter of `subset` in a corpus copy."""
    trans = sorted((root / "LibriSpeech" / subset).rglob("*.trans.txt"))[0]
    return trans, sorted(trans.parent.glob("*.flac"))


def copy_timit(ws: Workspace) -> Path:
    root = ws.tmp / "timit"
    shutil.copytree(ws.timit, root)
    return root


def timit_utterance(root: Path) -> Path:
    """The .WAV of the first SI/SX sentence of the first TRAIN speaker."""
    return sorted(p for p in (root / "TIMIT" / "TRAIN").rglob("*.WAV") if not p.name.startswith("SA"))[0]


def copy_data(ws: Workspace) -> Path:
    """A copy of the manifests (their audio root still points at the synthesized corpus)."""
    data = ws.tmp / "data"
    shutil.copytree(ws.prepared, data)
    return data


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t)
    return np.stack([wav * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wav


def write_sound(path: Path, wav: np.ndarray, rate: int = 16000, fmt: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, rate, format=fmt or {".flac": "FLAC", ".wav": "WAV", ".sph": "NIST"}[path.suffix.lower()],
             subtype="PCM_16")
    return path


def audio_folder(ws: Workspace) -> Path:
    """A folder of two good FLAC files, for `prepare audio`."""
    folder = ws.tmp / "audio"
    for i, src in enumerate(chapter(ws.librispeech)[1][:2]):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / f"good{i}.flac")
    return folder


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def scribble(path: Path, start: int, length: int, seed: int = 0) -> Path:
    """Overwrite `length` bytes from `start` with random bytes."""
    data = bytearray(path.read_bytes())
    data[start:start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def prepare_audio(folder: Path, out: Path) -> list[str]:
    return ["prepare", "audio", str(folder), str(out), "--valid-percent", "0", "-j", "1"]


def prepare_librispeech(root: Path, out: Path) -> list[str]:
    return ["prepare", "librispeech", str(root), str(out), "-j", "1"]


def prepare_timit(root: Path, out: Path) -> list[str]:
    return ["prepare", "timit", str(root), str(out), "-j", "1"]


def pretrain(ws: Workspace, data: Path, *extra: str, config: Path | None = None) -> list[str]:
    """One update of the very small model; with `config`, that file's model instead (no overrides)."""
    small = PRETRAIN_SMALL if config is None else []
    return ["pretrain", "--config", str(config or PRETRAIN_CONF), "--data", str(data), "--train-subset",
            "train-clean-100", "--exp-dir", str(ws.tmp / "exp"), "--max-updates", "1", *small, *extra]


def finetune(ws: Workspace, data: Path, *extra: str, config: Path | None = None) -> list[str]:
    small = FINETUNE_SMALL if config is None else []
    return ["finetune", "--config", str(config or FINETUNE_CONF), "--data", str(data), "--train-subset",
            "train-clean-100", "--labels", "ltr", "--exp-dir", str(ws.tmp / "exp"), "--max-updates", "1", *small,
            *extra]


def decode(ws: Workspace, data: Path, subset: str, *extra: str, checkpoint: Path | None = None) -> list[str]:
    return ["decode", "--checkpoint", str(checkpoint or ws.checkpoint), "--data", str(data), "--subset", subset,
            "--out", str(ws.tmp / "decoded"), *extra]


def manifest_sizes_match_audio(tsv: Path, expected_files: int) -> Callable[[str], None]:
    """A check: the manifest lists `expected_files` files and each size is what read_audio returns."""
    def check(_stdout: str) -> None:
        from w2vtk.audio import read_audio
        from w2vtk.manifest import read_manifest

        m = read_manifest(tsv)
        assert len(m) == expected_files, (m.paths, expected_files)
        for i in range(len(m)):
            assert m.sizes[i] == len(read_audio(m.abspath(i))), m.paths[i]
    return check


# ------------------------------------------------------------------------------------------ audio files

@case
def flac_truncated(ws):
    """A FLAC cut in the middle, met by `transcribe`."""
    victim = cut(chapter(copy_librispeech(ws))[1][0], 0.5)
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), str(victim)],
                      error=(str(victim), "corrupt or truncated", "re-extract or replace it"))


@case
def flac_truncated_prepare(ws):
    """The same cut met by `prepare`: a FLAC header states the length whatever the file holds, so the
    header read checks the stream's last frame."""
    root = copy_librispeech(ws)
    victim = cut(chapter(root)[1][3], 0.5)
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(victim), "truncated", "--skip-bad"), untouched=(out,))


@case
def flac_truncated_in_header(ws):
    root = copy_librispeech(ws)
    victim = cut(chapter(root)[1][2], 0.003)
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(victim), "--skip-bad"), untouched=(out,))


@case
def flac_corrupt_header(ws):
    root = copy_librispeech(ws)
    victim = scribble(chapter(root)[1][1], 8, 30)
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(victim), "--skip-bad"), untouched=(out,))


@case
def flac_corrupt_frames(ws):
    """Garbage in the middle of the audio frames: the header is fine, decoding is not."""
    victim = chapter(copy_librispeech(ws))[1][0]
    scribble(victim, victim.stat().st_size // 2, 2000)
    return Invocation(["extract", "--checkpoint", str(ws.checkpoint), "--out", str(ws.tmp / "feats"), str(victim)],
                      error=(str(victim), "re-extract"), untouched=(ws.tmp / "feats",))


@case
def wav_truncated(ws):
    """A WAV cut mid-data holds fewer samples than its header says: the manifest lists what it holds."""
    folder = audio_folder(ws)
    cut(write_sound(folder / "cut.wav", tone(1.0)), 0.6)
    out = ws.tmp / "out"
    return Invocation(prepare_audio(folder, out), check=manifest_sizes_match_audio(out / "train.tsv", 3))


@case
def wav_corrupt_header(ws):
    folder = audio_folder(ws)
    victim = scribble(write_sound(folder / "bad.wav", tone(1.0)), 0, 16)
    out = ws.tmp / "out"
    return Invocation(prepare_audio(folder, out), error=(str(victim), "--skip-bad"), untouched=(out,))


@case
def wav_corrupt_header_skipped(ws):
    """--skip-bad leaves the file out and lists it in skipped.txt."""
    folder = audio_folder(ws)
    victim = scribble(write_sound(folder / "bad.wav", tone(1.0)), 0, 16)
    out = ws.tmp / "out"

    def check(stdout: str) -> None:
        manifest_sizes_match_audio(out / "train.tsv", 2)(stdout)
        assert (out / "skipped.txt").read_text().startswith(f"{victim}\t")
    return Invocation(prepare_audio(folder, out) + ["--skip-bad"], check=check)


@case
def sphere_truncated(ws):
    """A SPHERE file shorter than its header's sample_count: the manifest lists what it holds."""
    root = copy_timit(ws)
    cut(timit_utterance(root), 0.7)
    out = ws.tmp / "out"
    return Invocation(prepare_timit(root, out), check=manifest_sizes_match_audio(out / "train.tsv", 32))


@case
def sphere_corrupt_header(ws):
    root = copy_timit(ws)
    victim = scribble(timit_utterance(root), 0, 40)
    out = ws.tmp / "out"
    return Invocation(prepare_timit(root, out), error=(str(victim), "--skip-bad"), untouched=(out,))


@case
def sphere_cut_inside_header(ws):
    root = copy_timit(ws)
    victim = cut(timit_utterance(root), 0.005)
    out = ws.tmp / "out"
    return Invocation(prepare_timit(root, out), error=(str(victim), "--skip-bad"), untouched=(out,))


@case
def zero_length_file(ws):
    folder = audio_folder(ws)
    victim = folder / "empty.flac"
    victim.write_bytes(b"")
    out = ws.tmp / "out"
    return Invocation(prepare_audio(folder, out), error=(str(victim), "empty", "remove it"), untouched=(out,))


@case
def one_sample_file(ws):
    """One sample: listed by `prepare` (its size is 1), and shorter than the CNN's receptive field, so
    `transcribe` gives it an empty transcript (documented in decode.compute_logprobs)."""
    victim = write_sound(ws.tmp / "one.wav", np.array([0.5]))

    def check(stdout: str) -> None:
        assert stdout == f"{victim}\t\n", stdout
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), str(victim)], check=check)


@case
def one_sample_file_in_a_manifest(ws):
    folder = audio_folder(ws)
    write_sound(folder / "one.wav", np.array([0.5]))
    out = ws.tmp / "out"

    def check(stdout: str) -> None:
        manifest_sizes_match_audio(out / "train.tsv", 3)(stdout)
        from w2vtk.manifest import read_manifest

        assert 1 in read_manifest(out / "train.tsv").sizes
    return Invocation(prepare_audio(folder, out), check=check)


def _rate_case(ws: Workspace, rate: int) -> Invocation:
    """Other sample rates are resampled to 16 kHz: the manifest gives the 16 kHz length."""
    folder = audio_folder(ws)
    write_sound(folder / f"rate{rate}.wav", tone(1.0, rate), rate)
    out = ws.tmp / "out"

    def check(stdout: str) -> None:
        manifest_sizes_match_audio(out / "train.tsv", 3)(stdout)
        from w2vtk.manifest import read_manifest

        m = read_manifest(out / "train.tsv")
        assert m.sizes[m.paths.index(f"rate{rate}.wav")] == 16000
    return Invocation(prepare_audio(folder, out), check=check)


@case
def rate_8khz(ws):
    return _rate_case(ws, 8000)


@case
def rate_44khz(ws):
    return _rate_case(ws, 44100)


@case
def rate_in_a_corrupt_header(ws):
    """A WAV header whose sample rate field is garbage (654 MHz): resampling it would need gigabytes."""
    folder = audio_folder(ws)
    victim = write_sound(folder / "bad-rate.wav", tone(0.5))
    data = bytearray(victim.read_bytes())
    data[24:28] = (654319424).to_bytes(4, "little")
    victim.write_bytes(bytes(data))
    out = ws.tmp / "out"
    return Invocation(prepare_audio(folder, out), error=(str(victim), "654319424 Hz", "sox"), untouched=(out,))


@case
def rate_unusual(ws):
    """16001 Hz is a valid header, but no rate w2vtk resamples cheaply: `transcribe` says how to convert it."""
    victim = write_sound(ws.tmp / "odd.wav", tone(0.5, 16001), 16001)
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), str(victim)],
                      error=(str(victim), "16001 Hz", "sox IN -r 16000 OUT"))


@case
def stereo_file(ws):
    """Stereo is down-mixed (with a warning): `transcribe` reads it like its mono mix."""
    stereo = write_sound(ws.tmp / "stereo.flac", tone(1.5, channels=2))
    mono = write_sound(ws.tmp / "mono.flac", tone(1.5, channels=2).mean(axis=1))

    def check(stdout: str) -> None:
        lines = stdout.splitlines()
        assert len(lines) == 2 and lines[0].split("\t")[1] == lines[1].split("\t")[1], stdout
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), str(stereo), str(mono)], check=check)


@case
def directory_named_like_a_file(ws):
    """A folder `x.flac/` where a chapter's audio file should be."""
    root = copy_librispeech(ws)
    _, flacs = chapter(root)
    flacs[0].unlink()
    flacs[0].mkdir()
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(flacs[0]), "is a directory"), untouched=(out,))


@case
def directory_named_like_a_file_in_a_folder(ws):
    """`prepare audio` collects files only: a folder named `x.flac/` is not audio."""
    folder = audio_folder(ws)
    (folder / "fake.flac").mkdir()
    out = ws.tmp / "out"
    return Invocation(prepare_audio(folder, out), check=manifest_sizes_match_audio(out / "train.tsv", 2))


@case
def audio_shorter_than_the_receptive_field(ws):
    victim = write_sound(ws.tmp / "short.wav", tone(0.02))  # 320 samples < 400
    return Invocation(["extract", "--checkpoint", str(ws.checkpoint), "--out", str(ws.tmp / "feats"), str(victim)],
                      error=(str(victim), "receptive field", "remove or pad"), untouched=(ws.tmp / "feats",))


@case
def audio_corrupted_after_prepare(ws):
    """A file damaged after `prepare` is met by a data-loading worker process during pretraining."""
    root = copy_librispeech(ws, "train-clean-100")
    data = copy_data(ws)
    tsv = data / "train-clean-100.tsv"
    lines = tsv.read_text().splitlines()
    lines[0] = str(root / "LibriSpeech" / "train-clean-100")
    tsv.write_text("\n".join(lines) + "\n")
    for line in lines[1:]:
        scribble(root / "LibriSpeech" / "train-clean-100" / line.split("\t")[0], 100, 4000)
    return Invocation(pretrain(ws, data, "data.num_workers=1"), error=(str(root), "re-extract or replace it"),
                      process=True)


# ------------------------------------------------------------------------------------------ transcripts and labels

@case
def transcript_line_missing(ws):
    root = copy_librispeech(ws)
    trans, _ = chapter(root)
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(trans), "line 3", "add the line"), untouched=(out,))


@case
def transcript_line_duplicated(ws):
    root = copy_librispeech(ws)
    trans, _ = chapter(root)
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[:2] + [lines[1]] + lines[2:]) + "\n")
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(trans), "line 3", "twice", "remove"),
                      untouched=(out,))


@case
def transcript_line_empty(ws):
    """A line holding only the utterance id."""
    root = copy_librispeech(ws)
    trans, _ = chapter(root)
    lines = trans.read_text().splitlines()
    lines[1] = lines[1].split()[0]
    trans.write_text("\n".join(lines) + "\n")
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(trans), "line 2", "expected `<utt-id> TRANSCRIPT`"),
                      untouched=(out,))


@case
def transcript_blank_lines(ws):
    """Blank lines between transcript lines are ignored."""
    root = copy_librispeech(ws)
    trans, flacs = chapter(root)
    trans.write_text("\n\n".join(trans.read_text().splitlines()) + "\n\n\n")
    out = ws.tmp / "out"
    expected = len(list((root / "LibriSpeech" / "dev-clean").rglob("*.flac")))
    return Invocation(prepare_librispeech(root, out), check=manifest_sizes_match_audio(out / "dev-clean.tsv", expected))


@case
def transcript_not_utf8(ws):
    root = copy_librispeech(ws)
    trans, _ = chapter(root)
    lines = trans.read_bytes().split(b"\n")
    lines[3] = lines[3] + b" CAF\xe9"  # Latin-1
    trans.write_bytes(b"\n".join(lines))
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(trans), "line 4", "UTF-8", "re-extract"),
                      untouched=(out,))


@case
def letters_outside_the_vocabulary(ws):
    root = copy_librispeech(ws)
    trans, _ = chapter(root)
    lines = trans.read_text().splitlines()
    lines[0] += " ROOM 101"
    trans.write_text("\n".join(lines) + "\n")
    out = ws.tmp / "out"
    return Invocation(prepare_librispeech(root, out), error=(str(trans), "line 1", "'1'", "fix the transcript"),
                      untouched=(out,))


@case
def label_symbol_outside_the_dictionary(ws):
    """A label file of the training subset uses a letter that dict.ltr.txt does not list."""
    data = copy_data(ws)
    dictionary = data / "dict.ltr.txt"
    dictionary.write_text("".join(line + "\n" for line in dictionary.read_text().splitlines()
                                  if not line.startswith("E ")))
    return Invocation(finetune(ws, data), error=(str(data / "train-clean-100.ltr"), "'E'", "dict.ltr.txt"),
                      untouched=(ws.tmp / "exp",))


@case
def label_lines_out_of_step(ws):
    data = copy_data(ws)
    ltr = data / "train-clean-100.ltr"
    ltr.write_text("".join(line + "\n" for line in ltr.read_text().splitlines()[:-1]))
    return Invocation(finetune(ws, data), error=(str(ltr), "re-run `w2vtk prepare`"), untouched=(ws.tmp / "exp",))


@case
def unknown_timit_phone(ws):
    root = copy_timit(ws)
    phn = timit_utterance(root).with_suffix(".PHN")
    lines = phn.read_text().splitlines()
    start, end, _ = lines[2].split()
    lines[2] = f"{start} {end} xx"
    phn.write_text("\n".join(lines) + "\n")
    out = ws.tmp / "out"
    return Invocation(prepare_timit(root, out), error=(str(phn), "line 3", "'xx'", "correct the label"),
                      untouched=(out,))


@case
def dictionary_malformed(ws):
    data = copy_data(ws)
    (data / "dict.ltr.txt").write_text("A 10\nB\n")
    return Invocation(finetune(ws, data), error=(str(data / "dict.ltr.txt"), "line 2", "<symbol> <count>"),
                      untouched=(ws.tmp / "exp",))


# ------------------------------------------------------------------------------------------ manifests

@case
def manifest_root_moved(ws):
    data = copy_data(ws)
    tsv = data / "train-clean-100.tsv"
    lines = tsv.read_text().splitlines()
    lines[0] = str(ws.tmp / "moved-away")
    tsv.write_text("\n".join(lines) + "\n")
    return Invocation(pretrain(ws, data), error=(str(tsv), "line 1", "new location"), untouched=(ws.tmp / "exp",))


@case
def manifest_root_moved_decode(ws):
    data = copy_data(ws)
    tsv = data / "dev-clean.tsv"
    lines = tsv.read_text().splitlines()
    lines[0] = str(ws.tmp / "moved-away")
    tsv.write_text("\n".join(lines) + "\n")
    return Invocation(decode(ws, data, "dev-clean"), error=(str(tsv), "line 1", "new location"),
                      untouched=(ws.tmp / "decoded",))


@case
def manifest_size_not_a_number(ws):
    data = copy_data(ws)
    tsv = data / "train-clean-100.tsv"
    lines = tsv.read_text().splitlines()
    lines[3] = lines[3].split("\t")[0] + "\tmany"
    tsv.write_text("\n".join(lines) + "\n")
    return Invocation(pretrain(ws, data), error=(str(tsv), "line 4", "'many'"), untouched=(ws.tmp / "exp",))


# ------------------------------------------------------------------------------------------ configs

def _config(ws: Workspace, base: Path, section: str, key: str, value: str) -> Path:
    """A copy of the YAML config `base` with `section.key` set to the YAML text `value`."""
    import yaml

    cfg = yaml.safe_load(base.read_text())
    cfg.setdefault(section, {})[key] = yaml.safe_load(value)
    path = ws.tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@case
def config_wrong_type(ws):
    cfg = _config(ws, PRETRAIN_CONF, "optim", "lr", "fast")
    return Invocation(pretrain(ws, ws.prepared, config=cfg), error=(str(cfg), "optim.lr", "expected a number"),
                      untouched=(ws.tmp / "exp",))


@case
def config_negative_value(ws):
    cfg = _config(ws, FINETUNE_CONF, "data", "max_tokens", "-400000")
    return Invocation(finetune(ws, ws.prepared, config=cfg), error=(str(cfg), "data.max_tokens", "must be > 0"),
                      untouched=(ws.tmp / "exp",))


@case
def config_unknown_key(ws):
    cfg = _config(ws, PRETRAIN_CONF, "optim", "learning_rate", "0.001")
    return Invocation(pretrain(ws, ws.prepared, config=cfg),
                      error=(str(cfg), "unknown key 'learning_rate'", "known keys: lr"),
                      untouched=(ws.tmp / "exp",))


@case
def config_infinite_channels(ws):
    cfg = _config(ws, PRETRAIN_CONF, "model", "conv_layers", "[[.inf, 10, 5]]")
    return Invocation(pretrain(ws, ws.prepared, config=cfg), error=(str(cfg), "conv_layers"),
                      untouched=(ws.tmp / "exp",))


@case
def config_negative_phase(ws):
    cfg = _config(ws, FINETUNE_CONF, "optim", "phase_ratio", "[1.5, -0.5, 0.0]")
    return Invocation(finetune(ws, ws.prepared, config=cfg), error=(str(cfg), "phase_ratio", "within [0, 1]"),
                      untouched=(ws.tmp / "exp",))


@case
def config_integer_too_large(ws):
    cfg = _config(ws, PRETRAIN_CONF, "data", "max_tokens", "1.0e+300")
    return Invocation(pretrain(ws, ws.prepared, config=cfg), error=(str(cfg), "data.max_tokens"),
                      untouched=(ws.tmp / "exp",))


@case
def config_mask_longer_than_utterances(ws):
    """Time-mask spans longer than every utterance are cut at the utterance's end: training runs."""
    exp = ws.tmp / "exp"

    def check(_stdout: str) -> None:
        from w2vtk.checkpoint import load_checkpoint

        assert load_checkpoint(exp / "checkpoints" / "last.pt")["trainer"]["step"] == 1
    return Invocation(pretrain(ws, ws.prepared, "task.mask_length=1000000000"), check=check)


@case
def override_wrong_type(ws):
    return Invocation(pretrain(ws, ws.prepared, "trainer.save_interval=often"),
                      error=("trainer.save_interval", "expected an integer", "overrides"), untouched=(ws.tmp / "exp",))


# ------------------------------------------------------------------------------------------ LMs and lexicons

def _arpa_text(ws: Workspace) -> str:
    return ws.arpa.read_text()


@case
def lm_text_too_small_for_its_discounts(ws):
    """lmplz cannot estimate Kneser-Ney discounts from a few sentences: `lm train` retries with
    --discount_fallback, and the failed attempt leaves none of lmplz's sort files beside the model (it
    did about one time in four, so the check trains eight more times)."""
    text = ws.tmp / "few.txt"
    text.write_text("THE CAT SAT\nTHE DOG SAT ON THE CAT\n")
    out = ws.tmp / "lm"

    def check(_stdout: str) -> None:
        from w2vtk.lm import train_lm

        for i in range(8):
            train_lm(text, out / f"again{i}.arpa", order=4)
        assert sorted(p.name for p in out.iterdir()) == sorted(["few.arpa"] + [f"again{i}.arpa" for i in range(8)])
    return Invocation(["lm", "train", "--order", "4", str(text), str(out / "few.arpa")], check=check)


@case
def arpa_truncated(ws):
    text = _arpa_text(ws)
    victim = ws.tmp / "cut.arpa"
    victim.write_text(text[:len(text) // 2])
    out = ws.tmp / "lm.bin"
    return Invocation(["lm", "binary", str(victim), str(out)], error=(str(victim), "truncated", "w2vtk lm train"),
                      untouched=(out,))


@case
def arpa_truncated_decode(ws):
    text = _arpa_text(ws)
    victim = ws.tmp / "cut.arpa"
    victim.write_text(text[:len(text) // 2])
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(victim), "--lexicon", str(ws.lexicon)),
                      error=(str(victim), "truncated", "w2vtk lm train"), untouched=(ws.tmp / "decoded",))


def _arpa_with_latin1(ws: Workspace) -> Path:
    """The 3-gram with one word of its 2-gram section in Latin-1 (not UTF-8)."""
    data = ws.arpa.read_bytes()
    at = data.index(b"\\2-grams:")
    at = data.index(b"\t", at) + 1
    victim = ws.tmp / "latin1.arpa"
    victim.write_bytes(data[:at] + b"CAF\xc9" + data[at:])
    return victim


@case
def arpa_not_utf8_flashlight(ws):
    victim = _arpa_with_latin1(ws)
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(victim), "--lexicon", str(ws.lexicon)),
                      error=(str(victim), "not UTF-8", "w2vtk lm train"), untouched=(ws.tmp / "decoded",))


@case
def arpa_not_utf8_pyctcdecode(ws):
    victim = _arpa_with_latin1(ws)
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(victim), "--decoder", "pyctcdecode"),
                      error=(str(victim), "not UTF-8", "w2vtk lm train"), untouched=(ws.tmp / "decoded",))


@case
def arpa_order_too_high(ws):
    victim = ws.tmp / "7gram.arpa"
    victim.write_text("\\data\\\n" + "".join(f"ngram {n}=1\n" for n in range(1, 8)) + "\n\\1-grams:\n-1\tA\n")
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(victim), "--lexicon", str(ws.lexicon)),
                      error=(str(victim), "7-gram", "--order 6"), untouched=(ws.tmp / "decoded",))


@case
def arpa_order_absurd(ws):
    victim = ws.tmp / "huge.arpa"
    victim.write_text("\\data\\\nngram 1=2\nngram 99999999999=1\n\n\\1-grams:\n-1\tA\n-1\tB\n")
    out = ws.tmp / "lexicon.txt"
    return Invocation(["lm", "lexicon", str(victim), str(out)], error=(str(victim), "w2vtk lm train"),
                      untouched=(out,))


@case
def arpa_order_missing(ws):
    victim = ws.tmp / "gap.arpa"
    victim.write_text("\\data\\\nngram 1=2\nngram 3=1\n\n\\1-grams:\n-1\tA\n-1\tB\n")
    out = ws.tmp / "lexicon.txt"
    return Invocation(["lm", "lexicon", str(victim), str(out)], error=(str(victim), "orders [1, 3]", "w2vtk lm train"),
                      untouched=(out,))


@case
def lexicon_line_without_its_word(ws):
    victim = ws.tmp / "lexicon.txt"
    lines = ws.lexicon.read_text().splitlines()
    lines[4] = "\t" + lines[4].split("\t", 1)[1]
    victim.write_text("\n".join(lines) + "\n")
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(ws.arpa), "--lexicon", str(victim)),
                      error=(f"{victim}:5", "no word", "w2vtk lm lexicon"), untouched=(ws.tmp / "decoded",))


@case
def lexicon_missing_words(ws):
    """A lexicon that lacks most of the LM's words: the decoder only produces the words it has."""
    victim = ws.tmp / "lexicon.txt"
    kept = ws.lexicon.read_text().splitlines()[:5]
    victim.write_text("\n".join(kept) + "\n")
    allowed = {line.split("\t")[0] for line in kept}

    def check(_stdout: str) -> None:
        from w2vtk.scoring import read_trn

        for words in read_trn(ws.tmp / "decoded" / "hyp.trn").values():
            assert set(words) <= allowed, words
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--lm", str(ws.arpa), "--lexicon", str(victim),
                             "--beam", "4"), check=check)


# ------------------------------------------------------------------------------------------ checkpoints

def _checkpoint_with(ws: Workspace, name: str, **config_changes) -> Path:
    """A copy of the fine-tuned checkpoint whose stored config differs from its weights."""
    from w2vtk.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(ws.checkpoint)
    ckpt["model_config"] = {**ckpt["model_config"], **config_changes}
    path = ws.tmp / name
    save_checkpoint(path, ckpt)
    return path


@case
def checkpoint_of_another_architecture(ws):
    victim = _checkpoint_with(ws, "other.pt", encoder_layers=3)
    return Invocation(decode(ws, ws.prepared, "dev-clean", checkpoint=victim),
                      error=(str(victim), "missing: encoder.layers.2"), untouched=(ws.tmp / "decoded",))


@case
def resume_with_another_architecture(ws):
    """An experiment folder whose last.pt has another architecture than the config: refused, and the
    folder (its config.yaml too) is left as it was."""
    from w2vtk.checkpoint import load_checkpoint, save_checkpoint

    exp = ws.tmp / "exp"
    ckpt = load_checkpoint(ws.checkpoint)
    save_checkpoint(exp / "checkpoints" / "last.pt", {**ckpt, "kind": "finetune", "trainer": {}})
    (exp / "config.yaml").write_text("# the configuration of the run in this folder\n")
    return Invocation(finetune(ws, ws.prepared, "model.encoder_layers=3"),
                      error=(str(exp / "checkpoints" / "last.pt"), "encoder_layers", "another --exp-dir"),
                      untouched=(exp,))


@case
def init_from_another_architecture(ws):
    victim = _checkpoint_with(ws, "init.pt", encoder_embed_dim=64, encoder_ffn_embed_dim=128)
    return Invocation(finetune(ws, ws.prepared, "--init", str(victim)), error=(str(victim), "shape mismatch"),
                      untouched=(ws.tmp / "exp",))


@case
def checkpoint_truncated(ws):
    victim = ws.tmp / "cut.pt"
    victim.write_bytes(ws.checkpoint.read_bytes()[:5000])
    return Invocation(["export", str(victim), str(ws.tmp / "hf")], error=(str(victim), "truncated"),
                      untouched=(ws.tmp / "hf",))


@case
def checkpoint_not_a_checkpoint(ws):
    victim = ws.tmp / "notes.pt"
    victim.write_text("not a checkpoint\n")
    return Invocation(["extract", "--checkpoint", str(victim), "--out", str(ws.tmp / "feats"),
                       str(chapter(ws.librispeech)[1][0])],
                      error=(str(victim), "not a torch checkpoint"), untouched=(ws.tmp / "feats",))


# ------------------------------------------------------------------------------------------ reports

@case
def score_file_damaged(ws):
    """A decoding's wer.json whose error rate is no number: `results` names it."""
    exp = ws.tmp / "exp"
    good = exp / "decode" / "model" / "dev-clean" / "greedy" / "wer.json"
    bad = exp / "decode" / "model" / "test-clean" / "greedy" / "wer.json"
    for path, wer in ((good, 12.5), (bad, "12,5")):
        path.parent.mkdir(parents=True)
        path.write_text(f'{{"wer": {wer!r}, "ref_tokens": 80}}'.replace("'", '"'))
    return Invocation(["results", str(exp)], error=(str(bad), "not a number", "rerun the decoding"),
                      untouched=(exp / "RESULTS.md", exp / "results.json"))


@case
def training_log_damaged(ws):
    """A log.jsonl line that is no training record: `plot` names the file and line."""
    exp = ws.tmp / "exp"
    exp.mkdir()
    (exp / "log.jsonl").write_text('{"step": 1, "loss": 2.5}\n[1, 2]\n{"step": 2, "loss": 2.0}\n')
    out = ws.tmp / "curve.png"
    return Invocation(["plot", str(exp), "--out", str(out)], error=(f"{exp / 'log.jsonl'}:2", "training log"),
                      untouched=(out,))


@case
def audio_argument_is_a_directory(ws):
    """click's own check, with its usage error (exit status 2, the `Error:` line last)."""
    folder = ws.tmp / "x.flac"
    folder.mkdir()
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), str(folder)],
                      error=("Error:", str(folder), "is a directory"))


@case
def output_folder_is_a_file(ws):
    """An output path that runs through a file: one line naming the output (not its temporary file)."""
    blocker = ws.tmp / "lm"
    blocker.write_text("a file where a folder should be\n")
    return Invocation(["lm", "lexicon", str(ws.arpa), str(blocker / "lexicon.txt")],
                      error=(str(blocker / "lexicon.txt"), "a file is in the way", "check the path"),
                      untouched=(blocker,))


# ------------------------------------------------------------------------ transcripts, N-best and alignment

@case
def nbest_zero(ws):
    return Invocation(decode(ws, ws.prepared, "dev-clean", "--nbest", "0"), error=("--nbest 0", "at least 1"),
                      untouched=(ws.tmp / "decoded",))


@case
def transcript_format_unknown(ws):
    audio = write_sound(ws.tmp / "a.wav", tone(1.0))
    return Invocation(["transcribe", "--checkpoint", str(ws.checkpoint), "--format", "xml", str(audio)],
                      error=("--format 'xml'", "text, json, ctm, textgrid"))


@case
def align_symbol_outside_the_vocabulary(ws):
    data = copy_data(ws)
    ltr = data / "dev-clean.ltr"
    lines = ltr.read_text().splitlines()
    lines[2] = lines[2].replace("E", "É", 1)
    ltr.write_text("\n".join(lines) + "\n")
    out = ws.tmp / "aligned"
    return Invocation(["align", "--checkpoint", str(ws.checkpoint), "--data", str(data), "--subset", "dev-clean",
                       "--out", str(out)], error=(f"{ltr}:3", "É", "outside the model's ltr vocabulary",
                                                  "correct the transcript"), untouched=(out,))


@case
def align_audio_shorter_than_one_frame(ws):
    data = copy_data(ws)
    folder = ws.tmp / "audio"
    folder.mkdir()
    write_sound(folder / "long.wav", tone(1.0))
    victim = write_sound(folder / "short.wav", tone(0.02))  # 320 samples < 400
    (data / "mine.tsv").write_text(f"{folder}\nlong.wav\t16000\nshort.wav\t320\n")
    (data / "mine.ltr").write_text("A |\nB |\n")
    out = ws.tmp / "aligned"
    return Invocation(["align", "--checkpoint", str(ws.checkpoint), "--data", str(data), "--subset", "mine",
                       "--out", str(out)], error=(str(victim), "shorter than one frame", "remove it"),
                      untouched=(out,))
