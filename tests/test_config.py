"""The config tree: YAML files, dotted overrides, defaults and the one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.config import RunConfig, deep_merge, load_config, parse_overrides, to_yaml, validate_config
from tunelab.errors import UserError
from tunelab.methods.options import FullMethod, HeadMethod, LoRAMethod
from tunelab.tasks.options import ClassificationTask

REPO = Path(__file__).parents[1]


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# overrides


def test_parse_overrides_types_and_nesting():
    got = parse_overrides(["--method.r", "16", "--train.lr=1e-4", "--method.target_modules", "[query,value]"])
    assert got == {"method": {"r": 16, "target_modules": ["query", "value"]}, "train": {"lr": 1e-4}}
    assert type(got["method"]["r"]) is int
    assert type(got["train"]["lr"]) is float


@pytest.mark.parametrize("text, expected", [
    ("null", None), ("true", True), ("false", False), ("5e-4", 5e-4), ("-3", -3), ("0.25", 0.25),
    ("minilm-l6", "minilm-l6"), ("[c_attn:q,v]", ["c_attn:q", "v"]),
    ('["c_attn:q,v"]', ["c_attn:q,v"]), ("{train: 0.8}", {"train": 0.8}),
    ("{text}", "{text}"), ("Review: {text} Sentiment:", "Review: {text} Sentiment:"), ("", ""), ("yes", "yes"),
])
def test_parse_overrides_values(text, expected):
    value = parse_overrides(["--a.b", text])["a"]["b"]
    assert value == expected and type(value) is type(expected)


def test_parse_overrides_deep_keys_and_last_wins():
    got = parse_overrides(["--data.split.train", "0.8", "--data.split.test=0.1", "--method.r", "4", "--method.r", "32"])
    assert got == {"data": {"split": {"train": 0.8, "test": 0.1}}, "method": {"r": 32}}


@pytest.mark.parametrize("args, phrase", [
    (["--method.r"], "no value"),
    (["lora"], "unexpected argument"),
    (["--", "x"], "unexpected argument"),
    (["--epochs", "3"], "section and a key"),
    (["--train.lr", "1", "--train.lr.x", "0.1"], "conflicts"),
])
def test_parse_overrides_rejects(args, phrase):
    with pytest.raises(UserError, match=phrase):
        parse_overrides(args)


def test_deep_merge_keeps_untouched_keys():
    base = {"train": {"lr": 1.0, "epochs": 3}, "model": {"name": "m"}}
    merged = deep_merge(base, {"train": {"lr": 2.0}, "eval": {"batch_size": 4}})
    assert merged == {"train": {"lr": 2.0, "epochs": 3}, "model": {"name": "m"}, "eval": {"batch_size": 4}}
    assert base["train"]["lr"] == 1.0  # the input is not modified


# --------------------------------------------------------------------------------------------
# YAML, defaults, round trip


def test_defaults():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.model.name == "minilm-l6" and cfg.data.name == "rt-snippets"
    assert isinstance(cfg.method, LoRAMethod) and (cfg.method.r, cfg.method.alpha) == (8, 16.0)
    assert isinstance(cfg.task, ClassificationTask) and cfg.task.max_length == 128
    assert (cfg.data.split.train, cfg.data.split.validation, cfg.data.split.test) == (0.7, 0.1, 0.2)
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 2 and cfg.train.batch_size == 32
    assert cfg.output.dir is None and cfg.output.overwrite is False
    assert cfg.run_dir() == Path("runs") / "minilm-l6-rt-snippets-lora"


def test_run_dir_from_paths_and_explicit_dir(tmp_path):
    cfg = load_config(None, {"model": {"name": "org/some-model"}, "data": {"name": str(tmp_path / "reviews.csv")},
                             "method": {"name": "head"}})
    assert cfg.run_dir() == Path("runs") / "some-model-reviews.csv-head"
    cfg = load_config(None, {"output": {"dir": str(tmp_path / "here")}})
    assert cfg.run_dir() == tmp_path / "here"


def test_yaml_loading(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", """
model: {name: some/model}
data:
  name: reviews.csv
  split: {train: 0.8, validation: 0.1, test: 0.1}
