"""``tunelab sweep``: hyper-parameter search on Optuna, every trial an ordinary run directory.

The command checks the sweep config (:mod:`tunelab.sweeps.space`), opens or continues the
study (:mod:`tunelab.sweeps.study`), starts ``--workers`` worker processes that claim and run
trials until the sweep has them all, shows progress (trial i of N, the best so far, time
left), and writes the report (:mod:`tunelab.sweeps.report`). Killed and run again with the same
command, it keeps the finished trials and resumes the interrupted one from its last snapshot.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import UserError
from tunelab.sweeps.space import Space, load_space

SWEEP_FILE = "sweep.yaml"


def default_directory(space: Space) -> Path:
    if space.settings.output.dir:
        return Path(space.settings.output.dir)
    name = lambda s: Path(str(s)).name.replace("/", "_") or "data"  # noqa: E731
    base = space.base
    return Path("runs") / (f"sweep-{name(base.get('model', {}).get('name', 'minilm-l6'))}-"
                           f"{name(base.get('data', {}).get('name', 'rt-snippets'))}-"
                           f"{name(base.get('method', {}).get('name', 'lora'))}")


def config_text(space: Space) -> str:
    """The sweep as it runs (base sections and settings), one canonical YAML text."""
    settings = space.settings.model_dump(mode="json", exclude={"output", "launcher"})
    return yaml.safe_dump({**space.base, **settings}, sort_keys=True)


def run_sweep(config: str, trials: int | None = None, storage: str | None = None, workers: int = 1,
              output: str | None = None, progress: bool = True, launcher: str | None = None) -> dict[str, Any]:
    """Run (or continue) a sweep; returns what the report wrote."""
    from tunelab import runs
    from tunelab.sweeps import study as studies

    if not 1 <= workers <= 64:
        raise UserError(f"--workers must be between 1 and 64 (got {workers})")
    space = load_space(config, trials)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the report and the bar say what happened
    directory = Path(output) if output else default_directory(space)
    text = config_text(space)
    study = studies.open_study(space, studies.storage_for(storage, directory), text)
    directory.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(directory / SWEEP_FILE, text)
    recovered = studies.recover(study)
    if recovered:
        print(f"trials {', '.join(map(str, recovered))} were interrupted; they continue from their last snapshot",
              file=sys.stderr)
    command = ([sys.executable, "-m", "tunelab.sweeps.worker", str(directory)]
               + (["--storage", storage] if storage else []))
    launcher = launcher or space.settings.launcher
    command += ["--launcher", launcher] if launcher else []
    procs = [subprocess.Popen(command) for _ in range(workers)]
    try:
        watch(study, space, procs, progress)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    from tunelab.sweeps.report import write_sweep_report

    return write_sweep_report(directory, study, space)


def watch(study, space: Space, procs: list[subprocess.Popen], progress: bool) -> None:
    """Trial i of N, the best objective so far and the time left, until every worker is done."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    bar = tqdm(total=space.size, desc="sweep", unit="trial", disable=not progress, dynamic_ncols=True)
    while any(proc.poll() is None for proc in procs):
        time.sleep(2)
        ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        bar.n = min(len(ended), space.size)
        complete = [t for t in ended if t.state == TrialState.COMPLETE and t.value is not None]
        if complete:
            pick = max if space.settings.objective.direction == "maximize" else min
            bar.set_postfix_str(f"best {space.settings.objective.metric} {pick(t.value for t in complete):.4f}")
        bar.refresh()
    bar.close()
    failed = [proc.returncode for proc in procs if proc.returncode not in (0, None)]
    if failed:
        raise UserError(f"{len(failed)} worker(s) stopped with an error (exit {failed[0]}); see the logs/ of the sweep")
