"""`w2vtk plot` (training curves), `w2vtk check` (is a run healthy?) and `w2vtk results` (RESULTS.md and
results.json of a recipe)."""
from __future__ import annotations

import click


@click.command()
@click.argument("exp_dirs", nargs=-1, metavar="EXP_DIR...", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write. Default: EXP_DIR/training_curves.png; required with several EXP_DIRs.")
@click.option("--name", "names", multiple=True,
              help="Legend name of each EXP_DIR, in order (repeat the option). Default: the folder names.")
@click.option("--title", default=None, help="Figure title.")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instead of training curves: draw this recording's waveform with the words of --ctm.")
@click.option("--ctm", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --audio: the timed words (`w2vtk align`'s words.ctm, `decode`'s hyp.ctm, or "
                   "`transcribe --format ctm`).")
@click.option("--utterance", default=None,
              help="With --audio: the CTM's file id of the recording (default: the one named like the audio).")
def plot(exp_dirs, out, names, title, audio, ctm, utterance):
    """Draw the training curves in EXP_DIR/log.jsonl (from `w2vtk pretrain` or `w2vtk finetune`) to a PNG.

    One panel per logged quantity that is present: loss (and its contrastive, diversity and penalty
    terms), accuracy, codebook perplexities, Gumbel temperature, learning rate, gradient norm, and the
    validation WER/PER. Training values are solid lines, validation values dashed with markers.
    Several EXP_DIRs share one figure, one colour each (e.g. fine-tuning from scratch and from a
    pretrained model). Green bands shade the healthy ranges (see `w2vtk check` and docs/health.md).

    \b
    With --audio and --ctm instead: one recording's waveform with its words as shaded spans, e.g.
      w2vtk plot --audio 1272-128104-0000.flac --ctm exp/align/words.ctm -o alignment.png
    """
    if audio or ctm:
        from w2vtk.plot import plot_alignment

        if not (audio and ctm and out):
            raise click.UsageError("an alignment picture needs --audio, --ctm and --out")
        click.echo(str(plot_alignment(audio, ctm, out, utterance, title)))
        return
    if not exp_dirs:
        raise click.UsageError("give EXP_DIR (training curves), or --audio and --ctm (an alignment)")
    from w2vtk.plot import plot_experiments

    path = plot_experiments(exp_dirs, out, names or None, title)
    click.echo(str(path))


@click.command()
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.pass_context
def check(ctx, exp_dir):
    """Judge whether the run in EXP_DIR (pretraining or fine-tuning) is healthy.

    \b
    Reads EXP_DIR/log.jsonl and EXP_DIR/config.yaml and prints, for each quantity with a healthy range
    (codebook perplexities, accuracy against chance, gradient norm, all-blank output, CTC targets
    longer than their frames), its last value against the range; then the warnings the run logged and a
    verdict. Exit status 0: healthy; 1: a symptom holds at the end of the log (it names the likely cause
    and the setting to change). docs/health.md explains the ranges.
    """
    from w2vtk.training.health_check import check_experiment

    text, healthy = check_experiment(exp_dir)
    click.echo(text, nl=False)
    ctx.exit(0 if healthy else 1)


@click.command()
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--title", default=None, help="Heading of RESULTS.md. Default: 'Results: <EXP_DIR name>'.")
@click.option("--notes", "notes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Markdown file whose text goes under the heading (how the data and models were made).")
def results(exp_dir, title, notes_file):
    """Gather the error rates under EXP_DIR/decode/ into EXP_DIR/RESULTS.md and EXP_DIR/results.json.

    \b
    Reads EXP_DIR/decode/<model>/<subset>/<decoding>/wer.json (written by `w2vtk decode --out`) and
    the LM weights in EXP_DIR/decode/<model>/*.json; the table has a row per subset and a column per
    model and decoding. RESULTS.md links every PNG under EXP_DIR (see `w2vtk plot`). Prints the table.
    """
    from pathlib import Path

    from w2vtk.results import write_results

    notes = Path(notes_file).read_text(encoding="utf-8") if notes_file else None
    md_path, json_path = write_results(exp_dir, title, notes)
    click.echo(md_path.read_text(encoding="utf-8"), nl=False)
    click.echo(f"written: {md_path}, {json_path}", err=True)