method:
  name: lora
  r: 4
  target_modules: [query, value]
train: {lr: 1.0e-3, epochs: 3}
""")
    cfg = load_config(path)
    assert cfg.model.name == "some/model"
    assert cfg.data.split.train == 0.8 and cfg.data.split.test == 0.1
    assert isinstance(cfg.method, LoRAMethod)
    assert cfg.method.r == 4 and cfg.method.target_modules == ["query", "value"]
    assert cfg.method.alpha == 16.0  # untouched keys keep their defaults
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 3 and cfg.train.batch_size == 32


def test_an_empty_yaml_is_refused_and_no_config_is_defaults(tmp_path):
    # an empty file would silently train the defaults for minutes: refused, with how to get them
    with pytest.raises(UserError, match="is empty; give its sections .* run without --config"):
        load_config(write_yaml(tmp_path / "empty.yaml", "# nothing\n"))
    assert load_config(None) == RunConfig()


def test_override_beats_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", "method: {name: lora, r: 4, alpha: 8}\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(path, parse_overrides(["--method.r", "16", "--train.lr=1e-4"]))
    assert cfg.method.r == 16 and cfg.train.lr == 1e-4
    assert cfg.method.alpha == 8.0  # from the YAML, not overridden


def test_override_can_switch_method(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", "method: {name: lora, r: 4}\n")
    # another method starts from its own defaults: the file's LoRA options (head has no r) are left behind
    assert isinstance(load_config(path, parse_overrides(["--method.name", "head"])).method, HeadMethod)
    with pytest.raises(UserError, match="unknown config key 'method.r'"):  # but an option given with it must be its
        load_config(path, parse_overrides(["--method.name", "head", "--method.r", "4"]))
    assert load_config(path, parse_overrides(["--method.alpha", "4"])).method.r == 4  # same method: merged
    cfg = load_config(None, parse_overrides(["--method.name", "head", "--method.last_n_layers", "2"]))
    assert isinstance(cfg.method, HeadMethod) and cfg.method.last_n_layers == 2


@pytest.mark.parametrize("overrides", [
    {"method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["c_attn:q,v"]},
     "train": {"lr": 1e-4, "max_steps": 7, "patience": 2}, "output": {"dir": "somewhere", "overwrite": True}},
    {"method": {"name": "full"}, "data": {"name": "x.csv", "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
                                          "max_train_examples": 10, "text_pair_column": "question"}},
    {"method": {"name": "head", "last_n_layers": 1}, "task": {"name": "classification", "pooling": "cls"},
     "model": {"name": "gpt2", "revision": "main"}},
    {"task": {"name": "classification", "head": "auto"}},  # a saved config holds the pooled head's defaults too
])
def test_round_trip_through_yaml(tmp_path, overrides):
    cfg = validate_config(overrides)
    path = write_yaml(tmp_path / "config.yaml", to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert type(again.method) is type(cfg.method)
    assert to_yaml(again) == to_yaml(cfg)


@pytest.mark.parametrize("task, keys", [({"pooling": "cls"}, "task.pooling"),
                                        ({"pooling": "last", "classifier_dropout": 0.2},
                                         "task.pooling and task.classifier_dropout")])
def test_pooled_head_options_with_the_auto_head_are_refused(task, keys):
    with pytest.raises(UserError, match=f"{keys} apply to tunelab's pooled head only"):
        validate_config({"task": {"head": "auto", **task}})


def test_round_trip_keeps_method_class():
    assert isinstance(validate_config({"method": {"name": "full"}}).method, FullMethod)


# --------------------------------------------------------------------------------------------
# validation errors: one line naming the key


def test_split_fractions_must_sum_to_one():
    with pytest.raises(UserError) as info:
        load_config(None, {"data": {"split": {"train": 0.5, "validation": 0.1, "test": 0.2}}})
    assert "data.split" in str(info.value) and "sum to 1" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5])
def test_split_fraction_range(value):
    with pytest.raises(UserError, match=r"data\.split\.train"):
        load_config(None, {"data": {"split": {"train": value}}})


def test_unknown_method_lists_known_names():
    with pytest.raises(UserError) as info:
        load_config(None, {"method": {"name": "sparkle"}})
    message = str(info.value)
    assert message.startswith("method.name") and "sparkle" in message
    from tunelab.methods import METHODS

    assert f"known: {', '.join(METHODS.names())}" in message


def test_unknown_task_lists_known_names():
    with pytest.raises(UserError, match=r"task\.name.*'generation'.*classification"):
        load_config(None, {"task": {"name": "generation"}})


@pytest.mark.parametrize("overrides, key", [
    ({"method": {"name": "lora", "r": 0}}, "method.r"),
    ({"method": {"name": "lora", "alpha": -1}}, "method.alpha"),
    ({"method": {"name": "lora", "dropout": 1.0}}, "method.dropout"),
    ({"method": {"name": "head", "last_n_layers": -1}}, "method.last_n_layers"),
    ({"train": {"lr": -0.001}}, "train.lr"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"epochs": "three"}}, "train.epochs"),
    ({"train": {"warmup_ratio": 1.0}}, "train.warmup_ratio"),
    ({"task": {"name": "classification", "max_length": 4}}, "task.max_length"),
    ({"data": {"max_train_examples": 0}}, "data.max_train_examples"),
])
def test_out_of_range_values_name_the_key(overrides, key):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


def test_literal_error_lists_allowed():
    with pytest.raises(UserError, match=r"train\.select_metric: got 'f1'; allowed: 'auto', 'accuracy' or 'loss'"):
        load_config(None, {"train": {"select_metric": "f1"}})


@pytest.mark.parametrize("overrides, key, allowed", [
    ({"train": {"lrr": 0.1}}, "train.lrr", "batch_size, cpu, epochs"),
    ({"method": {"name": "lora", "rank": 4}}, "method.rank",
     "alpha, dropout, init, lr_ratio, name, r, scaling, target_modules, use_dora"),
    ({"method": {"name": "full", "r": 4}}, "method.r", "allowed keys here: name"),
    ({"data": {"split": {"dev": 0.1}}}, "data.split.dev", "test, train, validation"),
    ({"trainer": {"lr": 0.1}}, "trainer", "data, eval, method, model, output, task, train"),
])
def test_unknown_key_is_named_with_allowed_keys(overrides, key, allowed):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert f"unknown config key {key!r}" in message
    assert allowed in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", "train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'train.learning_rate'.*lr"):
        load_config(path)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write_yaml(tmp_path / "bad.yaml", "train: [unclosed\n"))
    with pytest.raises(UserError, match="mapping"):
        load_config(write_yaml(tmp_path / "scalar.yaml", "just a string\n"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model: {name: caf\xe9}\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(latin)


@pytest.mark.parametrize("overrides, check", [
    (["--method.r", "16"], lambda cfg: cfg.method.r == 16),
    (["--task.max_length", "64"], lambda cfg: cfg.task.max_length == 64),
])
def test_section_override_applies_to_the_default_union_member(overrides, check):
    """`--method.r 16` alone (no --method.name) changes the default lora method."""
    assert check(load_config(None, parse_overrides(overrides)))


def test_section_override_without_name_is_still_validated():
    with pytest.raises(UserError, match=r"^method\.r: .*\(got 0\)"):
        load_config(None, parse_overrides(["--method.r", "0"]))


# --------------------------------------------------------------------------------------------
# the shipped configs


def test_every_shipped_config_validates():
    # comparison configs (with `methods`) are checked in tests/test_compare.py, sweeps in tests/sweeps/
    paths = sorted(p for p in REPO.glob("configs/**/*.yaml")
                   if not {"methods", "search", "points"} & set(yaml.safe_load(p.read_text())))
    assert paths, "no YAML files under configs/"
    for path in paths:
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig)
        assert load_config(None, RunConfig.model_validate(cfg.model_dump()).model_dump()) == cfg, path
