"""`w2vtk prepare ...` and `w2vtk synth ...`: corpora on disk -> manifests, and synthesized corpora."""
import click


@click.group()
def prepare() -> None:
    """Turn a corpus on disk into fairseq-style manifests (tsv) and label files."""


@click.group()
def synth() -> None:
    """Synthesize small corpora with espeak-ng, in the exact layout of the real ones."""
