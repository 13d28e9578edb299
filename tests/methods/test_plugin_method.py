"""A method added from outside tunelab: one module, registered when imported, and nothing else.

The module below (LayerNorm tuning: only the layer norms' gains and biases train, plus the task
head) is written into a folder on the path and named in ``TUNELAB_PLUGINS``. With no tunelab
file touched it then goes through ``params``, ``train``, ``export`` and ``compare`` (whose runs are child
processes that import it again), and through the generic property checks every registered
method gets.
"""

from __future__ import annotations

import csv
import json
import sys
import textwrap

import pytest
from torch import nn

from conftest import cli_args
from tunelab import cli
from tunelab.methods import METHODS

PLUGIN = textwrap.dedent('''
    """LayerNorm tuning: the gains and biases of every layer norm (RMSNorm too) train, nothing else."""
    from typing import ClassVar, Literal

    from torch import nn

    from tunelab.methods import METHODS
    from tunelab.methods.common import freeze, task_head, unfreeze
    from tunelab.methods.options import MethodOptions


    class LayerNormTuning(MethodOptions):
        name: Literal["lntune"] = "lntune"
        export_formats: ClassVar[tuple[str, ...]] = ("merged",)  # it trains the model's own tensors


    def apply(model, cfg, family, tokenizer=None):
        heads = task_head(model)
        freeze(model)
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
        unfreeze(norms + heads)


    METHODS.register(LayerNormTuning, module=__name__)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "lntune_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{':'.join(sys.path)}")  # the comparison's child processes
    monkeypatch.setenv("TUNELAB_PLUGINS", "lntune_plugin")
    yield "lntune"
    METHODS.entries.pop("lntune", None)
    sys.modules.pop("lntune_plugin", None)


def layer_norm_numel(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())


def test_params_counts_the_plugin_method(plugin, tiny_bert_dir, capsys):
    from transformers import BertModel

    assert cli.main(["params", "--model", str(tiny_bert_dir), "--method", plugin, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    classifier = 16 * 2 + 2
    assert result["trainable_params"] == layer_norm_numel(BertModel.from_pretrained(tiny_bert_dir)) + classifier
    assert result["method"]["name"] == plugin


def test_train_export_and_compare_run_the_plugin_method(plugin, tiny_run_config, tmp_path, capsys):
    from tunelab import runs

    cfg = {**tiny_run_config, "method": {"name": plugin}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    saved = runs.load_tensors(tmp_path / "run" / runs.CHECKPOINT / "model.safetensors")
    assert summary["method"] == plugin and summary["trainable_params"] == sum(t.numel() for t in saved.values())
    assert all(".LayerNorm." in k or k.startswith("classifier.") for k in saved), sorted(saved)

    # export asks the method what it can do: merged (checked against the run's outputs), not peft
    assert cli.main(["export", str(tmp_path / "run"), "--format", "merged", "--output", str(tmp_path / "merged")]) == 0
    record = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert record["method"] == plugin and record["check"]["max_abs_difference"] <= record["check"]["tolerance"]
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "run"), "--format", "peft", "--output", str(tmp_path / "peft")]) == 2
    assert "method lntune cannot be exported as peft; its format: merged" in capsys.readouterr().err

    compare_yaml = tmp_path / "compare.yaml"
    shared = {k: v for k, v in tiny_run_config.items() if k not in ("method", "output")}
    compare_yaml.write_text(json.dumps({**shared, "train": {**shared["train"], "epochs": 1},
                                        "methods": {plugin: {}, "head": {}}}))
    out = tmp_path / "comparison"
    assert cli.main(["compare", "--config", str(compare_yaml), "--output", str(out), "--no-progress"]) == 0
    rows = {row["method"]: row for row in csv.DictReader(open(out / "results.csv", encoding="utf-8"))}
    assert (set(rows) == {plugin, "head"}
            and int(rows[plugin]["trainable_params"]) > int(rows["head"]["trainable_params"]))


def test_the_generic_checks_accept_the_plugin_method(plugin, tiny_causal_dir):
    from test_every_method import CHECKS
    from tunelab import plugins

    plugins.load_plugins()
    assert plugin in METHODS.names()
    for check in CHECKS:
        for kind in ("classifier", "causal"):
            check(plugin, kind, tiny_causal_dir)


def test_a_plugin_that_cannot_be_imported_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_PLUGINS", "no_such_plugin_module")
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TUNELAB_PLUGINS names 'no_such_plugin_module'") and err.count("\n") == 1
