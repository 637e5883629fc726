"""fairseq wav2vec 2.0 checkpoints (pretrained and CTC fine-tuned) -> w2vtk.

A fairseq checkpoint is a torch pickle whose config is an argparse Namespace (`args`, older files) or
an omegaconf DictConfig (`cfg`). Neither library is needed, and no code from the file is run: the
file is read with torch's weights-only unpickler, in which the few config classes are stand-ins that
only record their data; any other class makes the load fail. Fine-tuned checkpoints keep the
encoder under `w2v_encoder.w2v_model.` and the CTC projection as `w2v_encoder.proj`; the output
symbols come from the fine-tuning data's dictionary (`dict.ltr.txt`), after fairseq's four specials.
"""
from __future__ import annotations

import ast
import functools
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from w2vtk.checkpoint import CheckpointError
from w2vtk.convert.common import check_fits, fuse_qkv, labels_kind, model_shapes, rename, split_qkv
from w2vtk.model import ModelConfig
from w2vtk.text import Vocabulary

log = logging.getLogger(__name__)


# -- safe loading ----------------------------------------------------------------------------------------
class _StandIn:
    """Records the construction arguments and pickled state of a foreign config object; runs nothing."""

    foreign_name = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


@functools.lru_cache(maxsize=None)
def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_StandIn,), {"foreign_name": name, "__module__": __name__})


# Classes a fairseq checkpoint's config may contain, read as inert stand-ins: argparse and omegaconf
# containers and nodes, the type annotations in omegaconf's metadata, fairseq's config dataclasses and
# enums, numpy scalars in the training state. Any other class is refused.
_CONFIG_CLASSES = (
    "argparse.Namespace", "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode", "omegaconf.nodes.EnumNode", "typing.Any",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
)
_CONFIG_MODULES = ("omegaconf.", "fairseq.", "typing.", "numpy.dtypes.")
_TYPE_NAMES = {f"builtins.{t}" for t in ("str", "int", "float", "bool", "dict", "list", "tuple", "object")}


def _is_config_class(name: str) -> bool:
    return name in _CONFIG_CLASSES or name in _TYPE_NAMES or name.startswith(_CONFIG_MODULES)


def _defaultdict(*args: Any) -> dict:
    return {}


def _allowed_globals(path: Path) -> list[tuple[Any, str]]:
    """Stand-ins for every config class the file names; CheckpointError naming any other class."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, zipfile.BadZipFile, OSError):
        names = []  # a legacy (non-zip) file: the fixed list below, and the unpickler refuses the rest
    refused = sorted(n for n in names if not _is_config_class(n) and n != "collections.defaultdict")
    if refused:
        raise CheckpointError(f"{path}: refused: the pickle needs {', '.join(refused[:5])}, beyond tensors, plain "
                              "data and fairseq's config classes; loading it could run code, so w2vtk does not")
    config = set(_CONFIG_CLASSES) | {n for n in names if _is_config_class(n)}
    return [(_stand_in(n), n) for n in sorted(config)] + [(_defaultdict, "collections.defaultdict")]


def safe_load_fairseq(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) with config classes replaced by inert stand-ins, then plain data."""
    allowed = _allowed_globals(path)
    try:
        with torch.serialization.safe_globals(allowed):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the pickle needs something beyond tensors, plain data and fairseq's config "
            f"classes ({_unpickling_reason(e)}); loading it could run code, so w2vtk does not") from None
    except Exception as e:  # weights-only loading runs no code: any other failure is a damaged file
        raise CheckpointError(f"{path}: cannot read ({(str(e) or type(e).__name__).splitlines()[0][:200]}); the "
                              "file is truncated or not a torch checkpoint") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return {k: (v if k == "model" else to_plain(v)) for k, v in raw.items()}


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's long weights-only message that names the offending global."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    return (named or lines or ["unpickling failed"])[0][:200]


def to_plain(obj: Any) -> Any:
    """Stand-ins and containers -> dicts, lists and scalars."""
    if isinstance(obj, _StandIn):
        name, state = obj.foreign_name, obj.state
        if name == "argparse.Namespace":
            return to_plain(state or {})
        if name.endswith(("DictConfig", "ListConfig")):
            content = state.get("_content") if isinstance(state, dict) else None
            return to_plain(content)
        if name.startswith("omegaconf.nodes."):
            return to_plain(state.get("_val") if isinstance(state, dict) else None)
        if name.startswith("fairseq."):
            if state is None and len(obj.args) == 1:
                return obj.args[0]  # an enum value (fairseq's ChoiceEnum), pickled as Class(value)
            return to_plain(state) if isinstance(state, dict) else None  # a config dataclass: its fields
        if name.endswith(".scalar") and len(obj.args) == 2 and isinstance(obj.args[0], _StandIn):
            dtype, data = obj.args
            if dtype.args and isinstance(dtype.args[0], str) and isinstance(data, bytes):
                return np.frombuffer(data, dtype=np.dtype(dtype.args[0])).item()
        return None  # metadata, type annotations, dtypes: no configuration value
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


