from pathlib import Path

import pytest
import yaml

from clado_cli.config import Config, load_config
from clado_cli.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml", "imagenet-resnet34.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_default_yaml_documents_every_key():
    """configs/default.yaml spells out every key with the code's defaults."""
    on_disk = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert on_disk == Config().to_dict()


def test_release_sample_run_settings():
    cfg = load_config(ROOT / "configs" / "imagenet-resnet34.yaml")
    assert (cfg.model.name, cfg.data.bs, cfg.data.sb, cfg.data.eb) == ("resnet34", 64, 0, 0)
    assert cfg.quant.weight_candidates == [2, 4, 8] and cfg.quant.activation_bits == 8
    assert cfg.data.dataset.startswith("imagefolder:")


@pytest.mark.parametrize("text,needle", [
    ("data:\n  bs: 0\n", "data.bs"),
    ("data:\n  bs: -3\n", "data.bs"),
    ("data:\n  bs: '64'\n", "data.bs"),
    ("data:\n  sb: 3\n  eb: 1\n", "sb (3) must not exceed eb (1)"),
    ("model:\n  nme: resnet18\n", "model.nme: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("quant:\n  weight_candidates: [2, 2]\n", "distinct"),
    ("quant:\n  weight:\n    observer: Nope\n", "unknown observer"),
    ("device: tpu\n", "device"),
    ("data: [1, 2\n", "YAML syntax error"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_flags_override_and_unset_flags_do_not(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  bs: 32\n  seed: 5\n")
    cfg = load_config(p, {"data.bs": 8, "data.seed": None})
    assert cfg.data.bs == 8 and cfg.data.seed == 5
