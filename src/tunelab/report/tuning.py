"""The report's tuning section: every method's trials, its chosen values, and what to check.

Read from each trial's ``trial.json`` (tune/<method>/trial-NN/) and the comparison's
compare.yaml; for an untuned comparison, the words that say what its verdict rests on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunelab.report.document import Block, Heading, Paragraph, Table, listing
from tunelab.report.rows import EMPTY, FORMATS
from tunelab.tuning import at_edge, chosen, read_trials

Trials = dict[str, list[dict[str, Any]]]
"""Method -> its trials' records, by trial index."""


def collect_trials(dirs: list[Path]) -> Trials:
    """Every trial under the comparison directories (a comparison split over machines included)."""
    found: Trials = {}
    for directory in dirs:
        for entry, records in read_trials(directory).items():
            found.setdefault(entry, []).extend(records)
    return {entry: sorted(records, key=lambda r: r["index"]) for entry, records in found.items()}


def tune_settings(configs: dict[str, str]) -> dict[str, Any] | None:
    """The comparison's ``tune`` section (None where it is untuned or the runs came without one)."""
    for text in configs.values():
        tune = (yaml.safe_load(text) or {}).get("tune")
        if tune:
            return tune
    return None


def untuned_note(configs: dict[str, str]) -> str | None:
    """What an untuned comparison's verdict rests on, and the command that checks it."""
    if not configs or tune_settings(configs) is not None:
        return None
    directory = next(iter(configs))
    return (f"Each method ran at the one learning rate its entry gives (column lr under 'Budget per method'), "
            f"chosen by hand. The learning rate moves a method's result more than the test set's noise does, so a "
            f"verdict here may change when every method is tuned with the same budget: `tunelab compare --config "
            f"{directory}/compare.yaml --tune --output {directory}-tuned` checks it (the same number of trials of "
            f"each method's learning rate on validation, then the chosen one on test).")


def section(trials: Trials, configs: dict[str, str]) -> list[Block]:
    """The tuning section: how methods were tuned, their chosen values, warnings, every trial."""
    if not trials:
        return []
    settings = tune_settings(configs) or {}
    first = next(iter(trials.values()))[0]
    counts = {entry: sum(r["state"] in ("complete", "pruned") for r in records) for entry, records in trials.items()}
    same = len(set(counts.values())) == 1
    intro = (f"Every method got {settings.get('trials', max(counts.values()))} trials "
             f"({settings.get('sampler', 'grid')} sampler, pruner {settings.get('pruner', 'none')}) of a search on the "
             f"validation split, by validation {first['metric']} "
             f"({'higher' if first['direction'] == 'maximize' else 'lower'} is better); the best completed trial's "
             f"values then ran with the comparison's seeds, and only those final runs were evaluated on test.")
    if not same:
        intro += f" Trials that ran (completed or pruned) differ: {', '.join(f'{e} {n}' for e, n in counts.items())}."
    blocks: list[Block] = [Heading("Tuning"), Paragraph(intro), chosen_table(trials)]
    warnings = [f"{entry}: {', '.join(found)}: the best value may lie beyond the range; widen it "
                f"(methods.{entry}.tune.search)" for entry, records in trials.items() if (found := at_edge(records))]
    if warnings:
        blocks.append(Paragraph("At the edge of the range: " + "; ".join(warnings) + "."))
    failed = [f"{entry} {r['index']}" for entry, records in trials.items() for r in records if r["state"] == "fail"]
    if failed:
        blocks.append(Paragraph(f"Failed trials (run the same command again to retry them): {listing(failed)}."))
    blocks += [Heading("Trials"), trials_table(trials)]
    return blocks


def value_text(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def chosen_table(trials: Trials) -> Table:
    body = []
    for entry, records in trials.items():
        best = chosen(records)
        states = [r["state"] for r in records]
        ran = f"{states.count('complete')} completed, {states.count('pruned')} pruned" + \
              (f", {states.count('fail')} failed" if "fail" in states else "")
        values = ", ".join(f"{k} = {value_text(v)}" for k, v in best["params"].items()) if best else EMPTY
        score = FORMATS["metric"](best["value"]) if best else EMPTY
        body.append([entry, ran, values, score])
    return Table(["method", "trials", "chosen values", "validation at chosen"], body, "tuning")


def trials_table(trials: Trials) -> Table:
    keys = list(dict.fromkeys(k for records in trials.values() for r in records for k in r["params"]))
    body = []
    for entry, records in trials.items():
        best = chosen(records)
        for r in records:
            value = FORMATS["metric"](r["value"]) if r.get("value") is not None else EMPTY
            state = r["state"] + (" (chosen)" if best is not None and r["index"] == best["index"] else "")
            body.append([entry, str(r["index"]), *[value_text(r["params"].get(k, EMPTY)) for k in keys], value, state])
    metric = next(iter(trials.values()))[0]["metric"]
    return Table(["method", "trial", *keys, f"validation {metric}", "state"], body, "trials")
