"""`tunelab compare --tune`: equal tuning on validation, then final runs on test; resumable after
SIGKILL with the same trials; shared by two workers on a real PostgreSQL server.

One tiny comparison serves every test here: LoRA on the tiny BERT at a good learning rate
(0.1), and the same LoRA given one 100x too small (1e-3). Untuned, the second loses clearly;
tuned with the same three trials each (a log grid over lr/100 .. lr x 100), both find 0.1.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import write_sentiment_csv
from tunelab import cli
from tunelab.study import JOURNAL

TIMING = {"train_time_s", "wall_time_s", "tokens_per_second", "peak_memory_bytes"}
"""results.csv columns that are measurements of this machine's speed, not results."""


def comparison_yaml(folder: Path, model: Path, data: Path, tune: dict | None) -> Path:
    lora = {"name": "lora", "r": 4, "alpha": 8}
    cfg = {"model": {"name": str(model)}, "data": {"name": str(data)}, "task": {"max_length": 32},
           "train": {"epochs": 2, "batch_size": 16, "eval_every_steps": 6}, "eval": {"batch_size": 64},
           "methods": {"lora": {"method": lora, "train": {"lr": 0.1}},
                       "lora-slow": {"method": lora, "train": {"lr": 1e-3}}}}  # 100x too small
    if tune is not None:
        cfg["tune"] = tune
    path = folder / ("tuned.yaml" if tune is not None else "untuned.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


TUNE = {"trials": 3, "lr_factor": 100, "sampler": "grid", "pruner": "median", "pruner_startup_trials": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_no_dropout_dir):
    folder = tmp_path_factory.mktemp("tuned-comparison")
    data = write_sentiment_csv(folder / "reviews.csv", n=400)
    return folder, comparison_yaml(folder, tiny_bert_no_dropout_dir, data, None), \
        comparison_yaml(folder, tiny_bert_no_dropout_dir, data, TUNE)


@pytest.fixture(scope="module")
def untuned(setup) -> Path:
    folder, config, _ = setup
    assert cli.main(["compare", "--config", str(config), "--output", str(folder / "untuned"), "--no-progress"]) == 0
    return folder / "untuned"


@pytest.fixture(scope="module")
def tuned(setup) -> Path:
    folder, _, config = setup
    assert cli.main(["compare", "--config", str(config), "--output", str(folder / "tuned"), "--no-progress"]) == 0
    return folder / "tuned"


def read_results(path: Path) -> dict[str, dict[str, str]]:
    with open(path / "results.csv", newline="") as fh:
        return {row["method"]: row for row in csv.DictReader(fh)}


def paired_verdict(comparison: Path, method: str) -> str:
    text = (comparison / "report.md").read_text()
    table = text.split("## Paired tests against ")[1].split("\n## ")[0]
    headers = None
    for line in table.splitlines():
        if line.startswith("| method"):
            headers = [c.strip() for c in line.strip("|").split(" | ")]
        elif line.startswith(f"| {method} |"):
            return dict(zip(headers, [c.strip() for c in line.strip("|").split(" | ")]))["verdict"]
    raise AssertionError(f"no paired row for {method}")


def trials_of(comparison: Path, storage: str | None = None, entries=("lora", "lora-slow")) -> dict[str, list[tuple]]:
    """Each method's trials as (index, params, state, value), from the comparison's studies."""
    url = storage or None
    store = optuna.storages.RDBStorage(url) if url else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(comparison / JOURNAL)))
    found = {}
    for entry in entries:
        study = optuna.load_study(study_name=f"{entry}:tune", storage=store)
        found[entry] = sorted((t.user_attrs["index"], t.params, t.state, t.value) for t in study.trials
                              if t.state != TrialState.FAIL)
    return found


def test_a_learning_rate_100x_too_small_loses_untuned_and_is_back_when_tuned(untuned, tuned):
    before = read_results(untuned)
    assert float(before["lora"]["test_accuracy"]) - float(before["lora-slow"]["test_accuracy"]) > 0.3
    assert paired_verdict(untuned, "lora-slow") == "worse"
    assert "Each method ran at the one learning rate its entry gives" in (untuned / "report.md").read_text()

    after = read_results(tuned)
    for entry in ("lora", "lora-slow"):
        records = [json.loads(p.read_text()) for p in sorted((tuned / "tune" / entry).glob("trial-*/trial.json"))]
        best = max((r for r in records if r["state"] == "complete"), key=lambda r: r["value"])
        assert best["params"]["train.lr"] == pytest.approx(0.1), entry
        final = yaml.safe_load((tuned / entry / "config.yaml").read_text())
        assert final["train"]["lr"] == pytest.approx(0.1) and final["eval"]["test"] is True
    # both final runs train at the chosen learning rate: back within noise of the best
    assert abs(float(after["lora"]["test_accuracy"]) - float(after["lora-slow"]["test_accuracy"])) < 0.05
    assert paired_verdict(tuned, "lora-slow") == "cannot be told apart"
    md = (tuned / "report.md").read_text()
    assert "## Tuning" in md and "Every method got 3 trials" in md and "train.lr = 0.1" in md
    assert "lora-slow: train.lr = 0.1 is the highest value tried" in md  # at the edge of its range: said so
    assert (tuned / "tuning.png").read_bytes()[:4] == b"\x89PNG"


