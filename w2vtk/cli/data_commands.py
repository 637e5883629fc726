"""`w2vtk prepare ...` and `w2vtk synth ...`: corpora on disk -> manifests, and synthesized corpora."""
from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_JOBS = min(8, os.cpu_count() or 1)
_dir_in = click.Path(file_okay=False, path_type=Path)
_dir_out = click.Path(file_okay=False, path_type=Path)


def _prepare_options(fn):
    fn = click.option("--skip-bad", is_flag=True,
                      help="Leave out audio files that cannot be read (listed in OUT_DIR/skipped.txt) "
                           "instead of stopping at the first one.")(fn)
    fn = click.option("--jobs", "-j", type=click.IntRange(min=1), default=DEFAULT_JOBS, show_default=True,
                      help="Worker processes reading audio headers.")(fn)
    return fn


def _print_summary(summary) -> None:
    click.echo(summary.table())


@click.group()
def prepare() -> None:
    """Turn a corpus on disk into fairseq-style manifests (tsv) and label files.

    Each command writes OUT_DIR/<subset>.tsv (line 1: the absolute audio root, then
    `relpath<TAB>num_samples`) and line-aligned label files. Re-running gives identical files.
    """


@prepare.command("librispeech")
@click.argument("corpus_dir", type=_dir_in)
@click.argument("out_dir", type=_dir_out)
@click.option("--subsets", default="", metavar="A,B,...",
              help="Comma-separated subsets to prepare, e.g. train-clean-100,dev-clean "
                   "(default: every subset found).")
@_prepare_options
def prepare_librispeech_cmd(corpus_dir: Path, out_dir: Path, subsets: str, jobs: int, skip_bad: bool) -> None:
    """LibriSpeech: CORPUS_DIR holds the subset folders (or a LibriSpeech/ folder holding them).

    Writes <subset>.tsv, .wrd (words) and .ltr (letters, `|` after each word) per subset, and
    dict.ltr.txt counted over the train* subsets.
    """
    from w2vtk.corpora.librispeech import prepare_librispeech

    names = [s.strip() for s in subsets.split(",") if s.strip()]
    _print_summary(prepare_librispeech(corpus_dir, out_dir, names or None, jobs=jobs, skip_bad=skip_bad))


@prepare.command("librilight")
@click.argument("corpus_dir", type=_dir_in)
@click.argument("out_dir", type=_dir_out)
@_prepare_options
def prepare_librilight_cmd(corpus_dir: Path, out_dir: Path, jobs: int, skip_bad: bool) -> None:
    """Libri-light limited-resource splits: CORPUS_DIR is the extracted librispeech_finetuning/.

    Writes train-10m (1h/0), train-1h (1h/0..5) and train-10h (1h/* + 9h) with .tsv, .wrd, .ltr,
    and dict.ltr.txt. Pair them with dev/test subsets from `w2vtk prepare librispeech`.
    """
    from w2vtk.corpora.librilight import prepare_librilight

    _print_summary(prepare_librilight(corpus_dir, out_dir, jobs=jobs, skip_bad=skip_bad))


@prepare.command("timit")
@click.argument("corpus_dir", type=_dir_in)
@click.argument("out_dir", type=_dir_out)
@click.option("--phones", type=click.Choice(["39", "48", "61"]), default="39", show_default=True,
              help="Phone set of the .phn labels: 39 (Lee & Hon scoring set), 48 (Kaldi's training set) "
                   "or 61 (TIMIT's own; q is deleted in every set).")
@click.option("--sil/--no-sil", "keep_sil", default=True, show_default=True,
              help="Keep `sil` (closures, pauses and h# after folding) as a phone in the labels, as "
                   "Kaldi does when scoring; --no-sil drops it, as some papers do.")
@_prepare_options
def prepare_timit_cmd(corpus_dir: Path, out_dir: Path, phones: str, keep_sil: bool, jobs: int,
                      skip_bad: bool) -> None:
    """TIMIT (upper- or lower-case disc layout): writes train, dev (50 speakers) and core test
    (24 speakers) with .tsv, .phn, .wrd, and dict.phn.txt. SA sentences are excluded."""
    from w2vtk.corpora.timit import prepare_timit

    _print_summary(prepare_timit(corpus_dir, out_dir, int(phones), keep_sil, jobs=jobs, skip_bad=skip_bad))


