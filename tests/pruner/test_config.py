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


def test_a_partial_nested_section_keeps_its_fields_own_defaults():
    """prune's optim defaults to constant, no warm-up, lr 1e-3 (not OptimConfig's cosine):
    ``optim: {lr: ...}`` changes the rate only; the same for train's augmentation box."""
    from usnprune.pruner.prune import PruneConfig

    req = {"checkpoint": "m.pt", "data": "d", "out": "o"}
    base = from_dict(PruneConfig, req).optim
    got = from_dict(PruneConfig, {**req, "optim": {"lr": 5e-4}}).optim
    assert got.lr == 5e-4 and dataclasses.replace(got, lr=base.lr) == base
    assert base.schedule == "constant" and base.warmup_epochs == 0  # what the test is about
    treq = {"data": "d", "out": "o"}
    box = from_dict(TrainConfig, treq).augment.perturbation  # Box(0.2, 0.2), not Box()'s 0.1
    cfg = from_dict(TrainConfig, {**treq, "augment": {"perturbation": {"eps_c": 0.3}}})
    assert cfg.augment.perturbation.eps_c == 0.3 and cfg.augment.perturbation.eps_b == box.eps_b
    with pytest.raises(ConfigError, match=r"prune\.optim: unknown key nosuch"):
        from_dict(PruneConfig, {**req, "optim": {"nosuch": 1}}, "prune")
