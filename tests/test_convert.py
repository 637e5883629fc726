"""Import from transformers and fairseq, export to transformers: parity on spoken audio, exact round trips,
and refusal of what does not fit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dependencies import need_module
from reference_models import (ctc_symbols, fairseq_finetuned_checkpoint, fairseq_pretrain_checkpoint, hf_config,
                              hf_model, randomize_, save_hf, speech_waveforms, write_fairseq_dict)
from w2vtk.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from w2vtk.cli import main
from w2vtk.convert import import_weights
from w2vtk.cpu import use_cpu_kernels
from w2vtk.convert.safetensors import read_safetensors, write_safetensors
from w2vtk.model import build_model, model_from_checkpoint, tiny_config
from w2vtk.text import Vocabulary

need_module("transformers")
TOL = 1e-4
W2VTK = str(Path(sys.executable).with_name("w2vtk"))


@pytest.fixture(scope="module")
def waveforms(synth_librispeech) -> list[np.ndarray]:
    return speech_waveforms(synth_librispeech, 3)


def _import(src: Path, out: Path, *extra: str) -> tuple[dict, torch.nn.Module]:
    result = CliRunner().invoke(main, ["import", str(src), str(out), *extra])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    return ckpt, use_cpu_kernels(model_from_checkpoint(ckpt, out), "cpu").eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("style", ["base", "large"])
def test_pretraining_model_matches_transformers(style, waveforms, tmp_path):
    hf = hf_model("pretrain", style)
    ckpt, model = _import(save_hf(hf, tmp_path / "hf"), tmp_path / "ours.pt")
    assert ckpt["kind"] == "import" and ckpt["vocab"] is None and model.cfg.layer_norm_first == (style == "large")
    for wav in waveforms:
        x = torch.from_numpy(wav)[None]
        with torch.no_grad():
            ref = hf(x, output_hidden_states=True)
            feats = model.extract_features(x)
            enc = model.encode(feats.features, output_hidden_states=True)
            q = model.quantize(feats.features)
            ref_logits = hf.quantizer.weight_proj(hf.wav2vec2(x).extract_features)
        assert len(enc.hidden_states) == len(ref.hidden_states) == 4
        for ours, theirs in zip(enc.hidden_states, ref.hidden_states):
            assert _max_diff(ours, theirs) < TOL
        # the frames differ from layer to layer, so the comparison above checks every layer
        assert _max_diff(enc.hidden_states[1], enc.hidden_states[2]) > 0.1
        assert _max_diff(model.final_proj(enc.x), ref.projected_states) < TOL
        assert _max_diff(q.q, ref.projected_quantized_states) < TOL
        ref_codes = ref_logits.view(*ref_logits.shape[:2], 2, -1).argmax(-1)
        assert torch.equal(q.codes, ref_codes)
        assert len(set(q.codes[0, :, 0].tolist())) > 1  # not a degenerate single code
        assert feats.features.shape[1] == int(model.frame_lengths(torch.tensor([len(wav)]))[0])


@pytest.mark.parametrize("style,pad", [("base", 0), ("large", 2)])
def test_ctc_model_matches_transformers(style, pad, waveforms, tmp_path):
    hf = hf_model("ctc", style, seed=1, pad_token_id=pad)
    symbols = ctc_symbols()
    symbols[0], symbols[pad] = symbols[pad], symbols[0]  # the pad (blank) symbol at index `pad`
    ckpt, model = _import(save_hf(hf, tmp_path / "hf", symbols), tmp_path / "ours.pt")
    # w2vtk's layout: blank first, named <s> as in fairseq; transformers' <s> (never emitted) fills <pad>
    assert ckpt["vocab"] == ["<s>", "<pad>", "</s>", "<unk>"] + ctc_symbols()[4:] and ckpt["labels"] == "ltr"
    Vocabulary.from_list(ckpt["vocab"], ckpt["labels"])
    assert model.quantizer is None
    order = [symbols.index(s) for s in ["<pad>", "<s>", "</s>", "<unk>"] + ckpt["vocab"][4:]]
    for wav in waveforms:
        x = torch.from_numpy(wav)[None]
        with torch.no_grad():
            ref = hf(x, output_hidden_states=True)
            logits, lengths = model.ctc_logits(x, torch.tensor([len(wav)]))
        assert _max_diff(logits, ref.logits[..., order]) < TOL
        assert lengths.tolist() == [ref.logits.shape[1]]


def test_ctc_vocabulary_without_fairseq_specials_gets_silent_outputs(waveforms, tmp_path):
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(8)
    symbols = ["|", "A", "<pad>", "B", "<unk>", "C"]
    hf = Wav2Vec2ForCTC(hf_config("base", vocab_size=6, pad_token_id=2)).eval()
    randomize_(hf, 8)
    ckpt, model = _import(save_hf(hf, tmp_path / "hf", symbols), tmp_path / "ours.pt")
    assert ckpt["vocab"] == ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B", "C"]
    x = torch.from_numpy(waveforms[0])[None]
    with torch.no_grad():
        logits = model.ctc_logits(x)[0]
        ref = hf(x).logits
    assert _max_diff(logits[..., [0, 3, 4, 5, 6, 7]], ref[..., [2, 4, 0, 1, 3, 5]]) < TOL
    assert (logits[..., 1:3].max(-1).values < logits.max(-1).values - 1000).all()  # <pad>, </s>: never chosen


@pytest.mark.parametrize("kind,style", [("pretrain", "base"), ("ctc", "large")])
def test_export_then_import_is_identity_and_transformers_loads_it(kind, style, waveforms, tmp_path):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

    hf = hf_model(kind, style, seed=2)
    src = save_hf(hf, tmp_path / "hf", ctc_symbols() if kind == "ctc" else None)
    ckpt, model = _import(src, tmp_path / "a.pt")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "a.pt"), str(tmp_path / "exported"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    expected_files = {"config.json", "model.safetensors", "preprocessor_config.json"}
    if kind == "ctc":
        expected_files |= {"vocab.json", "tokenizer_config.json"}
    assert expected_files <= set(os.listdir(tmp_path / "exported"))
    again, _ = _import(tmp_path / "exported", tmp_path / "b.pt")
    assert again["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(again["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert again["model_config"] == ckpt["model_config"] and again["vocab"] == ckpt["vocab"]

    cls = Wav2Vec2ForCTC if kind == "ctc" else Wav2Vec2ForPreTraining
    loaded, info = cls.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded.eval()
    x = torch.from_numpy(waveforms[0])[None]
    with torch.no_grad():
        a, b = hf(x, output_hidden_states=True), loaded(x, output_hidden_states=True)
    for ours, theirs in zip(a.hidden_states, b.hidden_states):
        assert _max_diff(ours, theirs) < TOL
    if kind == "ctc":
        from transformers import Wav2Vec2Processor

        processor = Wav2Vec2Processor.from_pretrained(tmp_path / "exported")
        assert processor.tokenizer.pad_token_id == 0
        assert processor.tokenizer.decode([5, 5, 0, 6, 4, 7]) == "ET A"


@pytest.mark.parametrize("latent_vars,vocab_size", [(8, 9), (0, 0)])
def test_our_own_checkpoints_export_to_the_right_transformers_class(latent_vars, vocab_size, waveforms, tmp_path):
    """A fine-tuned model keeps its quantizer (unused) and exports as Wav2Vec2ForCTC; a bare encoder as
    Wav2Vec2Model."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

    cfg = tiny_config(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, encoder_embed_dim=32,
                      encoder_layers=2, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8,
                      conv_pos_groups=4, final_dim=16, latent_vars=latent_vars, vocab_size=vocab_size,
                      extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True, normalize=True)
    torch.manual_seed(9)
    model = build_model(cfg).eval()
    randomize_(model, 9)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B", "C", "D"] if vocab_size else None
    save_checkpoint(tmp_path / "ft.pt", {"kind": "finetune", "model_config": cfg.to_dict(), "model": model.state_dict(),
                                         "vocab": vocab, "labels": "ltr" if vocab else None})
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ft.pt"), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"] is True
    cls = Wav2Vec2ForCTC if vocab_size else Wav2Vec2Model
    loaded, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.from_numpy(waveforms[0])[None]
    with torch.no_grad():
        if vocab_size:
            assert _max_diff(model.ctc_logits(x)[0], loaded.eval()(x).logits) < TOL
        else:
            enc = model.encode(model.extract_features(x).features, output_hidden_states=True)
            ref = loaded.eval()(x, output_hidden_states=True)
            assert all(_max_diff(a, b) < TOL for a, b in zip(enc.hidden_states, ref.hidden_states))
            assert _max_diff(enc.x, ref.last_hidden_state) < TOL
            # conv_dim == model dim: no projection here, an identity one in transformers; both ways exact
            again = import_weights(tmp_path / "hf")["model"]
            assert again.keys() == model.state_dict().keys()
            assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_import_through_a_real_subprocess(tmp_path):
    src = save_hf(hf_model("ctc", "base", seed=3), tmp_path / "hf", ctc_symbols())
    proc = subprocess.run([W2VTK, "import", str(src), str(tmp_path / "out.pt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "CTC head of 12 symbols" in proc.stdout
    assert load_checkpoint(tmp_path / "out.pt")["model_config"]["vocab_size"] == 12


def test_old_weight_norm_names_and_pytorch_bin_are_read(waveforms, tmp_path):
    hf = hf_model("pretrain", "base", seed=4)
    folder = save_hf(hf, tmp_path / "hf")
    state = read_safetensors(folder / "model.safetensors")
    old_names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    renamed = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert any(k.endswith("weight_g") for k in renamed)
    (folder / "model.safetensors").unlink()
    torch.save(renamed, folder / "pytorch_model.bin")
    reference = import_weights(save_hf(hf, tmp_path / "hf2"))
    assert all(torch.equal(reference["model"][k], v) for k, v in import_weights(folder)["model"].items())


def test_model_saved_without_mask_embedding_imports(tmp_path):
    from transformers import Wav2Vec2ForCTC

    config = hf_config("base", vocab_size=12)
    config.mask_time_prob = 0.0  # transformers then has no masked_spec_embed
    hf = Wav2Vec2ForCTC(config)
    folder = save_hf(hf, tmp_path / "hf", ctc_symbols())
    assert "wav2vec2.masked_spec_embed" not in read_safetensors(folder / "model.safetensors")
    ckpt = import_weights(folder)
    assert ckpt["model"]["mask_emb"].shape == (48,)


def test_transformers_options_we_do_not_implement_are_named(tmp_path):
    folder = save_hf(hf_model("pretrain", "base"), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    result = CliRunner().invoke(main, ["import", str(folder), str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "hidden_act='relu'" in result.output and "Traceback" not in result.output
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "hubert"}))
    with pytest.raises(CheckpointError, match="model_type is 'hubert'"):
        import_weights(folder)
    assert not (tmp_path / "x.pt").exists()


def test_ctc_folder_without_vocab_or_with_corrupt_weights_is_refused(tmp_path):
    folder = save_hf(hf_model("ctc", "base"), tmp_path / "hf")
    with pytest.raises(CheckpointError, match="vocab.json"):
        import_weights(folder)
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(ctc_symbols(11))}))
    with pytest.raises(CheckpointError, match=r"no symbol for CTC output\(s\) \[11\]"):
        import_weights(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* does not fit the file"):
        import_weights(folder)


def test_safetensors_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16),
               "d": torch.tensor(1.5, dtype=torch.float16), "e": torch.zeros(0, 3)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = read_safetensors(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    from safetensors.torch import load_file  # the reference reader agrees

    assert all(torch.equal(load_file(tmp_path / "t.safetensors")[k], v) for k, v in tensors.items())


# -- fairseq ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["base", "large"])
def test_fairseq_pretraining_checkpoint_matches_transformers(style, waveforms, tmp_path):
    hf = hf_model("pretrain", style, seed=5)
    src = fairseq_pretrain_checkpoint(hf, tmp_path / "wav2vec_small.pt", normalize=style == "large")
    ckpt, model = _import(src, tmp_path / "ours.pt")
    cfg = ckpt["model_config"]
    assert cfg["normalize"] == (style == "large") and cfg["encoder_layerdrop"] == 0.05 and cfg["latent_vars"] == 20
    x = torch.from_numpy(waveforms[1])[None]
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        feats = model.extract_features(x)
        enc = model.encode(feats.features, output_hidden_states=True)
        q = model.quantize(feats.features)
    for ours, theirs in zip(enc.hidden_states, ref.hidden_states):
        assert _max_diff(ours, theirs) < TOL
    assert _max_diff(q.q, ref.projected_quantized_states) < TOL
    assert _max_diff(model.final_proj(enc.x), ref.projected_states) < TOL


def test_fairseq_finetuned_checkpoint_with_dict(waveforms, tmp_path):
    hf = hf_model("ctc", "large", seed=6)
    src = fairseq_finetuned_checkpoint(hf, tmp_path / "wav2vec_vox_960h.pt", normalize=True)
    letters = ctc_symbols()[4:]
    dict_path = write_fairseq_dict(letters, tmp_path / "dict.ltr.txt")
    ckpt, model = _import(src, tmp_path / "ours.pt", "--dict", str(dict_path))
    assert ckpt["vocab"] == ["<s>", "<pad>", "</s>", "<unk>"] + letters and ckpt["labels"] == "ltr"
    cfg = ckpt["model_config"]
    # architecture from the nested pretraining args, regularisation from the fine-tuning run
    assert cfg["layer_norm_first"] and cfg["normalize"] and cfg["feature_grad_mult"] == 0.0
    assert cfg["encoder_layerdrop"] == 0.1 and cfg["latent_vars"] == 0
    x = torch.from_numpy(waveforms[2])[None]
    with torch.no_grad():
        logits, _ = model.ctc_logits(x)
        assert _max_diff(logits, hf(x).logits) < TOL


def test_fairseq_finetuned_checkpoint_needs_the_right_dict(tmp_path):
    src = fairseq_finetuned_checkpoint(hf_model("ctc", "base"), tmp_path / "ft.pt")
    result = CliRunner().invoke(main, ["import", str(src), str(tmp_path / "o.pt")])
    assert result.exit_code == 2 and "--dict dict.ltr.txt" in result.output
    short = write_fairseq_dict(ctc_symbols()[4:-1], tmp_path / "dict.ltr.txt")
    result = CliRunner().invoke(main, ["import", str(src), str(tmp_path / "o.pt"), "--dict", str(short)])
    assert result.exit_code == 2 and "gives 11 symbols" in result.output and "12 outputs" in result.output
    assert not (tmp_path / "o.pt").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload,named", [(_RunsCode, "system"), (_ExecsCode, "builtins.exec")])
def test_fairseq_checkpoint_whose_pickle_runs_code_is_refused(payload, named, tmp_path):
    marker = tmp_path / "pwned"
    hf = hf_model("pretrain", "base")
    src = fairseq_pretrain_checkpoint(hf, tmp_path / "evil.pt")
    ckpt = torch.load(src, weights_only=False)
    ckpt["extra_state"] = {"payload": payload(marker)}
    torch.save(ckpt, src)
    result = CliRunner().invoke(main, ["import", str(src), str(tmp_path / "o.pt")])
    assert result.exit_code == 2 and "refused" in result.output and named in result.output
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
    # the same object inside an old non-zip torch file is refused by the unpickler itself
    torch.save(ckpt, src, _use_new_zipfile_serialization=False)
    result = CliRunner().invoke(main, ["import", str(src), str(tmp_path / "o.pt")])
    assert result.exit_code == 2 and "refused" in result.output and named.split(".")[-1] in result.output
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_fairseq_omegaconf_config_is_read_without_omegaconf(waveforms, tmp_path, monkeypatch):
    """A hydra-era checkpoint pickles omegaconf DictConfig nodes and fairseq enums; they are read as plain
    data."""
    import enum
    import types
    import typing

    modules = {}
    for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes", "omegaconf.base", "fairseq",
                 "fairseq.dataclass", "fairseq.dataclass.constants"):
        modules[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, modules[name])

    def make(module: str, cls_name: str) -> type:
        cls = type(cls_name, (), {"__module__": module})
        setattr(modules[module], cls_name, cls)
        return cls

    dict_config, any_node = make("omegaconf.dictconfig", "DictConfig"), make("omegaconf.nodes", "AnyNode")
    metadata_cls = make("omegaconf.base", "ContainerMetadata")
    choices = enum.Enum("Choices", {"default": "default", "layer_norm": "layer_norm"},
                        module="fairseq.dataclass.constants")
    modules["fairseq.dataclass.constants"].Choices = choices

    def metadata():
        m = metadata_cls()
        m.__dict__.update(ref_type=typing.Any, object_type=None, key_type=str, element_type=typing.Any)
        return m

    def node(value):
        n = any_node()
        value = choices(value) if value in ("default", "layer_norm") else value
        n.__dict__.update(_val=value, _metadata=metadata(), _parent=None)
        return n

    def config(d: dict):
        c = dict_config()
        c.__dict__.update(_content={k: config(v) if isinstance(v, dict) else node(v) for k, v in d.items()},
                          _metadata=metadata(), _parent=None, _flags_cache=None)
        return c

    hf = hf_model("pretrain", "base", seed=7)
    src = fairseq_pretrain_checkpoint(hf, tmp_path / "hydra.pt")
    ckpt = torch.load(src, weights_only=False)
    ckpt["cfg"] = config(ckpt["cfg"])
    torch.save(ckpt, src)
    monkeypatch.undo()  # omegaconf is not importable while w2vtk reads the file
    from w2vtk.convert.fairseq import safe_load_fairseq

    plain = safe_load_fairseq(src)["cfg"]
    assert plain["model"]["extractor_mode"] == "default" and plain["task"] == {"_name": "audio_pretraining",
                                                                                "normalize": False}
    _, model = _import(src, tmp_path / "ours.pt")
    x = torch.from_numpy(waveforms[0])[None]
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        enc = model.encode(model.extract_features(x).features, output_hidden_states=True)
    assert _max_diff(enc.hidden_states[-1], ref.hidden_states[-1]) < TOL
