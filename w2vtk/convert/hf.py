"""transformers' Wav2Vec2 folders (config.json + model.safetensors | pytorch_model.bin, vocab.json) <-> w2vtk.

transformers names the same parameters differently (`feature_projection.projection` for
`post_extract_proj`, `project_hid` for `final_proj`, `lm_head` for the CTC head, ...) and keeps the
encoder under `wav2vec2.` in its pretraining and CTC classes. Its CTC blank is `pad_token_id`; w2vtk's
is index 0, so the head's rows are reordered on import when they differ.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from w2vtk.checkpoint import CheckpointError
from w2vtk.convert.common import (canonical_ctc_order, check_fits, fuse_qkv, labels_kind, model_shapes, rename,
                                  reorder_ctc_head, split_qkv)
from w2vtk.convert.safetensors import read_safetensors, write_safetensors
from w2vtk.fileio import atomic_write_text
from w2vtk.model import ModelConfig
from w2vtk.text import SPECIAL_SYMBOLS, Vocabulary

log = logging.getLogger(__name__)

# transformers' Wav2Vec2Config defaults, for keys a config.json leaves out.
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0, "layerdrop": 0.1, "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group", "feat_extract_activation": "gelu", "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False,
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": False,
    "num_codevectors_per_group": 320, "num_codevector_groups": 2, "codevector_dim": 256,
    "proj_codevector_dim": 256, "vocab_size": 32, "pad_token_id": 0, "add_adapter": False, "adapter_attn_dim": None,
}

# Our encoder-side name (q/k/v split) -> transformers' name, by regular expression.
_ENCODER_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(.+)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.norm\.(.+)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(.+)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(.+)", r"feature_projection.projection.\1"),
    (r"mask_emb", "masked_spec_embed"),
    (r"encoder\.pos_conv\.conv\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(.+)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv]|out)_proj\.(.+)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.fc1\.(.+)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.fc2\.(.+)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(.+)", r"encoder.layers.\1.final_layer_norm.\2"),
]
_HEAD_RULES = [
    (r"quantizer\.(weight_proj\..+|codevectors)", r"quantizer.\1"),
    (r"project_q\.(.+)", r"project_q.\1"),
    (r"final_proj\.(.+)", r"project_hid.\1"),
    (r"ctc_head\.(.+)", r"lm_head.\1"),
]


def architecture_name(cfg: ModelConfig) -> str:
    """The transformers class that holds a model of this config."""
    if cfg.vocab_size > 0:
        return "Wav2Vec2ForCTC"
    return "Wav2Vec2ForPreTraining" if cfg.latent_vars > 0 else "Wav2Vec2Model"


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter names (q/k/v split) -> transformers' names, for the class `architecture_name(cfg)`.

    transformers always has the feature projection; ours is absent when the CNN's channels equal the
    model dimension (as in fairseq), and stands for the identity.
    """
    arch = architecture_name(cfg)
    prefix = "" if arch == "Wav2Vec2Model" else "wav2vec2."
    names = {}
    for ours in split_qkv({k: torch.empty(0) for k in model_shapes(cfg)}):
        if arch == "Wav2Vec2ForCTC" and ours.startswith(("quantizer.", "project_q.", "final_proj.")):
            continue  # a fine-tuned model's unused pretraining heads have no place in Wav2Vec2ForCTC
        for pattern, template in _ENCODER_RULES:
            if re.fullmatch(pattern, ours):
                names[ours] = prefix + re.sub(pattern, template, ours)
                break
        else:
            for pattern, template in _HEAD_RULES:
                if re.fullmatch(pattern, ours):
                    names[ours] = re.sub(pattern, template, ours)
                    break
            else:
                raise AssertionError(f"no transformers name for {ours}")
    if cfg.conv_dim == cfg.encoder_embed_dim:
        for kind in ("weight", "bias"):
            names[_IDENTITY_PROJECTION + kind] = prefix + "feature_projection.projection." + kind
    return names


_IDENTITY_PROJECTION = "(identity) post_extract_proj."


