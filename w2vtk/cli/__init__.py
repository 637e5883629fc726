"""The `w2vtk` command: a click group that sets up logging and the seed, and the subcommands.

Each subcommand lives in a module of this package, parses its options and calls one library
function that knows nothing of click, so everything is usable from Python too.
"""
from __future__ import annotations

import errno
import logging
import sys

import click

from w2vtk import __version__
from w2vtk.errors import W2vtkError


class _Group(click.Group):
    """Turns W2vtkError, and the OSErrors a user can fix (a full disk, an unwritable path), into a one-line
    message and exit status 2, like click's own usage errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except W2vtkError as e:
            _close_progress_bars()
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                fix = ("free disk space and run the same command again (outputs are written atomically: finished "
                       "files are intact, training resumes from its last checkpoint)")
            elif e.filename and e.errno in _PATH_ERRORS:
                fix = "check the path and its permissions"
            else:
                raise
            _close_progress_bars()
            click.echo(f"error: {where}{e.strerror}; {fix}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


# OSErrors about a named file that the user can fix (an output folder that is read-only, a path through a file).
_PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR)

# commands whose work is a model's forward pass without gradients (w2vtk.cpu.host_memory: huge pages
# speed those up, where training only grows its peak memory)
_INFERENCE_COMMANDS = ("decode", "tune-lm", "transcribe", "extract", "align")


def _close_progress_bars() -> None:
    """End the progress bars a failure left open, so that the error starts a line of its own (and no bar
    redraws itself after it when the failed loop is cleaned up)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="w2vtk")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed for Python, NumPy and torch, for reproducible runs.")
@click.pass_context
def main(ctx: click.Context, verbose: int, seed: int) -> None:
    """w2vtk: wav2vec 2.0 (Baevski et al., 2020) from corpus preparation to decoding.

    \b
    Typical flow:
      w2vtk synth librispeech corpus/        # a small espeak-ng corpus, for a first run
      w2vtk prepare librispeech corpus/ data/
      w2vtk pretrain --config conf/pretrain_tiny.yaml --data data/ ...
      w2vtk finetune --config conf/finetune_tiny.yaml --labels ltr --init exp/pt/checkpoints/best.pt ...
      w2vtk decode --checkpoint exp/ft/checkpoints/best.pt --data data/ --subset test --lm 4gram.arpa ...
    """
    logging.basicConfig(level=logging.INFO if verbose == 0 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    if verbose == 0:
        for noisy in ("urllib3", "matplotlib", "PIL", "numba", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = {"seed": seed, "verbose": verbose}
    from w2vtk.cpu import set_host_memory_policy
    from w2vtk.seeding import seed_everything

    set_host_memory_policy(inference=ctx.invoked_subcommand in _INFERENCE_COMMANDS)

    seed_everything(seed)


def _register() -> None:
    """Subcommands, one module each."""
    from w2vtk.cli import data_commands

    main.add_command(data_commands.prepare)
    main.add_command(data_commands.synth)

    from w2vtk.cli import train_commands

    main.add_command(train_commands.pretrain)
    main.add_command(train_commands.finetune)

    from w2vtk.cli import model_commands

    for command in (model_commands.import_, model_commands.export, model_commands.extract):
        main.add_command(command)

    from w2vtk.cli import report_commands

    main.add_command(report_commands.plot)
    main.add_command(report_commands.check)
    main.add_command(report_commands.results)

    from w2vtk.cli import decode_commands

    for command in (decode_commands.lm, decode_commands.decode, decode_commands.tune_lm, decode_commands.transcribe,
                    decode_commands.align):
        main.add_command(command)


_register()
