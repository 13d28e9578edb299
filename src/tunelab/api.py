"""tunelab from Python (a notebook, a script): the commands' work, with the commands' checks.

    import tunelab

    cfg = tunelab.Config.from_yaml("configs/minilm-l6/rt-snippets-lora.yaml", {"train.epochs": 1})
    summary = tunelab.train(cfg)                    # the Summary that summary.json holds
    report = tunelab.compare(methods=["lora", "ia3"], quick=True)
    report                                          # in a notebook: the table and the plots
    run = tunelab.load(summary.run_dir)
    run.predict(["a gripping, beautifully made film"])

Bad input raises :class:`tunelab.UserError` with the line the command would print.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, deep_merge, dotted_overrides, validate_config
from tunelab.summary import Summary

Config = RunConfig
"""A run's config: ``Config.from_yaml(path, overrides)``, or ``Config()`` for the defaults."""

Overrides = dict[str, Any] | list[str] | None


def train(config: RunConfig | str | Path | None = None, overrides: Overrides = None) -> Summary:
    """Train one run as ``tunelab train`` does: a config (or a YAML path, or None for the
    defaults) and dotted overrides; returns its summary, ``run_dir`` set."""
    from tunelab.train_command import place, run_training

    if isinstance(config, RunConfig):
        cfg = validate_config(deep_merge(config.model_dump(mode="json"), dotted_overrides(overrides)))
    else:
        cfg = RunConfig.from_yaml(config, overrides)
    cfg, run_dir = place(cfg)
    summary, _ = run_training(cfg, run_dir)
    return summary


@dataclass
class Report:
    """A comparison's (or sweep's) report: its directory, its table, its files. In a notebook it
    shows itself as the table and the plots."""

    directory: Path
    table: Any
    """The results as a pandas DataFrame (results.csv, or a sweep's trials.csv)."""
    html: Path
    plots: list[Path] = field(default_factory=list)

    def _repr_html_(self) -> str:
        images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" '
                         f'style="max-width:48%;margin:4px">' for p in self.plots)
        return f"<p>{self.directory}</p>{self.table.to_html(index=False, na_rep='')}<div>{images}</div>"


def report_of(directory: Path, table_file: str, html: Path) -> Report:
    import pandas as pd

    return Report(directory, pd.read_csv(directory / table_file), html, sorted(directory.glob("*.png")))


def compare(config: str | Path | None = None, overrides: Overrides = None, *, methods: list[str] | None = None,
            seeds: int | None = None, output: str | Path | None = None, quick: bool = False, tune: bool = False,
            workers: int = 1, storage: str | None = None, track: list[str] | None = None,
            eval_sets: list[str] | None = None, progress: bool = True) -> Report:
    """``tunelab compare``: every method (or ``methods``) on the same model, data and budget,
    each run in its own process; returns the report. The keywords are the command's options."""
    from tunelab import comparison as comparisons
    from tunelab import jobs
    from tunelab.compare_config import TuneConfig
    from tunelab.errors import UserError

    cfg = comparisons.load_compare_config(config, dotted_overrides(overrides), quick=quick)
    if tune and cfg.tune is None:
        cfg.tune = TuneConfig()
    if track is not None:
        cfg.output.track = list(track)
    cfg.eval_sets = list(dict.fromkeys([*cfg.eval_sets, *(eval_sets or [])]))
    plan = comparisons.plan(cfg, methods=",".join(methods) if methods else None, seeds=seeds,
                            output=str(output) if output else None, quick=quick)
    outcome, written = jobs.run_comparison(plan, progress=progress, workers=workers, storage=storage)
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    if written is None:
        raise UserError(f"every final run ran on other workers sharing {storage}; `tunelab report` merges them")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see {plan.directory / 'logs'} "
                        f"(the report of the others: {written['html']})")
    return report_of(plan.directory, "results.csv", written["html"])


def sweep(config: str | Path, *, trials: int | None = None, output: str | Path | None = None, workers: int = 1,
          storage: str | None = None, progress: bool = True) -> Report:
    """``tunelab sweep``: the config's search on Optuna; returns the sweep's report (its trials)."""
    from tunelab.sweeps import run_sweep

    written = run_sweep(str(config), trials=trials, storage=storage, workers=workers,
                        output=str(output) if output else None, progress=progress)
    directory = Path(written["html"]).parent
    return report_of(directory, "trials.csv", Path(written["html"]))


@dataclass
class Trained:
    """A trained run, rebuilt from its base weights and checkpoint as ``tunelab eval`` does."""

    config: RunConfig
    model: Any
    """The model with its method applied and the checkpoint loaded, in eval mode."""
    tokenizer: Any
    label_names: list[str] | None
    """A classification run's labels, in the order of the model's outputs."""
    prepared: Any = field(repr=False)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Each text's label, its probability and every label's (a classification run)."""
        from tunelab.evaluate import predict

        return predict(self.config, self.prepared, texts)

    def generate(self, prompts: list[str], template: bool = True, **options: Any) -> list[dict[str, str]]:
        """Generations for the prompts (a run on a causal LM): ``max_new_tokens``, ``temperature``,
        ... as ``tunelab generate`` takes them; ``template``: fill the run's task template."""
        from tunelab.generate import Generator, generate, make_options

        generator = Generator(self.model, self.tokenizer, self.config, self.prepared.extras)
        return generate(generator, prompts, make_options(**options), template=template)


def load(run_dir: str | Path) -> Trained:
    """A trained run, ready for inference: ``load(summary.run_dir).predict(texts)``."""
    from tunelab.evaluate import rebuild_run
    from tunelab.generate import device

    cfg, prepared = rebuild_run(Path(run_dir))
    model = prepared.model.to(device(cfg.train.cpu)).eval()
    return Trained(cfg, model, prepared.tokenizer, prepared.label_names, prepared)
