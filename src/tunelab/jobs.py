"""A comparison's runs as trials of Optuna studies: shared by local workers and machines.

Each method entry has a study of its final runs (``<entry>:final``, one waiting trial per seed)
and, in a tuned comparison, a study of its search (``<entry>:tune``, one trial per trial index,
with its grid or random values fixed when it is put in, or asked of TPE when it is claimed).
Workers claim trials with the storage's atomic update (:mod:`tunelab.study`): in plan order, a
method's trials first, then its final runs once none of its trials is left waiting or running.
The final runs take the values of the method's best completed trial.

``tunelab compare`` runs one worker in its own process (``--workers 1``) or starts K worker
processes, ``python -m tunelab.jobs DIR [--storage URL]``; another machine runs the same
``tunelab compare --storage URL`` and picks up what no one has claimed. Killed and run again, a
comparison continues: a trial a dead worker of this host left running waits again, and its run
resumes from its snapshot.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab import comparison as compare
from tunelab import study as studies
from tunelab import warm
from tunelab.errors import UserError
from tunelab.launch import die_with_parent
from tunelab.tuning import TUNE_DIR, Tuning, decode, tuning_for, write_trial

POLL_SECONDS = 2.0
"""How often a worker looks again when what is left waits for runs of other workers."""


@dataclass
class Entry:
    """One method entry of the plan: its final runs, and its search where it is tuned."""
    name: str
    finals: list[compare.PlannedRun]
    """Seed order; their configs hold the entry's own values until tuning chooses others."""
    tuning: Tuning | None
    final: optuna.Study | None = None
    tune: optuna.Study | None = None


@dataclass
class Job:
    entry: Entry
    kind: str  # tune or final
    index: int
    """The trial index (tune) or the seed's place (final)."""
    trial: optuna.Trial

    @property
    def key(self) -> str:
        """The name of its config and log files."""
        if self.kind == "tune":
            return f"tune-{self.entry.name}-{trial_name(self.index)}"
        return self.entry.finals[self.index].run_dir.name


def trial_name(index: int) -> str:
    return f"trial-{index:02d}"


def index_of(frozen: FrozenTrial) -> int:
    return int(frozen.user_attrs["index"])