def test_only_the_final_runs_evaluate_the_test_split(tuned):
    evaluated = [path.parent.relative_to(tuned) for path in tuned.rglob("metrics.jsonl")
                 if any(json.loads(line)["split"] == "test" for line in path.read_text().splitlines())]
    assert sorted(map(str, evaluated)) == ["lora", "lora-slow"]
    trial_dirs = list((tuned / "tune").glob("*/trial-*"))
    assert len(trial_dirs) == 6
    for trial in trial_dirs:
        assert not (trial / "predictions.jsonl").exists()
        summary = json.loads((trial / "summary.json").read_text())
        assert summary["test"] == {} and summary["validation"]


def test_every_method_gets_the_same_number_of_completed_or_pruned_trials(tuned):
    trials = trials_of(tuned)
    ran = {entry: sum(state in (TrialState.COMPLETE, TrialState.PRUNED) for _, _, state, _ in found)
           for entry, found in trials.items()}
    assert ran == {"lora": 3, "lora-slow": 3}
    # the grid: lr/100, lr, lr x 100 around each method's own learning rate
    assert [p["train.lr"] for _, p, _, _ in trials["lora-slow"]] == pytest.approx([1e-5, 1e-3, 1e-1])


def test_a_killed_tuned_comparison_continues_with_the_same_trials(setup, tuned):
    """One method's search and final run (a method's trials do not depend on the other's)."""
    folder, _, config = setup
    out = folder / "killed"
    command = [sys.executable, "-m", "tunelab.cli", "compare", "--config", str(config), "--output", str(out),
               "--methods", "lora", "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "tune" / "lora" / "trial-01" / "config.yaml").exists():  # the second trial is training
            assert proc.poll() is None and time.monotonic() < deadline, "the comparison ended before the kill"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "lora").exists(), "killed before the final run"
    assert cli.main(["compare", "--config", str(config), "--output", str(out), "--methods", "lora",
                     "--no-progress"]) == 0
    # the same points, states and validation numbers, and the same final run
    assert trials_of(out, entries=["lora"]) == trials_of(tuned, entries=["lora"])
    killed, straight = read_results(out), read_results(tuned)
    assert list(killed) == ["lora"]
    assert {k: v for k, v in killed["lora"].items() if k not in TIMING} == \
        {k: v for k, v in straight["lora"].items() if k not in TIMING}


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("tune, message", [
    ({"search": {"train.lrr": [0.1]}}, "tune: search key 'train.lrr' is not a config key; keys of train here:"),
    ({"trials": 0}, "tune.trials: Input should be greater than or equal to 1"),
    ({"sampler": "grid", "search": {"method.r": [2, 4]}},
     "sampler grid cuts one range into tune.trials values; with several searched keys give them as lists"),
    ({"trials": 3, "sampler": "grid", "lr_factor": 100, "search": {"train.lr": [0.01, 0.1]}},
     "the grid has 2 points and tune.trials is 3"),
    ({"metric": "rougeL"}, "tune.metric: the classification task reports no metric 'rougeL'"),
])
def test_bad_tune_sections_are_one_line(setup, tmp_path, capsys, tune, message):
    folder, config, _ = setup
    raw = yaml.safe_load(config.read_text())
    raw["tune"] = tune
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["compare", "--config", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_methods_own_tune_takes_only_search(setup, tmp_path, capsys):
    folder, config, _ = setup
    raw = yaml.safe_load(config.read_text())
    raw["methods"]["lora"]["tune"] = {"trials": 9}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["compare", "--config", str(path), "--tune", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "methods.lora.tune: unknown key 'trials'; a method's own tune takes: search" in err and err.count("\n") == 1


def test_a_storage_that_cannot_be_opened_is_one_line(setup, tmp_path, capsys):
    folder, config, _ = setup
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    assert cli.main(["compare", "--config", str(config), "--output", str(tmp_path / "out"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage {url!r} cannot be opened") and err.count("\n") == 1


def test_tuning_into_a_directory_of_untuned_runs_is_refused(setup, untuned, capsys):
    folder, _, config = setup
    before = sorted(p.name for p in untuned.iterdir())
    assert cli.main(["compare", "--config", str(config), "--output", str(untuned), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{untuned} holds an untuned comparison; a tuned one needs its own directory" in err
    assert err.count("\n") == 1 and sorted(p.name for p in untuned.iterdir()) == before


# --------------------------------------------------------------------------------------------
# Two workers, one PostgreSQL server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (Debian's postgresql package; .ci/run installs it), started here
    as the postgres user on a free port, with an empty database; its URL."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("Debian's postgresql is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("postgres")
    data = root / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o755)
        top = Path(tempfile.gettempdir())
        for parent in root.parents:  # the server reads its data directory through these (pytest's are 0700)
            if parent.is_relative_to(top) and parent != top:
                os.chmod(parent, os.stat(parent).st_mode | 0o005)
    port = free_port()
    subprocess.run([*as_postgres, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "server.log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tunelab"],
                       check=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tunelab"
    finally:
        subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL)


def test_two_workers_on_postgresql_run_disjoint_runs_whose_union_is_the_comparison(setup, tuned, postgres, tmp_path,
                                                                                  capsys):
    """One method's three trials and its final run, over three worker processes on two machines."""
    folder, _, config = setup
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]  # machine a runs two local worker processes

    def start(out: Path, workers: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "compare", "--config", str(config), "--output",
                                 str(out), "--storage", postgres, "--methods", "lora", "--no-progress", "--workers",
                                 str(workers)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # machine b first, machine a once b trains its first run: both surely get runs to do, however
    # fast either starts (started together, a's two workers once took every run before b asked)
    procs = [start(machines[1], 1)]
    deadline = time.monotonic() + 240
    while not list(machines[1].glob("tune/*/trial-*/config.yaml")):
        assert procs[0].poll() is None and time.monotonic() < deadline, procs[0].communicate()[1].decode()[-2000:]
        time.sleep(0.05)
    procs.insert(0, start(machines[0], 2))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    ran = [{p.relative_to(out).as_posix() for p in out.rglob("summary.json")} for out in machines]
    assert ran[0] and ran[1], "both workers ran runs"
    assert not ran[0] & ran[1], "no run ran twice"
    lora_runs = {p.relative_to(tuned).as_posix() for p in tuned.rglob("summary.json")} - \
        {p.relative_to(tuned).as_posix() for p in tuned.rglob("lora-slow/**/summary.json")}
    assert ran[0] | ran[1] == lora_runs and len(lora_runs) == 4  # lora's three trials and its final run
    # the same trials, with the same values where both ran them out (a pruner's decision depends on which
    # trials had finished, so in parallel a trial the serial run pruned may run out, or the other way round)
    serial, parallel = trials_of(tuned, None, ["lora"]), trials_of(machines[0], postgres, ["lora"])
    for entry in serial:
        assert [(k, p) for k, p, _, _ in serial[entry]] == [(k, p) for k, p, _, _ in parallel[entry]]
        for (_, _, state_a, value_a), (_, _, state_b, value_b) in zip(serial[entry], parallel[entry]):
            if state_a == state_b == TrialState.COMPLETE:
                assert value_a == value_b
    # a third machine finds nothing left: it says so and where the runs are, and succeeds
    late = tmp_path / "machine-c"
    assert cli.main(["compare", "--config", str(config), "--output", str(late), "--storage", postgres,
                     "--methods", "lora", "--no-progress"]) == 0
    assert "every final run of this comparison ran on other workers" in capsys.readouterr().out
    assert not list(late.rglob("summary.json")) and not (late / "report.md").exists()
    # the runs of both machines in one report: the one-worker comparison's numbers
    assert cli.main(["report", *map(str, machines), "--output", str(tmp_path / "together")]) == 0
    together, alone = read_results(tmp_path / "together"), read_results(tuned)
    assert list(together) == ["lora"]
    assert {k: v for k, v in together["lora"].items() if k not in TIMING} == \
        {k: v for k, v in alone["lora"].items() if k not in TIMING}
    trials = (tmp_path / "together" / "report.md").read_text().split("## Trials")[1].split("\n## ")[0]
    assert sum(line.startswith("| lora |") for line in trials.splitlines()) == 3  # both machines'


def test_a_studys_guard_is_the_search_as_set_not_the_defaults_around_it(setup):
    """An option a later tunelab adds (with its default) must not make an earlier study look like
    another search: the guard reads the config with defaults left out. A value set differs."""
    from tunelab import comparison as compare
    from tunelab.jobs import grouped
    from tunelab.tuning import tuning_for

    folder, _, config = setup

    def description(**lora_options) -> str:
        raw = yaml.safe_load(config.read_text())
        raw["methods"]["lora"].setdefault("method", {}).update(lora_options)
        path = folder / "guard.yaml"
        path.write_text(yaml.safe_dump(raw))
        cfg = compare.load_compare_config(path, {}, quick=False)
        plan = compare.plan(cfg, output=str(folder / "guard"))
        return tuning_for(plan.config, "lora", grouped(plan)["lora"][0].config).description()

    plain = description()
    assert description(use_dora=False, scaling="standard") == plain  # defaults, spelled out
    assert description(use_dora=True) != plain
