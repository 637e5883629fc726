"""What every weight conversion shares: our parameter names, the fused attention projection, renaming."""
from __future__ import annotations

import re

import torch
from torch import Tensor

from w2vtk.checkpoint import CheckpointError
from w2vtk.model import ModelConfig, build_model
from w2vtk.model.wav2vec2 import load_state_dict_strict
from w2vtk.text import SPECIAL_SYMBOLS

_QKV = re.compile(r"^(encoder\.layers\.\d+\.self_attn\.)in_proj\.(weight|bias)$")
_SPLIT = re.compile(r"^(encoder\.layers\.\d+\.self_attn\.)([qkv])_proj\.(weight|bias)$")


def model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Our state-dict names and shapes for `cfg`, without allocating the weights."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def split_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our fused `self_attn.in_proj` -> separate `q_proj`, `k_proj`, `v_proj` (fairseq's and transformers' form)."""
    out = {}
    for key, value in state.items():
        m = _QKV.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m.group(1)}{name}_proj.{m.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def fuse_qkv(state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Separate q/k/v projections -> our fused `in_proj` (query, key, value stacked along the output axis)."""
    out, parts = {}, {}
    for key, value in state.items():
        m = _SPLIT.match(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != set("qkv"):
            raise CheckpointError(f"{where}attention weights incomplete: {prefix} has only "
                                  f"{', '.join(sorted(qkv))} projections of q, k, v")
        out[f"{prefix}in_proj.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def rename(state: dict[str, Tensor], names: dict[str, str], where: str, what: str) -> dict[str, Tensor]:
    """Rename keys by `names` (source -> target); a source key not in `names` is an error naming it."""
    unknown = sorted(k for k in state if k not in names)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(f"{where}unexpected {what} weight(s) {', '.join(unknown[:5])}{more}: the model "
                              "has parts w2vtk does not implement, or the config does not match the weights")
    return {names[k]: v for k, v in state.items()}


def check_fits(cfg: ModelConfig, state: dict[str, Tensor], where: str) -> None:
    """The converted weights must be exactly the model's parameters (names and shapes)."""
    with torch.device("meta"):
        model = build_model(cfg)
    load_state_dict_strict(model, {k: v.to("meta") for k, v in state.items()}, where)


def canonical_ctc_order(symbols: list[str], blank: int) -> tuple[list[int | None], list[str]]:
    """Reorder a CTC vocabulary into w2vtk's layout: the blank at index 0 named `<s>` (fairseq's), then
    `<pad>`, `</s>`, `<unk>`, then the other symbols in their order.

    Returns, for each of our outputs, the source output it takes (None: a special the source lacks,
    which gets a never-winning logit), and our symbol names. transformers' blank is its pad token;
    its own `<s>` (never emitted by CTC) fills our `<pad>` slot.
    """
    used = {blank}
    slots: dict[str, int | None] = {}
    for name in SPECIAL_SYMBOLS[1:]:
        exact = [i for i, s in enumerate(symbols) if s == name and i not in used]
        slots[name] = exact[0] if exact else None
        used.update(exact[:1])
    spare = [i for i, s in enumerate(symbols) if s in SPECIAL_SYMBOLS and i not in used]
    for name in [n for n, i in slots.items() if i is None]:
        if spare:
            slots[name] = spare.pop(0)
            used.add(slots[name])
    order: list[int | None] = [blank] + list(slots.values())
    rest = [i for i in range(len(symbols)) if i not in used]
    return order + rest, SPECIAL_SYMBOLS + [symbols[i] for i in rest]


def reorder_ctc_head(state: dict[str, Tensor], order: list[int | None]) -> dict[str, Tensor]:
    """The CTC head's output rows in `order`; None rows get zero weights and a bias that never wins."""
    weight, bias = state["ctc_head.weight"], state["ctc_head.bias"]
    floor = float(bias.min()) - 1e4
    rows_w = [weight[i] if i is not None else torch.zeros_like(weight[0]) for i in order]
    rows_b = [bias[i] if i is not None else torch.tensor(floor, dtype=bias.dtype) for i in order]
    return {**state, "ctc_head.weight": torch.stack(rows_w), "ctc_head.bias": torch.stack(rows_b)}


def labels_kind(vocab: list[str]) -> str:
    """'ltr' when words are separated by '|' (letters), else 'phn' (every symbol is a unit of its own)."""
    return "ltr" if "|" in vocab else "phn"