# -- config ----------------------------------------------------------------------------------------------
def parse_conv_layers(spec: Any, where: str) -> list[list[int]]:
    """fairseq's conv_feature_layers, a Python expression such as "[(512, 10, 5)] + [(512, 3, 2)] * 4",
    evaluated over literals, + and * only (never eval)."""
    if isinstance(spec, list):
        return [list(map(int, layer)) for layer in spec]

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node)[:80])

    try:
        layers = value(ast.parse(str(spec), mode="eval").body)
        return [[int(c), int(k), int(s)] for c, k, s in layers]
    except (SyntaxError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}cannot parse conv_feature_layers {spec!r} ({e})") from None


def _model_and_task_cfg(ckpt: dict[str, Any], where: str) -> tuple[dict, dict]:
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") or {}
    args = ckpt.get("args")
    if isinstance(args, dict):
        return args, args  # older checkpoints: one flat namespace
    raise CheckpointError(f"{where}no model config (neither cfg.model nor args); not a fairseq wav2vec 2.0 checkpoint")


def _pretraining_cfg(model_cfg: dict, task_cfg: dict, finetuned: bool, where: str) -> tuple[dict, dict]:
    """The pretraining model's config (for fine-tuned checkpoints it is nested in w2v_args)."""
    if not finetuned:
        return model_cfg, task_cfg
    w2v = model_cfg.get("w2v_args")
    if not isinstance(w2v, dict):
        raise CheckpointError(f"{where}fine-tuned checkpoint without w2v_args (the pretrained model's config); "
                              "w2vtk cannot infer attention heads and normalisation without it")
    if isinstance(w2v.get("model"), dict):
        return w2v["model"], w2v.get("task") or {}
    return w2v, w2v


def config_from_fairseq(model_cfg: dict, task_cfg: dict, ft_cfg: dict | None, has_quantizer: bool,
                        vocab_size: int, where: str) -> ModelConfig:
    """fairseq's Wav2Vec2Config (defaults filled in) -> ModelConfig; unsupported options are named."""
    c = {"extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
         "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
         "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
         "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
         "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
         "quantize_input": False, "target_glu": False, "latent_vars": 320, "latent_groups": 2, "latent_dim": 0,
         "feature_grad_mult": 1.0, "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1,
         "quantizer_depth": 1}
    c.update({k: v for k, v in model_cfg.items() if v is not None})
    unsupported = [f"{k}={c[k]!r}" for k, ok in (
        ("activation_fn", "gelu"), ("layer_type", "transformer"), ("quantize_input", False), ("target_glu", False),
        ("pos_conv_depth", 1), ("quantizer_depth", 1)) if c[k] != ok]
    if c["extractor_mode"] not in ("default", "layer_norm"):
        unsupported.append(f"extractor_mode={c['extractor_mode']!r}")
    if unsupported:
        raise CheckpointError(f"{where}unsupported fairseq model options: {', '.join(unsupported)}")
    final_dim = int(c["final_dim"]) or int(c["encoder_embed_dim"])
    reg = {"dropout": c["dropout"], "attention_dropout": c["attention_dropout"],
           "activation_dropout": c["activation_dropout"], "dropout_input": c["dropout_input"],
           "encoder_layerdrop": c["encoder_layerdrop"], "feature_grad_mult": c["feature_grad_mult"]}
    if ft_cfg:  # the fine-tuning run's regularisation replaces the pretraining one
        for ours, theirs in (("dropout", "dropout"), ("attention_dropout", "attention_dropout"),
                             ("activation_dropout", "activation_dropout"), ("dropout_input", "dropout_input"),
                             ("encoder_layerdrop", "layerdrop"), ("feature_grad_mult", "feature_grad_mult")):
            if ft_cfg.get(theirs) is not None:
                reg[ours] = ft_cfg[theirs]
    return ModelConfig(
        extractor_mode="group_norm" if c["extractor_mode"] == "default" else "layer_norm",
        conv_layers=parse_conv_layers(c["conv_feature_layers"], where), conv_bias=bool(c["conv_bias"]),
        encoder_embed_dim=int(c["encoder_embed_dim"]), encoder_layers=int(c["encoder_layers"]),
        encoder_ffn_embed_dim=int(c["encoder_ffn_embed_dim"]),
        encoder_attention_heads=int(c["encoder_attention_heads"]), layer_norm_first=bool(c["layer_norm_first"]),
        conv_pos=int(c["conv_pos"]), conv_pos_groups=int(c["conv_pos_groups"]),
        dropout=float(reg["dropout"]), attention_dropout=float(reg["attention_dropout"]),
        activation_dropout=float(reg["activation_dropout"]), dropout_input=float(reg["dropout_input"]),
        dropout_features=float(c["dropout_features"]), encoder_layerdrop=float(reg["encoder_layerdrop"]),
        final_dim=final_dim, latent_vars=int(c["latent_vars"]) if has_quantizer else 0,
        latent_groups=int(c["latent_groups"]), latent_dim=int(c["latent_dim"]),
        feature_grad_mult=float(reg["feature_grad_mult"]), vocab_size=vocab_size,
        normalize=bool(task_cfg.get("normalize", False)),
    )


