from __future__ import annotations

from pathlib import Path

import pytest

from softloc.config import ConfigError, RunConfig, load_config, save_config


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  steps: 10\nloss:\n  name: triplet\n")
    config = load_config(path, ["train.steps=20", "tuples.n_near=3", "model.options={a: 1}"])
    assert config.train.lr == 0.001 and config.train.steps == 20
    assert config.loss.name == "triplet" and config.tuples.n_near == 3
    assert config.model.options == {"a": 1}
    assert config.data == RunConfig().data


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    config = load_config(None, ["train.seed=5", "tuples.near_radius=8"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown key.*train.stepz.*valid keys"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("tuples.near_radius=30", "near_radius must be > 0 and <= tuples.far_radius"),
        ("data.cache_images=3", "expected true or false"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_values_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_presets_load_and_validate() -> None:
    from softloc.config import available_presets

    assert {"demo", "vgg16_netvlad"} <= set(available_presets())
    demo = load_config("demo")
    assert demo.model.name == "small_netvlad" and demo.loss.name == "soft_contrastive"
    paper = load_config("vgg16_netvlad", ["train.steps=5"])
    assert paper.tuples.n_near == 12 and paper.model.whitening_dim == 256
    assert paper.train.steps == 5
