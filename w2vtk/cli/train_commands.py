"""`w2vtk pretrain` and `w2vtk finetune`."""
from __future__ import annotations

import click

_COMMON = [
    click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                 help="YAML config (see recipes/librispeech/conf/). Defaults are the paper's BASE values."),
    click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
                 help="Folder of manifests written by `w2vtk prepare` (<subset>.tsv and labels)."),
    click.option("--train-subset", required=True, help="Training subset name, e.g. train-clean-100."),
    click.option("--valid-subset", default=None, help="Validation subset name, e.g. dev-clean."),
    click.option("--exp-dir", required=True, type=click.Path(file_okay=False),
                 help="Experiment folder: config.yaml, log.jsonl, checkpoints/. Re-running resumes from "
                      "checkpoints/last.pt; a second concurrent run into it is refused."),
    click.option("--max-updates", type=int, default=None, help="Stop after this many updates (optim.max_updates)."),
    click.option("--save-interval", type=int, default=None, help="Updates between checkpoints."),
    click.option("--valid-interval", type=int, default=None, help="Updates between validations."),
    click.option("--log-interval", type=int, default=None, help="Updates between log lines."),
    click.option("--keep-last", type=int, default=None, help="Numbered checkpoints to keep besides last/best."),
    click.argument("overrides", nargs=-1),
]


def _common(f):
    for option in reversed(_COMMON):
        f = option(f)
    return f


@click.command(context_settings={"show_default": True})
@_common
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Continue pretraining from this pretraining checkpoint (a w2vtk one, or one made by `w2vtk "
                   "import` from fairseq or transformers weights), quantizer and heads included, e.g. on new "
                   "unlabelled audio. Its architecture must be the config's model section.")
@click.option("--resume-optimizer", is_flag=True, default=False,
              help="With --init (a w2vtk checkpoint): carry on its optimizer state and update count, so the LR "
                   "schedule and Gumbel temperature continue and --max-updates counts from its start. Without "
                   "it both start afresh.")
@click.pass_context
def pretrain(ctx, config, data_dir, train_subset, valid_subset, exp_dir, max_updates, save_interval,
             valid_interval, log_interval, keep_last, overrides, init, resume_optimizer):
    """Self-supervised wav2vec 2.0 pretraining on unlabelled audio.

    OVERRIDES are `section.key=value` pairs applied after the config file, e.g. `optim.lr=1e-4
    data.max_tokens=800000 trainer.precision=bf16`.

    \b
    Many processes or machines: torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]
      -m w2vtk pretrain ...  (gloo on CPU, nccl on GPU). data.max_tokens is per process; an update
    sees N * max_tokens * optim.update_freq samples: the paper's BASE batch is 64 GPUs x 1.4 M samples,
    so 8 GPUs reproduce it with optim.update_freq=8.
    """
    from w2vtk.training.runs import cli_overrides, pretrain as run

    if resume_optimizer and not init:
        from w2vtk.errors import W2vtkError

        raise W2vtkError("--resume-optimizer needs --init CHECKPOINT: the checkpoint whose optimizer state to carry on")
    run(config, data_dir, train_subset, valid_subset, exp_dir,
        cli_overrides(max_updates, save_interval, valid_interval, log_interval, keep_last) + list(overrides),
        seed=ctx.obj["seed"], init=init, resume_optimizer=resume_optimizer)


@click.command(context_settings={"show_default": True})
@_common
@click.option("--labels", type=click.Choice(["ltr", "phn", "sp"]), default=None,
              help="Targets: letters (.ltr), phones (.phn), or sentencepiece subwords trained on the .wrd "
                   "(vocabulary size: task.sp_vocab_size). Default: the config's task.labels.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from this checkpoint: a w2vtk pretraining checkpoint or one made by `w2vtk import`. "
                   "Without it the model trains from scratch (the baseline that shows what pretraining buys).")
@click.pass_context
def finetune(ctx, config, data_dir, train_subset, valid_subset, exp_dir, max_updates, save_interval,
             valid_interval, log_interval, keep_last, overrides, labels, init):
    """CTC fine-tuning with the paper's schedule: the CNN stays frozen, the Transformer is frozen for the
    first task.freeze_finetune_updates, time and channel masks continue, the LR is tri-stage.

    checkpoints/best.pt is chosen by greedy WER (PER for phones) on --valid-subset. OVERRIDES as for
    `w2vtk pretrain`.
    """
    from w2vtk.training.runs import cli_overrides, finetune as run

    run(config, data_dir, train_subset, valid_subset, exp_dir, labels=labels, init=init,
        overrides=cli_overrides(max_updates, save_interval, valid_interval, log_interval, keep_last)
        + list(overrides), seed=ctx.obj["seed"])