def _identity_projection(dim: int) -> dict[str, Tensor]:
    return {_IDENTITY_PROJECTION + "weight": torch.eye(dim), _IDENTITY_PROJECTION + "bias": torch.zeros(dim)}


# -- config ----------------------------------------------------------------------------------------------
def config_from_hf(hf: dict[str, Any], where: str, has_quantizer: bool, vocab_size: int,
                   normalize: bool | None) -> ModelConfig:
    """transformers' config.json -> ModelConfig; refuses options w2vtk does not implement, naming them."""
    c = {**HF_DEFAULTS, **hf}
    if c.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{where}model_type is {c['model_type']!r}; w2vtk imports only 'wav2vec2' models")
    unsupported = [f"{k}={c[k]!r}" for k, ok in (
        ("hidden_act", "gelu"), ("feat_extract_activation", "gelu"), ("add_adapter", False),
        ("adapter_attn_dim", None)) if c[k] != ok]
    if abs(float(c["layer_norm_eps"]) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_eps={c['layer_norm_eps']!r}")
    if c["feat_extract_norm"] not in ("group", "layer"):
        unsupported.append(f"feat_extract_norm={c['feat_extract_norm']!r}")
    if not len(c["conv_dim"]) == len(c["conv_kernel"]) == len(c["conv_stride"]):
        unsupported.append("conv_dim/conv_kernel/conv_stride of different lengths")
    if unsupported:
        raise CheckpointError(f"{where}unsupported transformers config: {', '.join(unsupported)}")
    mode = "group_norm" if c["feat_extract_norm"] == "group" else "layer_norm"
    codevector_dim, final_dim = int(c["codevector_dim"]), int(c["proj_codevector_dim"])
    return ModelConfig(
        extractor_mode=mode,
        conv_layers=[list(v) for v in zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"])],
        conv_bias=bool(c["conv_bias"]),
        encoder_embed_dim=c["hidden_size"], encoder_layers=c["num_hidden_layers"],
        encoder_ffn_embed_dim=c["intermediate_size"], encoder_attention_heads=c["num_attention_heads"],
        layer_norm_first=bool(c["do_stable_layer_norm"]),
        conv_pos=c["num_conv_pos_embeddings"], conv_pos_groups=c["num_conv_pos_embedding_groups"],
        dropout=float(c["hidden_dropout"]), attention_dropout=float(c["attention_dropout"]),
        activation_dropout=float(c["activation_dropout"]), dropout_input=float(c["feat_proj_dropout"]),
        dropout_features=float(c["feat_quantizer_dropout"]), encoder_layerdrop=float(c["layerdrop"]),
        final_dim=final_dim, latent_vars=int(c["num_codevectors_per_group"]) if has_quantizer else 0,
        latent_groups=int(c["num_codevector_groups"]),
        latent_dim=0 if codevector_dim == final_dim else codevector_dim,
        # transformers has no gradient scale into the CNN: the paper's values per model family
        feature_grad_mult=0.1 if mode == "group_norm" else 1.0,
        vocab_size=vocab_size,
        normalize=(mode == "layer_norm") if normalize is None else bool(normalize),
    )


def config_to_hf(cfg: ModelConfig, vocab: list[str] | None) -> dict[str, Any]:
    """ModelConfig -> a complete transformers config.json."""
    hf = dict(HF_DEFAULTS)
    hf.update(
        model_type="wav2vec2", architectures=[architecture_name(cfg)],
        feat_extract_norm="group" if cfg.extractor_mode == "group_norm" else "layer",
        conv_dim=[c for c, _, _ in cfg.conv_layers], conv_kernel=[k for _, k, _ in cfg.conv_layers],
        conv_stride=[s for _, _, s in cfg.conv_layers], num_feat_extract_layers=len(cfg.conv_layers),
        conv_bias=cfg.conv_bias, hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_layers,
        intermediate_size=cfg.encoder_ffn_embed_dim, num_attention_heads=cfg.encoder_attention_heads,
        do_stable_layer_norm=cfg.layer_norm_first, num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups, hidden_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        feat_proj_dropout=cfg.dropout_input, feat_quantizer_dropout=cfg.dropout_features,
        layerdrop=cfg.encoder_layerdrop, final_dropout=0.0,
        num_codevectors_per_group=cfg.latent_vars or HF_DEFAULTS["num_codevectors_per_group"],
        num_codevector_groups=cfg.latent_groups, codevector_dim=cfg.codevector_dim,
        proj_codevector_dim=cfg.final_dim,
        # > 0 so that transformers keeps the learned mask embedding (masked_spec_embed)
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
        apply_spec_augment=True, ctc_loss_reduction="sum", ctc_zero_infinity=True,
        vocab_size=cfg.vocab_size or HF_DEFAULTS["vocab_size"], pad_token_id=0,
        bos_token_id=None, eos_token_id=None,
    )
    if vocab and vocab[:4] == SPECIAL_SYMBOLS:
        hf["bos_token_id"], hf["eos_token_id"] = 1, 2  # <s> and </s> in the exported vocab.json
    return hf


# -- import ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({str(e).splitlines()[0]}); the folder is damaged") from None


def _read_weights(folder: Path) -> dict[str, Tensor]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        state = {}
        for shard in shards:
            state.update(read_safetensors(folder / shard))
        return state
    if binary.is_file():
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{binary}: refused: its pickle would construct objects beyond tensors "
                                  f"({str(e).splitlines()[0][:200]}), so loading it could run code") from None
        except Exception as e:  # weights-only loading runs no code: any other failure is a damaged file
            raise CheckpointError(f"{binary}: cannot read ({(str(e) or type(e).__name__).splitlines()[0][:200]}); "
                                  "the file is truncated or not a torch file: re-download or re-export it") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{binary}: not a state dict")
        return state
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin; point at a folder written "
                          "by transformers' save_pretrained")