# -- weights ---------------------------------------------------------------------------------------------
_RULES = [  # our name (q/k/v split) -> fairseq's, by regular expression
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(.+)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"encoder\.pos_conv\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.pos_conv\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.(fc[12]\..+)", r"encoder.layers.\1.\2"),
    (r"quantizer\.codevectors", "quantizer.vars"),
    (r"ctc_head\.(.+)", r"proj.\1"),
    (r"(.+)", r"\1"),  # everything else has fairseq's name already
]


def fairseq_names(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter names (q/k/v split) -> fairseq's, as in its Wav2Vec2Model (+ `proj` for CTC)."""
    names = {}
    for ours in split_qkv({k: torch.empty(0) for k in model_shapes(cfg)}):
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.norm\.(.+)", ours)
        if m:  # GroupNorm is module 2 of fairseq's block; LayerNorm sits inside a transpose wrapper
            inner = "2" if cfg.extractor_mode == "group_norm" else "2.1"
            names[ours] = f"feature_extractor.conv_layers.{m.group(1)}.{inner}.{m.group(2)}"
            continue
        for pattern, template in _RULES:
            if re.fullmatch(pattern, ours):
                names[ours] = re.sub(pattern, template, ours)
                break
    return names


def _normalize_pos_conv_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # fairseq run with a recent torch stores the weight norm as parametrizations
    out = {}
    for k, v in state.items():
        k = k.replace("pos_conv.0.parametrizations.weight.original0", "pos_conv.0.weight_g")
        k = k.replace("pos_conv.0.parametrizations.weight.original1", "pos_conv.0.weight_v")
        out[k] = v
    return out


def read_fairseq_dict(path: str | os.PathLike) -> tuple[list[str], str]:
    """A fairseq dictionary (`<symbol> <count>` lines) -> fairseq's output order and the label kind."""
    path = Path(path)
    kind = "phn" if ".phn" in path.name else "ltr"
    vocab = Vocabulary.from_dict_file(path, kind)
    return list(vocab.symbols), kind


def import_fairseq(path: str | os.PathLike, dict_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A fairseq wav2vec 2.0 checkpoint -> checkpoint payload (model_config, model, vocab, labels)."""
    path = Path(path)
    where = f"{path}: "
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    ckpt = safe_load_fairseq(path)
    state = _normalize_pos_conv_names(ckpt["model"])
    finetuned = any(k.startswith("w2v_encoder.") for k in state)
    model_cfg, task_cfg = _model_and_task_cfg(ckpt, where)
    ft_cfg = model_cfg if finetuned else None
    if finetuned:
        renamed = {}
        for k, v in state.items():
            if k.startswith("w2v_encoder.w2v_model."):
                k = k[len("w2v_encoder.w2v_model."):]
            elif k.startswith("w2v_encoder.proj."):
                k = k[len("w2v_encoder."):]
            renamed[k] = v
        state = renamed
    pre_cfg, pre_task = _pretraining_cfg(model_cfg, task_cfg, finetuned, where)
    has_quantizer = "quantizer.vars" in state
    if not finetuned and not has_quantizer:
        raise CheckpointError(f"{where}pretraining checkpoint without a quantizer (quantize_targets=False); "
                              "w2vtk supports only quantized targets")
    vocab_size = state["proj.weight"].shape[0] if "proj.weight" in state else 0
    normalize_task = task_cfg if finetuned and "normalize" in task_cfg else pre_task
    cfg = config_from_fairseq(pre_cfg, normalize_task, ft_cfg, has_quantizer, vocab_size, where)
    if not has_quantizer:
        # fine-tuning removes the pretraining heads; a few older files keep some of them
        state = {k: v for k, v in state.items() if not k.startswith(("project_q.", "final_proj.", "target_glu."))}
    names = {v: k for k, v in fairseq_names(cfg).items()}
    ours = fuse_qkv(rename(state, names, where, "fairseq"), where)
    check_fits(cfg, ours, where)
    vocab = labels = None
    if vocab_size:
        if dict_path is None:
            raise CheckpointError(f"{where}a fine-tuned checkpoint needs its output dictionary: pass --dict "
                                  "dict.ltr.txt (the file in the fine-tuning data directory)")
        vocab, labels = read_fairseq_dict(dict_path)
        if len(vocab) != vocab_size:
            raise CheckpointError(f"{dict_path}: gives {len(vocab)} symbols (4 specials + {len(vocab) - 4}) but "
                                  f"the checkpoint's CTC head has {vocab_size} outputs; use the dictionary the "
                                  "model was fine-tuned with")
        labels = labels if labels == "phn" else labels_kind(vocab)
    elif dict_path is not None:
        log.warning("%s has no CTC head; --dict %s is ignored", path, dict_path)
    return {"kind": "import", "model_config": cfg.to_dict(), "model": ours, "vocab": vocab, "labels": labels}