@prepare.command("audio")
@click.argument("audio_dir", type=_dir_in)
@click.argument("out_dir", type=_dir_out)
@click.option("--ext", default="flac,wav", show_default=True, metavar="EXT,...",
              help="Comma-separated audio file extensions to collect (case-insensitive).")
@click.option("--valid-percent", type=click.FloatRange(0, 1, max_open=True), default=0.01, show_default=True,
              help="Fraction of the files held out in valid.tsv (drawn with the global --seed).")
@_prepare_options
@click.pass_context
def prepare_audio_cmd(ctx: click.Context, audio_dir: Path, out_dir: Path, ext: str, valid_percent: float,
                      jobs: int, skip_bad: bool) -> None:
    """Unlabelled audio under AUDIO_DIR (any depth) -> train.tsv and valid.tsv for pretraining."""
    from w2vtk.corpora.folder import prepare_audio_folder

    extensions = [e.strip().lstrip(".") for e in ext.split(",") if e.strip()]
    seed = (ctx.obj or {}).get("seed", 1)
    _print_summary(prepare_audio_folder(audio_dir, out_dir, extensions, valid_percent, seed, jobs=jobs,
                                        skip_bad=skip_bad))


class _Range(click.ParamType):
    """LOW:HIGH (or one number for both) -> (low, high)."""

    name = "low:high"

    def __init__(self, kind: type = float):
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = [self.kind(p) for p in str(value).split(":")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or parts[0] > parts[-1]:
            self.fail(f"{value!r}: give LOW:HIGH with LOW <= HIGH, e.g. 2:10", param, ctx)
        return parts[0], parts[-1]


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.group()
def synth() -> None:
    """Synthesize small corpora with espeak-ng, in the exact layout of the real ones.

    Speakers are espeak-ng accents and voice variants with their own pitch and speed. Output is
    identical for the same options and --seed.
    """


@synth.command("librispeech")
@click.argument("out_dir", type=_dir_out)
@click.option("--train-minutes", type=click.FloatRange(min=0), default=30, show_default=True,
              help="Minutes of audio in train-clean-100.")
@click.option("--librilight-minutes", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Also write librispeech_finetuning/1h/0/clean, Libri-light's 10-minute split (train-10m) in "
                   "its layout, with this many minutes of train-clean-100's utterances; for `prepare "
                   "librilight` and the recipe's --labelled 10m. 0: not written.")
@click.option("--dev-minutes", type=click.FloatRange(min=0), default=5, show_default=True,
              help="Minutes in dev-clean (and dev-other); 0 leaves the subset out.")
@click.option("--test-minutes", type=click.FloatRange(min=0), default=5, show_default=True,
              help="Minutes in test-clean (and test-other); 0 leaves the subset out.")
@click.option("--speakers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Speakers in train-clean-100.")
@click.option("--eval-speakers", type=click.IntRange(min=1), default=3, show_default=True,
              help="Speakers in each dev/test subset, none of them in train-clean-100.")
@click.option("--other", is_flag=True,
              help="Also write dev-other and test-other: other speakers, added noise, wider pitch/speed jitter.")
@click.option("--text", "sources", default="harvard", show_default=True,
              help="Comma-separated sentence sources: harvard (the Harvard sentences, shipped), kjv (the King "
                   "James Bible, Debian's bible-kjv), devil (The Devil's Dictionary, Debian's dict-devil), or a "
                   "text file's path (one sentence per line, or prose). Pooled, then split.")
@click.option("--eval-sentences", type=click.IntRange(min=1), default=100, show_default=True,
              help="Sentences set aside for dev and as many for test; training and the LM text never use them.")
@click.option("--words", type=_Range(int), default="4:20", show_default=True,
              help="Words per sentence read (sentences outside the range are not used).")
@click.option("--accents", default=None,
              help="Comma-separated espeak-ng English voices (default: en-us, en, en-gb-x-rp, en-gb-scotland, "
                   "en-029, en-gb-x-gbclan, en-gb-x-gbcwmd, en-us-nyc).")
@click.option("--variants", default=None,
              help="Comma-separated espeak-ng voice variants (default: m1-m7, f1-f4). Others for unseen voices: "
                   "klatt, Andy, Gene, john, Annie, anika, belinda, linda, ... (espeak-ng --voices=variant).")
@click.option("--pitch", type=_Range(int), default="35:65", show_default=True,
              help="Range of each speaker's espeak-ng pitch (0-99).")
@click.option("--speed", type=_Range(int), default="145:180", show_default=True,
              help="Range of each speaker's speaking rate, words per minute.")
@click.option("--gain-db", type=_Range(), default="0:0", show_default=True,
              help="Range of each utterance's gain in dB.")
@click.option("--snr-db", type=_Range(), default=None,
              help="A white-noise floor in every subset, at an SNR (dB) drawn per utterance from this range. "
                   "Default: none (the -other subsets get 15:25 regardless).")
@click.option("--bits", type=click.IntRange(4, 16), default=16, show_default=True,
              help="Sample depth the audio is quantised to (written as 16-bit FLAC).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=DEFAULT_JOBS, show_default=True,
              help="espeak-ng/sox processes running at once.")
@click.pass_context
def synth_librispeech_cmd(ctx: click.Context, out_dir: Path, train_minutes: float, librilight_minutes: float,
                          dev_minutes: float, test_minutes: float, speakers: int, eval_speakers: int, other: bool,
                          sources: str, eval_sentences: int, words: tuple[int, int], accents: str | None,
                          variants: str | None, pitch: tuple[int, int], speed: tuple[int, int],
                          gain_db: tuple[float, float], snr_db: tuple[float, float] | None, bits: int,
                          jobs: int) -> None:
    """Write OUT_DIR/LibriSpeech/<subset>/<speaker>/<chapter>/*.flac + *.trans.txt, and
    OUT_DIR/lm-text.txt (the normalised training sentences, for an n-gram LM; dev and test
    sentences are left out, as LibriSpeech's LM text leaves out its dev and test books).

    Then: w2vtk prepare librispeech OUT_DIR DATA_DIR
    """
    from w2vtk.synth import synth_librispeech
    from w2vtk.synth.common import RecordingStyle, VoiceStyle

    seed = (ctx.obj or {}).get("seed", 1)
    voices = VoiceStyle(pitch=pitch, speed=speed,
                        **({"accents": _names(accents)} if accents else {}),
                        **({"variants": _names(variants)} if variants else {}))
    recording = RecordingStyle(gain_db=gain_db, snr_db=snr_db, bits=bits)
    click.echo(synth_librispeech(out_dir, train_minutes, dev_minutes, test_minutes, speakers, eval_speakers,
                                 other, seed=seed, jobs=jobs, librilight_minutes=librilight_minutes,
                                 sources=_names(sources), eval_sentences=eval_sentences, words=words,
                                 voices=voices, recording=recording).table())


@synth.command("timit")
@click.argument("out_dir", type=_dir_out)
@click.option("--train-speakers", type=click.IntRange(min=1), default=38, show_default=True,
              help="Speakers in TRAIN (named after TIMIT's TRAIN/DR1 speakers, at most 38).")
@click.option("--dev-speakers", type=click.IntRange(min=1, max=50), default=50, show_default=True,
              help="Speakers from TIMIT's 50-speaker dev list, in TEST.")
@click.option("--test-speakers", type=click.IntRange(min=1, max=24), default=24, show_default=True,
              help="Speakers from TIMIT's 24-speaker core test list, in TEST.")
@click.option("--si", type=click.IntRange(min=0), default=3, show_default=True,
              help="SI sentences per speaker (each read by one speaker).")
@click.option("--sx", type=click.IntRange(min=0), default=5, show_default=True,
              help="SX sentences per speaker (shared among speakers). SA1 and SA2 are always added.")
@click.option("--lowercase", is_flag=True, help="Lower-case file and folder names, as in some TIMIT copies.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=DEFAULT_JOBS, show_default=True,
              help="espeak-ng/sox processes running at once.")
@click.pass_context
def synth_timit_cmd(ctx: click.Context, out_dir: Path, train_speakers: int, dev_speakers: int,
                    test_speakers: int, si: int, sx: int, lowercase: bool, jobs: int) -> None:
    """Write OUT_DIR/TIMIT/{TRAIN,TEST}/DR<n>/<SPEAKER>/*.{WAV,PHN,WRD,TXT} (NIST SPHERE audio,
    61-phone .PHN with approximate boundaries).

    Then: w2vtk prepare timit OUT_DIR DATA_DIR
    """
    from w2vtk.synth import synth_timit

    seed = (ctx.obj or {}).get("seed", 1)
    click.echo(synth_timit(out_dir, train_speakers, dev_speakers, test_speakers, si, sx, lowercase, seed=seed,
                           jobs=jobs).table())