def _normalize_pos_conv_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # older transformers saved torch.nn.utils.weight_norm's weight_g / weight_v
    out = {}
    for k, v in state.items():
        k = re.sub(r"pos_conv_embed\.conv\.weight_g$", "pos_conv_embed.conv.parametrizations.weight.original0", k)
        k = re.sub(r"pos_conv_embed\.conv\.weight_v$", "pos_conv_embed.conv.parametrizations.weight.original1", k)
        out[k] = v
    return out


def _read_vocab(folder: Path, size: int, blank: int) -> list[str]:
    path = folder / "vocab.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: CTC model without vocab.json; save the tokenizer/processor into the "
                              "same folder (processor.save_pretrained)")
    table = _read_json(path)
    added = folder / "added_tokens.json"
    if added.is_file():
        table = {**table, **_read_json(added)}
    if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
        raise CheckpointError(f"{path}: expected a JSON object symbol -> index (multilingual vocabularies "
                              "are not supported)")
    symbols: list[str | None] = [None] * size
    for sym, i in table.items():
        if not 0 <= i < size:
            raise CheckpointError(f"{path}: symbol {sym!r} has index {i} outside the CTC head's {size} outputs")
        symbols[i] = sym
    missing = [i for i, s in enumerate(symbols) if s is None]
    if missing:
        raise CheckpointError(f"{path}: no symbol for CTC output(s) {missing[:10]}; the vocabulary does not "
                              "match the model")
    if not 0 <= blank < size:
        raise CheckpointError(f"{folder / 'config.json'}: pad_token_id {blank} (the CTC blank) is outside the "
                              f"vocabulary of {size}")
    return symbols  # type: ignore[return-value]


