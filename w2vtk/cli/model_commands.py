"""`w2vtk import`, `w2vtk export`, `w2vtk extract`: published weights in and out, features out."""
from __future__ import annotations

import click


@click.command("import")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dict", "dict_path", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="fairseq fine-tuned checkpoints only: the dictionary the model was fine-tuned with "
                   "(dict.ltr.txt); its symbols follow fairseq's <s> <pad> </s> <unk>, with <s> the CTC blank.")
def import_(src: str, out: str, dict_path: str | None) -> None:
    """Convert published weights SRC into the w2vtk checkpoint OUT.pt.

    \b
    SRC is either
      - a transformers folder (config.json, model.safetensors or pytorch_model.bin, and vocab.json for
        CTC models; the blank, transformers' pad token, becomes output 0), or
      - a fairseq wav2vec 2.0 checkpoint (.pt), pretrained or CTC fine-tuned (then pass --dict).

    fairseq checkpoints are pickles. They are read with torch's weights-only unpickler in which only
    tensors, plain data and fairseq's config objects (argparse Namespace, omegaconf) are accepted, the
    latter as inert records: no code from the file is ever run, and a file that needs anything else
    is refused. Neither fairseq nor omegaconf needs to be installed.
    """
    from w2vtk.convert import import_checkpoint

    payload = import_checkpoint(src, out, dict_path)
    cfg = payload["model_config"]
    vocab = payload["vocab"]
    click.echo(f"wrote {out}: {cfg['encoder_layers']} layers x {cfg['encoder_embed_dim']}"
               + (f", CTC head of {len(vocab)} symbols ({payload['labels']})" if vocab else ", no CTC head"))


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--format", "fmt", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="hf: a transformers folder (config.json, model.safetensors; vocab.json, tokenizer and "
                   "preprocessor configs for CTC models) that Wav2Vec2ForCTC / Wav2Vec2ForPreTraining / "
                   "Wav2Vec2Model.from_pretrained loads.")
def export(checkpoint: str, out_dir: str, fmt: str) -> None:
    """Write the model in CHECKPOINT in another toolkit's format into OUT_DIR."""
    from w2vtk.convert import export_weights

    export_weights(checkpoint, out_dir, fmt)
    click.echo(f"wrote {out_dir}")


@click.command("extract")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="A w2vtk checkpoint (pretrained, fine-tuned or imported).")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Which hidden state, as transformers numbers them: 0 = the Transformer input (after the "
                   "positional convolution), L = the output of layer L. Default: the last layer.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for OUT/<stem>.npy, float32 arrays of shape (frames, dim), 50 frames per second.")
@click.option("--device", default=None, help="torch device, e.g. cpu, cuda or cuda:1 (default: cuda if available, "
                                             "else cpu).")
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=str))
def extract(checkpoint: str, layer: int | None, out_dir: str, device: str, audio: tuple[str, ...]) -> None:
    """Save the representations of AUDIO files (FLAC, WAV, SPHERE; any rate, resampled to 16 kHz)."""
    from w2vtk.extract import extract as run

    written = run(checkpoint, layer, out_dir, audio, device)
    click.echo(f"wrote {len(written)} files to {out_dir}")
