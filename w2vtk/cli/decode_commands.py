"""`w2vtk lm ...`, `w2vtk decode`, `w2vtk tune-lm`, `w2vtk transcribe` and `w2vtk align`."""
from __future__ import annotations

import functools

import click

_BINARY_TYPES = click.Choice(["probing", "trie"])


def _parse_prune(ctx, param, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give integer count thresholds, e.g. '0 0 1'") from None


@click.group()
def lm() -> None:
    """Build n-gram language models with KenLM and the letter lexicons the decoders use."""


@lm.command("train", context_settings={"show_default": True})
@click.argument("text", type=click.Path(dir_okay=False))
@click.argument("out_arpa", type=click.Path(dir_okay=False))
@click.option("--order", type=int, default=4, help="n-gram order (KenLM supports 2 to 6).")
@click.option("--prune", default=None, metavar="'T1 T2 ...'", callback=_parse_prune,
              help="lmplz's count thresholds per order, unigrams first: '0 0 1' drops trigrams and longer "
                   "n-grams seen once. Default: no pruning.")
@click.option("--discount-fallback/--no-discount-fallback", default=None, show_default=False,
              help="Pass lmplz --discount_fallback: needed when the text is too small to estimate Kneser-Ney "
                   "discounts. Default: retry with it only if lmplz fails for that reason.")
@click.option("--memory", default=None,
              help="lmplz sorting memory (-S), e.g. 25% or 4G. Default: 8x the text size, at least 256M and at "
                   "most a quarter of the RAM.")
@click.option("--normalize/--no-normalize", default=True,
              help="Upper-case the text and drop punctuation, as in our transcripts; a line with digits or "
                   "symbols is an error. --no-normalize uses the words as they are.")
@click.option("--letters", is_flag=True,
              help="A letter LM: each sentence spelled `T H E | C A T |`, for --decoder flashlight-lexicon-free "
                   "(use --order 6, the most KenLM allows).")
@click.option("--binary", "binary", type=click.Path(dir_okay=False), default=None,
              help="Also write KenLM's binary format here (loads in seconds, shared between processes).")
@click.option("--binary-type", type=_BINARY_TYPES, default="probing",
              help="Binary data structure: probing (fastest) or trie (smallest).")
def lm_train(text, out_arpa, order, prune, discount_fallback, memory, normalize, letters, binary, binary_type):
    """Build a modified Kneser-Ney ARPA model from TEXT (one sentence per line, .gz allowed).

    OUT_ARPA ending in .gz is written gzipped.
    """
    from w2vtk.lm import build_binary, check_lm_file, train_lm

    arpa = train_lm(text, out_arpa, order=order, prune=prune, discount_fallback=discount_fallback,
                    memory=memory, normalize=normalize, letters=letters)
    if binary:
        build_binary(arpa, binary, binary_type)
    counts = check_lm_file(arpa).ngram_counts
    click.echo(f"{arpa}: {order}-gram, " + ", ".join(f"{n + 1}-grams {c}" for n, c in enumerate(counts))
               + (f"; binary {binary}" if binary else ""))


@lm.command("binary", context_settings={"show_default": True})
@click.argument("arpa", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--type", "binary_type", type=_BINARY_TYPES, default="probing",
              help="Binary data structure: probing (fastest) or trie (smallest).")
def lm_binary(arpa, out, binary_type):
    """Convert an ARPA model (e.g. LibriSpeech's 4-gram.arpa.gz) to KenLM's binary format."""
    from w2vtk.lm import build_binary

    click.echo(str(build_binary(arpa, out, binary_type)))


@lm.command("lexicon")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def lm_lexicon(source, out):
    """Write a letter lexicon (`WORD<TAB>W O R D |` per line, fairseq's format) for the words of SOURCE.

    SOURCE is a word list (e.g. librispeech-vocab.txt), a text corpus, or an ARPA model (its unigrams).
    """
    from w2vtk.lm import write_lexicon

    n = write_lexicon(source, out)
    click.echo(f"{out}: {n} words")


# ------------------------------------------------------------------------------------- decoding

_SEARCH_PARAMS = ("lm", "lexicon", "decoder", "lm_weight", "word_score", "beam", "beam_threshold", "beam_size_token",
                  "token_min_logp")


def _decoder_options(f):
    """Adds the decoder and acoustic-batching options; the command receives `options` (DecoderOptions)
    instead of the search parameters."""
    options = [
        click.option("--lm", type=click.Path(dir_okay=False), default=None,
                     help="KenLM model: ARPA (.arpa, .arpa.gz, e.g. LibriSpeech's 4-gram) or binary. "
                          "Without it, decoding is greedy."),
        click.option("--lexicon", type=click.Path(dir_okay=False), default=None,
                     help="Lexicon (`WORD<TAB>W O R D |`, from `w2vtk lm lexicon`). flashlight: the words it may "
                          "produce (default: the ARPA's unigrams); pyctcdecode: its word list."),
        click.option("--decoder", type=click.Choice(["greedy", "flashlight", "flashlight-lexicon-free", "pyctcdecode"]),
                     default=None,
                     help="greedy: best path, no LM. flashlight: lexicon beam search in C++ (the paper's). "
                          "flashlight-lexicon-free: beam search over letters in C++, with a letter LM "
                          "(`w2vtk lm train --letters`); --word-score is added per word. "
                          "pyctcdecode: lexicon-free beam search in Python with a word LM (also for phones and "
                          "subwords). Default: flashlight with --lm, else greedy."),
        click.option("--lm-weight", type=float, default=2.0, show_default=True,
                     help="Weight of the LM's log10 probability (the paper: 2 for model selection)."),
        click.option("--word-score", type=float, default=-1.0, show_default=True,
                     help="Score added per word (the paper: -1); higher favours more words."),
        click.option("--beam", type=int, default=50, show_default=True,
                     help="Hypotheses kept per frame (the paper: 50 for selection, 500 tuning, 1500 test)."),
        click.option("--beam-threshold", type=float, default=None,
                     help="Drop hypotheses scoring this much below the best (default: 25 flashlight, "
                          "10 pyctcdecode)."),
        click.option("--beam-size-token", type=int, default=None,
                     help="flashlight: tokens expanded per frame (default: all)."),
        click.option("--token-min-logp", type=float, default=-5.0, show_default=True,
                     help="Per frame, skip tokens with a log-probability below this unless they are the frame's "
                          "best (pyctcdecode's pruning; both beam decoders). Use -inf to expand every token."),
        click.option("--jobs", type=int, default=1, show_default=True,
                     help="Decoding processes; each loads the LM (a binary LM is shared through memory mapping)."),
        click.option("--batch-size", type=int, default=16, show_default=True,
                     help="Utterances per acoustic-model batch (batches are sorted by length)."),
        click.option("--max-tokens", type=int, default=1_600_000, show_default=True,
                     help="Padded audio samples per acoustic-model batch (1.6M = 100 s at 16 kHz)."),
        click.option("--device", default=None, help="torch device for the acoustic model, e.g. cpu, cuda or "
                                                    "cuda:1 (default: cuda if available, else cpu)."),
    ]

    @functools.wraps(f)
    def command(**kw):
        kw["options"] = _make_options(**{k: kw.pop(k) for k in _SEARCH_PARAMS})
        return f(**kw)

    for option in reversed(options):
        command = option(command)
    return command


def _make_options(decoder, lm, lexicon, lm_weight, word_score, beam, beam_threshold, beam_size_token, token_min_logp):
    from w2vtk.decoding import DecoderOptions

    if decoder is None:
        decoder = "flashlight" if (lm or lexicon) else "greedy"
    if decoder == "greedy" and (lm or lexicon):
        raise click.UsageError("--decoder greedy uses no --lm or --lexicon; choose flashlight or pyctcdecode")
    if beam < 1 or (beam_size_token is not None and beam_size_token < 1):
        raise click.BadParameter("must be at least 1", param_hint="--beam / --beam-size-token")
    return DecoderOptions(decoder=decoder, lm=lm, lexicon=lexicon, lm_weight=lm_weight, word_score=word_score,
                          beam=beam, beam_threshold=beam_threshold, beam_size_token=beam_size_token,
                          token_min_logp=None if token_min_logp == float("-inf") else token_min_logp)


_phone_options = [
    click.option("--fold-phones/--no-fold-phones", default=True, show_default=True,
                 help="Phone models: score PER on the 39 TIMIT scoring phones (Lee & Hon) after folding "
                      "hypotheses and references."),
    click.option("--keep-sil/--drop-sil", default=True, show_default=True,
                 help="Phone models: count `sil` as a phone (Kaldi's practice) or drop it (as some papers do)."),
]


def _with_phone_options(f):
    for option in reversed(_phone_options):
        f = option(f)
    return f


@click.command(context_settings={"show_default": True})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Fine-tuned checkpoint (`w2vtk finetune`'s checkpoints/best.pt, or an imported one).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Manifest folder written by `w2vtk prepare`.")
@click.option("--subset", required=True, help="Subset to decode: DATA/<subset>.tsv with .wrd (or .phn).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: hyp.trn, ref.trn (sclite's trn format), hyp.ctm, ref.stm (sclite's ctm and "
                   "stm formats), errors.txt, wer.json; with --nbest, nbest.jsonl.")
@_decoder_options
@_with_phone_options
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Reuse (or store) the acoustic log-probabilities here, keyed by checkpoint and subset "
                   "(`w2vtk tune-lm` fills the same kind of cache).")
@click.option("--nbest", type=int, default=None,
              help="Also write nbest.jsonl: per utterance, up to N hypotheses with distinct words, best first, "
                   "each with its acoustic score (am, natural log), LM score (lm, log10), word count and the "
                   "decoder's total score; wer.json gets the N-best oracle error rate. Beam decoders keep up "
                   "to --beam hypotheses; greedy decoding has one.")
def decode(checkpoint, data_dir, subset, out_dir, options, jobs, batch_size, max_tokens, device, fold_phones, keep_sil,
           cache_dir, nbest):
    """Decode a subset with a fine-tuned model and score it (WER; PER for phone models).

    Every hypothesis word gets a start time and duration from the CTC frames (20 ms each, placed
    at the centre of the CNN's receptive field) and a confidence in [0, 1]: the lowest, over the
    word's letters (or phones, or pieces), of the highest posterior probability the model gives that
    letter on one of the word's frames. hyp.ctm carries them; wer.json reports how well confidence
    separates right from wrong words (confidence_auc: 0.5 is chance) and its calibration error
    (confidence_ece). `sctk sclite -h hyp.ctm ctm -r ref.stm stm` gives the same counts as wer.json.

    \b
    Example, the paper's setup:
      w2vtk decode --checkpoint exp/ft/checkpoints/best.pt --data data --subset dev-other \\
        --out exp/decode/dev-other --lm 4-gram.bin --lexicon lexicon.txt --beam 50 --jobs 8
    """
    from w2vtk.decode import decode_subset

    _check_nbest(nbest)
    _, line = decode_subset(checkpoint, data_dir, subset, out_dir, options, jobs=jobs, max_tokens=max_tokens,
                            batch_size=batch_size, fold_phones=fold_phones, keep_sil=keep_sil, cache_dir=cache_dir,
                            device=device, nbest=nbest)
    click.echo(line)


def _check_nbest(nbest: int | None) -> None:
    if nbest is not None and nbest < 1:
        from w2vtk.errors import W2vtkError

        raise W2vtkError(f"--nbest {nbest}: give the number of hypotheses to keep per utterance, at least 1")


@click.command("tune-lm", context_settings={"show_default": True})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Fine-tuned checkpoint.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Manifest folder written by `w2vtk prepare`.")
@click.option("--subset", required=True, help="Dev subset to tune on (the paper: dev-other).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="JSON file for the best lm_weight and word_score; the table of trials goes beside it "
                   "(<name>.trials.tsv).")
@_decoder_options
@_with_phone_options
@click.option("--trials", type=int, default=32, help="Number of (lm_weight, word_score) points (the paper: 128).")
@click.option("--search", type=click.Choice(["random", "grid"]), default="random",
              help="random: uniform points in the ranges; grid: an even grid of at most --trials points.")
@click.option("--lm-weight-range", type=(float, float), default=(0.0, 5.0), help="LOW HIGH.")
@click.option("--word-score-range", type=(float, float), default=(-5.0, 5.0), help="LOW HIGH.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the acoustic log-probabilities are cached (default: logprobs-cache/ beside --out).")
@click.pass_context
def tune_lm(ctx, checkpoint, data_dir, subset, out, options, jobs, batch_size, max_tokens, device, fold_phones,
            keep_sil, trials, search, lm_weight_range, word_score_range, cache_dir):
    """Search the LM weight and word score that minimise the error rate on a dev subset.

    The acoustic model runs once (its output is cached); each trial re-runs only the beam search.
    --lm-weight and --word-score are ignored here (they are what is searched).
    """
    from w2vtk.tune import tune_lm as run

    if options.lm is None:
        raise click.UsageError("--lm is required: tuning searches the LM's weight")
    result = run(checkpoint, data_dir, subset, out, options, trials=trials, lm_weight_range=lm_weight_range,
                 word_score_range=word_score_range, search=search, seed=ctx.obj["seed"] if ctx.obj else 1,
                 jobs=jobs, cache_dir=cache_dir, max_tokens=max_tokens, batch_size=batch_size,
                 fold_phones=fold_phones, keep_sil=keep_sil, device=device)
    metric = "per" if "per" in result else "wer"
    click.echo(f"{subset}: best lm_weight {result['lm_weight']:g}, word_score {result['word_score']:g}: "
               f"{metric.upper()} {result[metric]:.2f}% over {result['trials']} trials -> {out}")


@click.command(context_settings={"show_default": True})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Fine-tuned checkpoint.")
@_decoder_options
@click.option("--format", "fmt", default="text",
              help="text: `path<TAB>transcript` per file; json: one JSON line per file with the text and every "
                   "word's start, duration (seconds) and confidence; ctm: NIST CTM lines (`file A start duration "
                   "word confidence`, the file named by its path); textgrid: a Praat TextGrid per file into --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the TextGrids (--format textgrid): OUT/<file stem>.TextGrid.")
@click.option("--nbest", type=int, default=1,
              help="With --format json: add `nbest`, up to N hypotheses per file with their acoustic score (am, "
                   "natural log), LM score (lm, log10), word count and the decoder's total score, best first.")
@click.option("--chunk-seconds", type=float, default=20.0,
              help="Files longer than a window (chunk + 2 x context) are read piece by piece and run through the "
                   "model window by window: each window keeps its middle CHUNK seconds. Memory stays the same "
                   "for recordings of any length.")
@click.option("--context-seconds", type=float, default=5.0,
              help="Audio on each side of a window's kept chunk that the model sees but whose frames come from "
                   "the neighbouring windows.")
@click.argument("audio", nargs=-1, required=True, type=click.Path(dir_okay=False))
def transcribe(checkpoint, options, jobs, batch_size, max_tokens, device, fmt, out_dir, nbest, chunk_seconds,
               context_seconds, audio):
    """Transcribe AUDIO files (FLAC, WAV, SPHERE...; any rate, resampled to 16 kHz; any length).

    Word times come from the CTC frames (20 ms each, placed at the centre of the CNN's receptive
    field). A word's confidence, in [0, 1], is the lowest over its letters (or phones, or pieces) of
    the highest posterior probability the model gives that letter on one of the word's frames.
    """
    from pathlib import Path

    from w2vtk.decode import transcribe as run
    from w2vtk.errors import W2vtkError
    from w2vtk.transcripts import FORMATS, ctm_lines, textgrid, words_json

    if fmt not in FORMATS:
        raise W2vtkError(f"--format {fmt!r} is not a transcript format; use one of {', '.join(FORMATS)}")
    _check_nbest(nbest)
    if nbest > 1 and fmt != "json":
        raise W2vtkError(f"--nbest {nbest}: N-best lists are written as JSON; add --format json")
    if fmt == "textgrid" and not out_dir:
        raise W2vtkError("--format textgrid writes one file per audio file: give the folder with --out")
    if fmt == "textgrid":
        stems = [Path(a).stem for a in audio]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise W2vtkError(f"{twice[0]}: several audio files share this name and would overwrite one TextGrid; "
                             "transcribe them into different --out folders")
    transcripts = run(checkpoint, audio, options, jobs=jobs, max_tokens=max_tokens, batch_size=batch_size,
                      device=device, nbest=nbest, chunk_seconds=chunk_seconds, context_seconds=context_seconds)
    for t in transcripts:
        if fmt == "text":
            click.echo(f"{t.path}\t{' '.join(w.word for w in t.words)}")
        elif fmt == "json":
            click.echo(words_json(t.path, t.words, [h.record() for h in t.hyps] if nbest > 1 else None))
        elif fmt == "ctm":
            for line in ctm_lines(t.path, t.words):
                click.echo(line)
        else:
            from w2vtk.fileio import atomic_write_text

            target = Path(out_dir) / f"{Path(t.path).stem}.TextGrid"
            atomic_write_text(target, textgrid(t.duration, {"words": t.words}))
            click.echo(str(target))


@click.command(context_settings={"show_default": True})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Fine-tuned checkpoint.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Manifest folder written by `w2vtk prepare`.")
@click.option("--subset", required=True,
              help="Subset to align: DATA/<subset>.tsv with its .ltr (letter models) or .phn (phone models).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: words.ctm, tokens.ctm, textgrid/<utterance>.TextGrid, align.json.")
@click.option("--device", default=None, help="torch device for the acoustic model, e.g. cpu, cuda or cuda:1 "
                                             "(default: cuda if available, else cpu).")
def align(checkpoint, data_dir, subset, out_dir, device):
    """Align the known transcripts of a subset to its audio (CTC forced alignment).

    The model's frames (20 ms, placed at the centre of the CNN's receptive field) are aligned to the
    transcript's letters (with `|` between words) or phones by the most likely CTC path that spells
    exactly them (torchaudio.functional.forced_align). Words and tokens get start times, durations
    and confidences (the lowest, over a word's tokens, of the highest posterior of that token on the
    word's frames). For TIMIT, align.json reports the phone-boundary error against the .PHN files.
    """
    from w2vtk.alignment import align_subset

    summary = align_subset(checkpoint, data_dir, subset, out_dir, device)
    extra = ""
    if "phone_boundary" in summary:
        pb = summary["phone_boundary"]
        extra = f"; phone boundaries: mean error {pb['mean_abs_error_ms']} ms, {100 * pb['within_20ms']:.1f}% within 20 ms"
    click.echo(f"{subset}: aligned {summary['utterances']} utterances, {summary['words']} words{extra} -> {out_dir}")