class Comparison:
    """The studies of one comparison, opened (created on first use) for a plan."""

    def __init__(self, plan: compare.Plan, storage_url: str | None = None, prepare: bool = True):
        """``prepare``: put in what the plan lacks, recover what dead workers of this host left
        and retry what failed here; the command does this once, under its directory lock,
        before any worker of its starts (a worker only opens the studies)."""
        self.plan = plan
        self.storage_url = storage_url
        self.prepare = prepare
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bars and the report say what happened
        self.storage = studies.storage_for(storage_url, plan.directory)
        self.entries = [self._open(name, runs_of) for name, runs_of in grouped(plan).items()]

    def _open(self, name: str, finals: list[compare.PlannedRun]) -> Entry:
        tuning = tuning_for(self.plan.config, name, finals[0].config)
        entry = Entry(name, finals, tuning)
        entry.final = self._study(f"{name}:final", "maximize", {}, range(len(finals)), lambda k: {})
        if tuning is not None:
            points = tuning.points
            entry.tune = self._study(f"{name}:tune", tuning.direction, {"search": tuning.description()},
                                     range(tuning.settings.trials), lambda k: points[k] if points else {})
        return entry

    def _study(self, name: str, direction: str, guard: dict[str, str], indices, params_of) -> optuna.Study:
        """The study, with a waiting trial for every index not in it yet; one whose search
        differs from this plan's is refused. A trial this host ran that failed is put in again."""
        try:
            found = optuna.create_study(study_name=name, storage=self.storage, direction=direction)
            for key, value in guard.items():
                found.set_user_attr(key, value)
            for k in indices:  # only the study's creator puts in its first trials: no two workers both do
                found.enqueue_trial(studies.encode(params_of(k)), user_attrs={"index": k})
            found.set_user_attr("ready", True)
        except optuna.exceptions.DuplicatedStudyError:
            found = optuna.load_study(study_name=name, storage=self.storage)
            wait_until(lambda: found.user_attrs.get("ready"), f"the study {name} to be made by another worker")
        for key, value in guard.items():
            if found.user_attrs.get(key) != value:
                raise UserError(f"the study of {name} in this directory (or --storage) was made with another "
                                f"search; give another --output (or --storage), or run the same config to continue it")
        if not self.prepare:
            return found
        studies.recover(found)
        trials = found.get_trials(deepcopy=False)
        present = {index_of(t) for t in trials if t.state != TrialState.FAIL}
        for frozen in reversed(trials):  # a run that failed here is tried again (once per command), its latest try
            if frozen.state == TrialState.FAIL and frozen.user_attrs.get("host") in (None, socket.gethostname()) \
                    and index_of(frozen) not in present:
                params = frozen.params or studies.encode(params_of(index_of(frozen)))  # the same values again
                found.enqueue_trial(params, user_attrs={"index": index_of(frozen)})
                present.add(index_of(frozen))
        for k in indices:
            if k not in present:
                found.enqueue_trial(studies.encode(params_of(k)), user_attrs={"index": k})
        return found

    # ----------------------------------------------------------------------------------------

    def next_job(self) -> Job | None:
        """A job this worker now owns; None when nothing of the plan is left to run. Waits while
        what is left needs runs of other workers to end first."""
        while True:
            job, blocked = self._claim()
            if job is not None or not blocked:
                return job
            time.sleep(POLL_SECONDS)

    def _claim(self) -> tuple[Job | None, bool]:
        blocked = False
        for entry in self.entries:
            if entry.tune is not None:
                trial = studies.claim(entry.tune, studies.waiting(entry.tune, order=index_of))
                if trial is not None:
                    return Job(entry, "tune", trial.user_attrs["index"], trial), False
                if entry.tune.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                    blocked = blocked or bool(studies.waiting(entry.final))
                    continue  # its final runs wait for the chosen values
            wanted = range(len(entry.finals))
            trial = studies.claim(entry.final, studies.waiting(entry.final, keep=lambda t: index_of(t) in wanted,
                                                                order=index_of))
            if trial is not None:
                return Job(entry, "final", trial.user_attrs["index"], trial), False
        return None, blocked

    # ----------------------------------------------------------------------------------------

    def planned(self, job: Job) -> tuple[compare.PlannedRun, dict[str, str] | None]:
        """The run a job trains, and the environment that links a trial's training to its study."""
        entry = job.entry
        if job.kind == "final":
            planned = entry.finals[job.index]
            if entry.tuning is None:
                return planned, None
            cfg = entry.tuning.final_config(self.chosen_values(entry), job.index, planned.run_dir)
            return compare.PlannedRun(entry.name, cfg.train.seed, planned.run_dir, cfg), None
        tuning = entry.tuning
        entry.tune.sampler = studies.sampler_named(tuning.settings.sampler, tuning.settings.seed + job.index,
                                                   startup_trials=max(2, tuning.settings.trials // 2))
        params = decode(tuning.space, tuning.space.suggest(job.trial))  # a grid's or random point's, else TPE's
        run_dir = self.plan.directory / TUNE_DIR / entry.name / trial_name(job.index)
        job.trial.set_user_attr("run_dir", str(run_dir))
        cfg = tuning.trial_config(params, run_dir)
        env = studies.trial_environment(entry.tune, job.trial, tuning.metric, tuning.settings.pruner,
                                        tuning.settings.pruner_startup_trials, self.storage_url, self.plan.directory)
        return compare.PlannedRun(entry.name, cfg.train.seed, run_dir, cfg), env

    def chosen_values(self, entry: Entry) -> dict[str, Any]:
        """The searched values of the entry's best completed trial (the first of equals)."""
        done = entry.tune.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            raise UserError(f"every trial of {entry.name} failed or was pruned; no configuration to run "
                            f"(see the logs/ of the comparison)")
        sign = 1 if entry.tuning.higher_is_better else -1
        best = max(done, key=lambda t: (sign * t.value, -index_of(t)))
        return decode(entry.tuning.space, best.params)

    def run(self, job: Job, bars: compare.Bars | None = None) -> str:
        """Train the job's run in its own process and tell its study how it ended."""
        study = job.entry.tune if job.kind == "tune" else job.entry.final
        try:
            planned, env = self.planned(job)
        except UserError as exc:
            job.trial.set_user_attr("error", str(exc))
            study.tell(job.trial, state=TrialState.FAIL)
            return f"failed: {exc}"
        try:
            state = compare.run_state(planned)  # refuses a run made with another config
        except UserError as exc:
            job.trial.set_user_attr("error", str(exc))
            study.tell(job.trial, state=TrialState.FAIL)
            raise
        outcome = ("skipped" if state == "done"
                   else compare.run_one(self.plan, planned, state, bars, key=job.key, env=env))
        summary = read_summary(planned.run_dir) if outcome in ("done", "skipped") else None
        if summary is None:
            job.trial.set_user_attr("error", outcome.removeprefix("failed: "))
            study.tell(job.trial, state=TrialState.FAIL)
        elif job.kind == "tune" and summary.pruned:
            study.tell(job.trial, state=TrialState.PRUNED)
        else:
            metric = job.entry.tuning.metric if job.kind == "tune" else summary.select_metric
            study.tell(job.trial, summary.validation.get(metric))
        if job.kind == "tune":
            write_trial(planned.run_dir, job.entry.tuning, job.index, study._storage.get_trial(job.trial._trial_id))
        return outcome

    def outcome(self) -> dict[str, str]:
        """Every run of the plan by its directory name (tune trials as tune/<entry>/trial-NN):
        ``done`` or ``failed: <why>`` from the studies, or ``not run`` where no one ran it yet."""
        found = {}
        for entry in self.entries:
            for study, names in ((entry.tune, lambda k: f"{TUNE_DIR}/{entry.name}/{trial_name(k)}"),
                                 (entry.final, lambda k: entry.finals[k].run_dir.name)):
                if study is None:
                    continue
                latest: dict[int, FrozenTrial] = {}
                for frozen in study.get_trials(deepcopy=False):
                    latest[index_of(frozen)] = frozen  # trials are in order: the latest attempt wins
                for k, frozen in sorted(latest.items()):
                    if study is entry.final and k >= len(entry.finals):
                        continue
                    found[names(k)] = {TrialState.COMPLETE: "done", TrialState.PRUNED: "done",
                                       TrialState.FAIL: f"failed: {frozen.user_attrs.get('error', 'unknown')}"}.get(
                                           frozen.state, "not run")
        return found

    def counts(self) -> tuple[int, int]:
        """(ended, total) jobs of the plan, for progress."""
        outcome = self.outcome()
        return sum(v != "not run" for v in outcome.values()), len(outcome)


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise UserError(f"timed out waiting for {what}")
        time.sleep(0.2)


def grouped(plan: compare.Plan) -> dict[str, list[compare.PlannedRun]]:
    found: dict[str, list[compare.PlannedRun]] = {}
    for run in plan.runs:
        found.setdefault(run.name, []).append(run)
    return found


def read_summary(run_dir: Path):
    from tunelab.summary import FILE, Summary

    return Summary.read(run_dir) if (run_dir / FILE).is_file() else None


def work(comparison: Comparison, bars: compare.Bars | None = None) -> dict[str, str]:
    """One worker: claim and run jobs until nothing of the plan is left; what it ran."""
    ran = {}
    with warm.kept():  # its runs fork from one server that imported the libraries once
        while (job := comparison.next_job()) is not None:
            try:
                ran[job.key] = comparison.run(job, bars)
            except BaseException:  # an error or an interrupt: the job goes back for the next command
                studies.release(job.trial)
                raise
            if bars is not None:
                bars.runs.update(1)
    return ran


# --------------------------------------------------------------------------------------------
# The command: one directory, its lock, its workers, its report


def run_comparison(plan: compare.Plan, progress: bool = True, workers: int = 1,
                   storage: str | None = None) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Run every planned run not yet finished (and, tuned, every method's trials first); then
    write the report.

    The runs are the trials of the comparison's studies: in the directory's
    journal, or at ``storage`` (a database URL several machines share). ``workers`` local
    processes claim them, each run in its own training process.

    Returns run directory name -> `done`, `failed: <last error line>` or `not run` (left to
    another machine), and what :func:`tunelab.report.write_report` returns (None when other
    workers on the same storage ran every final run: nothing here to report).
    """
    from filelock import FileLock, Timeout

    from tunelab import eval_sets, report
    from tunelab import runs as run_files

    if not 1 <= workers <= 64:
        raise UserError(f"--workers must be between 1 and 64 (got {workers})")
    compare.check_directory(plan)
    plan.directory.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(plan.directory / ".compare.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise UserError(f"another tunelab compare is writing {plan.directory}; wait for it to finish or pick "
                        f"another --output") from None
    try:
        for run in plan.runs:
            if plan.config.tune is None:
                compare.run_state(run)  # refuses runs made with another config before anything starts
        comparison = Comparison(plan, storage)
        run_files.atomic_write_text(plan.directory / "compare.yaml", compare.compare_yaml(plan.config))
        (plan.directory / "configs").mkdir(exist_ok=True)
        (plan.directory / "logs").mkdir(exist_ok=True)
        ended, total = comparison.counts()
        bars = compare.Bars(total, progress)
        bars.runs.update(ended)
        with warm.kept():  # one server for the runs and the evaluations on other sets
            if workers == 1:
                work(comparison, bars)
            else:
                run_workers(comparison, workers, storage, bars)
            bars.close()
            eval_sets.evaluate(plan)
        outcome = comparison.outcome()
        failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
        if failed and len(failed) == len(outcome):
            first = next(iter(failed.items()))
            raise UserError(f"every run failed; {first[0]}: {first[1].removeprefix('failed: ')}")
        here = [run.run_dir.name for run in plan.runs if (run.run_dir / "summary.json").exists()]
        if not here and storage is not None:  # other workers on the same storage took every final run
            return outcome, None
        elsewhere = [run.run_dir.name for run in plan.runs if run.run_dir.name not in {*here, *failed}]
        return outcome, report.write_report([plan.directory], plan.directory, failed=failed, elsewhere=elsewhere)
    finally:
        lock.release()


def run_workers(comparison: Comparison, workers: int, storage: str | None, bars: compare.Bars) -> None:
    """``workers`` processes of ``python -m tunelab.jobs`` on the comparison; progress until all end."""
    command = [sys.executable, "-m", "tunelab.jobs", str(comparison.plan.directory)]
    command += ["--storage", storage] if storage else []
    command += ["--launcher", comparison.plan.config.launcher] if comparison.plan.config.launcher else []
    linux = sys.platform.startswith("linux")
    procs = [subprocess.Popen(command, preexec_fn=die_with_parent if linux else None) for _ in range(workers)]
    try:
        while any(proc.poll() is None for proc in procs):
            time.sleep(2)
            bars.runs.n = comparison.counts()[0]
            bars.runs.refresh()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [proc.returncode for proc in procs if proc.returncode not in (0, None)]
    if failed:
        raise UserError(f"{len(failed)} worker(s) stopped with an error (exit {failed[0]}); see the logs/ of "
                        f"{comparison.plan.directory}")


def work_in(directory: Path, storage: str | None, launcher: str | None) -> None:
    """A worker of the comparison in ``directory`` (its compare.yaml says what it is)."""
    cfg = compare.load_compare_config(directory / "compare.yaml")
    cfg.launcher = launcher or cfg.launcher
    work(Comparison(compare.plan(cfg, output=str(directory)), storage, prepare=False))


def main(argv: list[str]) -> int:
    """``python -m tunelab.jobs DIR [--storage URL] [--launcher L]``: a worker of the comparison in DIR."""
    return studies.worker_main("python -m tunelab.jobs", argv, work_in)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

