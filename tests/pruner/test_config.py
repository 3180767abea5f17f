import dataclasses

import pytest

from usnprune.config import from_dict, load_yaml
from usnprune.errors import ConfigError
from usnprune.pruner.train import TrainConfig


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown key epochz .*allowed: epochs"):
        from_dict(TrainConfig, {"data": "d", "out": "o", "optim": {"epochz": 3}})


def test_types_and_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"optim.lr: must be > 0"):
        from_dict(TrainConfig, {"data": "d", "out": "o", "optim": {"lr": 0}})
    with pytest.raises(ConfigError, match=r"optim.epochs: expected an integer"):
        from_dict(TrainConfig, {"data": "d", "out": "o", "optim": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"config.augment.perturbation.eps_c: must be < 1"):
        from_dict(TrainConfig, {"data": "d", "out": "o", "augment": {"perturbation": {"eps_c": 1.0}}})
    with pytest.raises(ConfigError, match=r"missing required key"):
        from_dict(TrainConfig, {"data": "d"})


def test_valid_config_round_trips():
    cfg = from_dict(TrainConfig, {"data": "d", "out": "o", "optim": {"epochs": 2, "lr": 1}})
    assert cfg.optim.epochs == 2 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert dataclasses.asdict(cfg)["augment"]["perturbation"]["eps_c"] == 0.2


def test_yaml_errors_are_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(tmp_path / "list.yaml")
