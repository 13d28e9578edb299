"""The shipped sweep configs validate, and plan the grids the course assignments ask for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.sweeps.space import load_space

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*sweep*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_config_plans_valid_trials(path, tmp_path):
    space = load_space(path)
    assert space.size == len(space.points()) and space.size > 0
    for point in space.points():
        cfg = space.run_config(point, tmp_path / "trial")
        assert all(getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) == value for key, value in point.items())


def test_seed_004_boolq_grid_is_three_rates_by_two_epoch_counts():
    space = load_space(CONFIGS / "distilbert" / "boolq-sweep.yaml")
    assert sorted((p["train.lr"], p["train.epochs"]) for p in space.points()) == \
        sorted((lr, e) for lr in (1e-4, 5e-4, 1e-3) for e in (7, 9))
    assert space.settings.objective.metric == "accuracy"


def test_seed_002_lora_points_are_alpha_4r_and_the_two_alphas_of_r_16(tmp_path):
    space = load_space(CONFIGS / "gpt2-medium" / "rotten-tomatoes-lora-sweep.yaml")
    pairs = [(p["method.r"], p["method.alpha"]) for p in space.points()]
    assert pairs == [(16, 64), (128, 512), (196, 784), (16, 256)]
    assert all(space.run_config(p, tmp_path).method.dropout == 0.05 for p in space.points())
