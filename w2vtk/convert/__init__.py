"""Weight conversion between w2vtk checkpoints and transformers folders or fairseq checkpoints.

`import_weights` reads a transformers folder (config.json + weights) or a fairseq checkpoint file and
`export_weights` writes a transformers folder. Both go through our parameter names; every weight must
find its place (strict), so a conversion either is exact or fails with the names that did not fit.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from w2vtk.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from w2vtk.convert.fairseq import import_fairseq
from w2vtk.convert.hf import export_hf, import_hf
from w2vtk.model import ModelConfig, model_from_checkpoint

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("hf",)


def import_weights(src: str | os.PathLike, dict_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A transformers folder or a fairseq checkpoint -> checkpoint payload (kind "import")."""
    src = Path(src)
    if src.is_dir():
        if dict_path is not None:
            raise CheckpointError(f"{src}: --dict is for fairseq checkpoints; a transformers folder carries "
                                  "its vocabulary in vocab.json")
        return import_hf(src)
    if src.is_file():
        return import_fairseq(src, dict_path)
    raise CheckpointError(f"{src}: no such file or folder; give a transformers folder (config.json + weights) "
                          "or a fairseq .pt checkpoint")


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike,
                      dict_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Convert `src` and write a w2vtk checkpoint to `out`; returns the payload written."""
    payload = import_weights(src, dict_path)
    payload.update(sentencepiece=None, train_config=None, trainer=None)
    save_checkpoint(out, payload)
    cfg = ModelConfig.from_dict(payload["model_config"])
    log.info("imported %s -> %s: %d layers of %d, %s%s", src, out, cfg.encoder_layers, cfg.encoder_embed_dim,
             "pre-LN" if cfg.layer_norm_first else "post-LN",
             f", CTC head of {cfg.vocab_size} symbols" if cfg.vocab_size else "")
    return payload


def export_weights(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "hf") -> None:
    """Write the model of a w2vtk checkpoint in another toolkit's format (only "hf": transformers)."""
    if fmt not in EXPORT_FORMATS:
        raise CheckpointError(f"export format {fmt!r} is not supported; use one of {', '.join(EXPORT_FORMATS)}")
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path)  # validates names and shapes before anything is written
    export_hf(model.cfg, model.state_dict(), ckpt.get("vocab"), out_dir)
    log.info("exported %s -> %s (transformers)", ckpt_path, out_dir)


__all__ = ["EXPORT_FORMATS", "export_weights", "import_checkpoint", "import_weights"]
