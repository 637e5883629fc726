from pathlib import Path

import pytest
import yaml

from w2vtk.config import ConfigError, load_config, parse_overrides, save_config, to_dict
from w2vtk.training.config import FinetuneConfig, PretrainConfig

CONF = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "conf"


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")))
def test_recipe_configs_load(name):
    cls = PretrainConfig if name.startswith("pretrain") else FinetuneConfig
    loaded = to_dict(load_config(cls, CONF / name))
    # every value the file sets arrives (YAML reads 5e-05, without a dot, as a string)
    for section, values in yaml.safe_load((CONF / name).read_text()).items():
        for key, value in values.items():
            got = loaded[section][key]
            assert got == (float(value) if isinstance(got, float) else value), (section, key)


def test_base_and_large_carry_the_paper_values():
    base = load_config(PretrainConfig, CONF / "pretrain_base.yaml")
    assert (base.model.encoder_layers, base.model.encoder_embed_dim, base.model.encoder_attention_heads) == (12, 768, 12)
    assert (base.task.num_negatives, base.task.logit_temp, base.task.mask_prob, base.task.mask_length) == (100, 0.1, 0.65, 10)
    assert (base.task.diversity_weight, base.task.feature_penalty_weight, base.model.feature_grad_mult) == (0.1, 10.0, 0.1)
    assert base.task.latent_temp == (2.0, 0.5, 0.999995)
    large = load_config(PretrainConfig, CONF / "pretrain_large.yaml")
    assert large.model.layer_norm_first and large.model.extractor_mode == "layer_norm" and large.model.conv_bias
    assert (large.model.encoder_layers, large.model.encoder_embed_dim, large.model.final_dim) == (24, 1024, 768)
    assert large.task.feature_penalty_weight == 0.0 and large.data.normalize


@pytest.mark.parametrize("name,updates,lr,freeze", [("10m", 13000, 5e-5, 10000), ("100h", 80000, 3e-5, 0),
                                                     ("960h", 320000, 1e-4, 0)])
def test_finetune_tables(name, updates, lr, freeze):
    cfg = load_config(FinetuneConfig, CONF / f"finetune_{name}.yaml")
    assert (cfg.optim.max_updates, cfg.optim.lr, cfg.task.freeze_finetune_updates) == (updates, lr, freeze)
    assert cfg.optim.scheduler == "tri_stage" and cfg.task.mask_channel_length == 64


def test_overrides_nest_and_parse_types():
    assert parse_overrides(["optim.lr=1e-4", "model.dropout=0", "optim.betas=[0.9, 0.99]"]) == {
        "optim": {"lr": 1e-4, "betas": [0.9, 0.99]}, "model": {"dropout": 0}}
    cfg = load_config(PretrainConfig, CONF / "pretrain_tiny.yaml", ["optim.lr=2e-4", "trainer.precision=bf16"])
    assert cfg.optim.lr == 2e-4 and cfg.trainer.precision == "bf16"


@pytest.mark.parametrize("override,needle", [
    ("optim.lr=abc", "optim.lr: expected a number"),
    ("optim.max_updates=-5", "must be > 0"),
    ("optim.lrr=1", "unknown key 'lrr'; did you mean 'lr'"),
    ("trainer.precision=fp8", "must be one of"),
    ("model.encoder_attention_heads=7", "must divide"),
    ("task.latent_temp=[0.5, 2.0, 0.9]", "latent_temp"),
    ("novalue", "expected key=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(PretrainConfig, CONF / "pretrain_tiny.yaml", [override])
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(PretrainConfig, bad)
    bad.write_text("optim:\n  warmup_updates: ten\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.optim.warmup_updates: expected an integer"):
        load_config(PretrainConfig, bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(FinetuneConfig, CONF / "finetune_tiny.yaml", ["task.labels=phn"])
    save_config(cfg, tmp_path / "c.yaml")
    assert to_dict(load_config(FinetuneConfig, tmp_path / "c.yaml")) == to_dict(cfg)