def import_hf(folder: str | os.PathLike) -> dict[str, Any]:
    """A transformers Wav2Vec2 folder -> checkpoint payload (model_config, model, vocab, labels)."""
    folder = Path(folder)
    where = f"{folder}: "
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; point at a folder written by save_pretrained")
    hf = _read_json(folder / "config.json")
    state = _normalize_pos_conv_names(_read_weights(folder))
    if any(k.startswith("wav2vec2.") for k in state):
        state = {k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k: v for k, v in state.items()}
    # the encoder's names are now prefix-free, as in Wav2Vec2Model; heads keep theirs
    has_quantizer = "quantizer.weight_proj.weight" in state
    vocab_size = state["lm_head.weight"].shape[0] if "lm_head.weight" in state else 0
    preprocessor = folder / "preprocessor_config.json"
    normalize = _read_json(preprocessor).get("do_normalize") if preprocessor.is_file() else None
    cfg = config_from_hf(hf, where, has_quantizer, vocab_size, normalize)
    names = {v.removeprefix("wav2vec2."): k for k, v in hf_names(cfg).items()}
    if "masked_spec_embed" not in state:
        # transformers drops it when its config disables masking; keep our initial value
        log.info("%s has no masked_spec_embed; mask_emb keeps its initial value", folder)
        names.pop("masked_spec_embed")
    ours = fuse_qkv(rename(state, names, where, "transformers"), where)
    if cfg.conv_dim == cfg.encoder_embed_dim:
        identity = _identity_projection(cfg.conv_dim)
        if not all(torch.allclose(ours.pop(k).float(), v, atol=1e-6) for k, v in identity.items()):
            raise CheckpointError(f"{where}conv_dim equals hidden_size ({cfg.conv_dim}) but the feature projection "
                                  "is not the identity; w2vtk (like fairseq) has no projection in that case")
    if "mask_emb" not in ours:
        ours["mask_emb"] = torch.empty(cfg.encoder_embed_dim).uniform_()
    check_fits(cfg, ours, where)
    vocab = labels = None
    if vocab_size:
        blank = 0 if hf.get("pad_token_id") is None else int(hf["pad_token_id"])
        order, vocab = canonical_ctc_order(_read_vocab(folder, vocab_size, blank), blank)
        ours = reorder_ctc_head(ours, order)
        cfg = cfg.replace(vocab_size=len(vocab))
        labels = labels_kind(vocab)
        Vocabulary(vocab, labels)  # the layout decoding expects
    return {"kind": "import", "model_config": cfg.to_dict(), "model": ours, "vocab": vocab, "labels": labels}


# -- export ----------------------------------------------------------------------------------------------
def export_hf(cfg: ModelConfig, state: dict[str, Tensor], vocab: list[str] | None, out_dir: str | os.PathLike) -> None:
    """Write a folder transformers' `from_pretrained` loads: config.json, model.safetensors and, for CTC
    models, vocab.json, tokenizer_config.json and preprocessor_config.json."""
    out_dir = Path(out_dir)
    names = hf_names(cfg)
    split = split_qkv(state)
    if cfg.conv_dim == cfg.encoder_embed_dim:
        split.update(_identity_projection(cfg.conv_dim))
    dropped = sorted(k for k in split if k not in names)
    if dropped:
        log.info("not exported (no place in %s): %s", architecture_name(cfg), ", ".join(dropped))
    tensors = {names[k]: v for k, v in split.items() if k in names}
    write_safetensors(out_dir / "model.safetensors", tensors)
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_hf(cfg, vocab), indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "preprocessor_config.json", json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_side": "right", "padding_value": 0.0, "do_normalize": cfg.normalize,
        # group-norm models were trained on unpadded audio; transformers then expects no attention mask
        "return_attention_mask": cfg.extractor_mode == "layer_norm",
    }, indent=2, sort_keys=True) + "\n")
    if vocab:
        hf_vocab = list(vocab)
        if hf_vocab[:2] == SPECIAL_SYMBOLS[:2]:
            # transformers' CTC blank is its pad token: output 0 is called <pad> there, <s> here
            hf_vocab[:2] = ["<pad>", "<s>"]
        atomic_write_text(out_dir / "vocab.json",
                          json.dumps({s: i for i, s in enumerate(hf_vocab)}, indent=2, ensure_ascii=False) + "\n")
        tokenizer = {"tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": hf_vocab[0],
                     "word_delimiter_token": "|" if "|" in hf_vocab else None,
                     "unk_token": "<unk>" if "<unk>" in hf_vocab else None,
                     "bos_token": "<s>" if "<s>" in hf_vocab[1:] else None,
                     "eos_token": "</s>" if "</s>" in hf_vocab[1:] else None, "do_lower_case": False}
        atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(tokenizer, indent=2, sort_keys=True) + "\n")
