"""Bad sweep input: one line naming what is wrong and what would be right, exit 2, nothing written."""

from __future__ import annotations

import pytest
import yaml

from tunelab import cli


@pytest.fixture
def run_cli(capsys):
    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.mark.parametrize("search, settings, phrases", [
    ({"method.rr": [2, 4]}, {}, ["search key 'method.rr' is not a config key",
                                 "keys of method here: alpha, dropout, init, lr_ratio, name, r, scaling, "
                                 "target_modules, use_dora"]),
    ({"method.r": []}, {}, ["search.method.r", "empty"]),
    ({"train.lr": {"low": 1.0e-2, "high": 1.0e-3}}, {"sampler": "tpe"},
     ["search.train.lr", "low 0.01 must be below high 0.001"]),
    ({"train.lr": {"low": 0.0, "high": 1.0e-3, "log": True}}, {"sampler": "random"},
     ["search.train.lr", "log range needs low > 0"]),
    ({"method.r": [2]}, {"objective": {"metric": "rougeL"}},
     ["objective.metric 'rougeL'", "it reports: loss, accuracy"]),
    ({"train.lr": {"low": 1.0e-3, "high": 1.0e-2}}, {}, ["a range cannot be a grid", "sampler: tpe or random"]),
    ({"method.alpha": "2 * method.r"}, {}, ["only tied keys"]),
    ({"method.r": [2], "method.alpha": "2 * train.lr"}, {}, ["names train.lr, which is not searched"]),
    ({"method.r": [2], "method.alpha": "__import__('os')"}, {}, ["search expression"]),
    ({"method.r": [-1]}, {}, ["method.r", "greater than 0"]),
    ({"lr": [1]}, {}, ["must be section.key"]),
], ids=["unknown-key", "empty-list", "low-above-high", "log-from-zero", "objective", "range-in-grid", "only-tied",
        "tied-to-unsearched", "not-arithmetic", "bad-value", "not-dotted"])
def test_bad_sweep_config(tmp_path, run_cli, tiny_run_config, search, settings, phrases):
    base = {k: v for k, v in tiny_run_config.items() if k != "output"}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**base, "search": search, **settings}))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["sweep", "--config", str(config), "--output", str(out), "--no-progress"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists(), "bad input must leave no sweep directory"


def test_a_storage_that_cannot_be_opened(tmp_path, run_cli, tiny_run_config):
    base = {k: v for k, v in tiny_run_config.items() if k != "output"}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**base, "search": {"method.r": [2]}}))
    rc, _, err = run_cli(["sweep", "--config", str(config), "--storage", f"sqlite:///{tmp_path}/missing/dir/s.db",
                          "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and err.startswith("error: --storage 'sqlite:///") and "cannot be opened" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
