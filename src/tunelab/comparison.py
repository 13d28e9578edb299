"""``tunelab compare``: every method on the same model, data and budget, then one report.

A comparison is a directory of ordinary run directories, one per method and seed
(``DIR/<name>``, or ``DIR/<name>-seed<k>`` with several seeds), plus ``compare.yaml`` (the
resolved comparison config), ``configs/`` (each run's resolved config), ``logs/`` (each run's
output) and the report (``results.csv``, ``report.md``, ``report.html``, PNG plots).

Each run is its own process, ``python -m tunelab.cli train`` (forked from a warm server that
has imported the libraries once, tunelab.warm): its peak memory is its own (``ru_maxrss`` is
per process), a crash stays inside it, and a killed comparison continues
where it stopped when the same command runs again: finished runs are skipped and an
interrupted run resumes from its last snapshot (``tunelab train --resume``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab import warm
from tunelab.compare_config import CompareConfig
from tunelab.config import (
    RunConfig,
    deep_merge,
    describe_validation_error,
    load_config,
    read_yaml_mapping,
    to_yaml,
    validate_config,
)
from tunelab.errors import UserError
from tunelab.launch import die_with_parent, tunelab_command
from tunelab.methods import METHODS
from tunelab.shipped import CONFIGS, resolve_config
from tunelab.tasks import TASKS

DEFAULT_CONFIG = CONFIGS / "minilm-l6" / "compare-rt-snippets.yaml"
"""`tunelab compare` with no --config: every method on minilm-l6 and rt-snippets."""

RUN_SECTIONS = ("model", "data", "task", "method", "train", "eval")
"""What a method's entry in `methods:` may override."""

QUICK = {"data": {"max_train_examples": 96, "max_eval_examples": 96, "max_validation_examples": 96,
                  "max_test_examples": 96},
         "train": {"epochs": 1, "max_steps": 6, "batch_size": 16, "eval_every_steps": 3},
         "eval": {"inference_examples": 16}}
"""`--quick`: a smoke test of every method, a few steps each (the numbers mean little); inputs
are also cut to QUICK_LENGTH tokens (`task.max_length`, or `task.block_size` for lm), and the
inference cost is timed on 16 test inputs."""
QUICK_LENGTH = 64

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
PROGRESS_PATTERN = re.compile(rb"\|\s*(\d+)/(\d+) \[")  # tqdm's "| 28/63 [" in a run's output


@dataclass
class PlannedRun:
    name: str
    """The row in the report: the method entry's name."""
    seed: int
    run_dir: Path
    config: RunConfig


@dataclass
class Plan:
    directory: Path
    config: CompareConfig
    runs: list[PlannedRun]


# --------------------------------------------------------------------------------------------
# Config


def registered_methods() -> list[str]:
    """Every method a config can name (the registry imports no method module, so no torch
    comes into the comparison's own process, which only starts the runs)."""
    return METHODS.names()


def load_compare_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                        quick: bool = False) -> CompareConfig:
    """Read a comparison YAML (the default comparison when ``path`` is None), apply the
    ``--quick`` preset and ``--section.key`` overrides, validate once."""
    path = resolve_config(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        hint = "" if path != DEFAULT_CONFIG else " (the default comparison ships inside the package: reinstall tunelab)"
        raise UserError(f"comparison config not found: {path}{hint}")
    raw = read_yaml_mapping(path, "model, data, task, train, eval, methods, seeds, output",
                            "run tunelab compare without --config for the default comparison")
    if quick:
        task = raw.get("task") if isinstance(raw.get("task"), dict) else {}
        name = task.get("name", TASKS.default)
        fields = TASKS.options(name).model_fields if name in TASKS.names() else {}
        length = {key: QUICK_LENGTH for key in ("max_length", "block_size") if key in fields}
        raw = deep_merge(raw, {**QUICK, "task": length})
    raw = deep_merge(raw, overrides or {})
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, raw, CompareConfig)) from None
    if cfg.methods is not None and not cfg.methods:
        raise UserError(f"`methods` in {path} is empty; list one or more of: {', '.join(registered_methods())}")
    return cfg


def method_entries(cfg: CompareConfig) -> dict[str, dict[str, Any]]:
    """Run name -> overrides; every registered method with no overrides when `methods` is absent."""
    if cfg.methods is None:
        return {name: {} for name in registered_methods()}
    return {name: dict(entry or {}) for name, entry in cfg.methods.items()}


def known_names(cfg: CompareConfig) -> list[str]:
    entries = list(method_entries(cfg))
    return entries + [m for m in registered_methods() if m not in entries]


def pick_methods(cfg: CompareConfig, methods: str | None) -> list[str]:
    """The entries to run: all of them, or the comma-separated ``--methods`` in its order."""
    if methods is None:
        return list(method_entries(cfg))
    names = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
    known = known_names(cfg)
    if not names:
        raise UserError(f"--methods is empty; name one or more of: {', '.join(known)}")
    for name in names:
        if name not in known:
            raise UserError(f"unknown method {name!r} in --methods; known: {', '.join(known)}")
    return names


def run_config(cfg: CompareConfig, name: str, seed_offset: int, run_dir: Path) -> RunConfig:
    """The full config of one run: shared sections, then the entry's overrides, then the seed."""
    if not NAME_PATTERN.match(name):
        raise UserError(f"method entry {name!r} cannot name a directory; use letters, digits, '-', '_', '.' or '+'")
    entry = {k: v for k, v in method_entries(cfg).get(name, {}).items() if k != "tune"}  # tune: its own search
    bad = [key for key in entry if key not in RUN_SECTIONS]
    if bad:
        raise UserError(f"unknown key {bad[0]!r} in methods.{name}; allowed keys here: {', '.join(RUN_SECTIONS)}, tune")
    for section, value in entry.items():
        if not isinstance(value, dict):
            raise UserError(f"methods.{name}.{section} must be a mapping of keys, e.g. {{train: {{lr: 1.0e-3}}}}")
    shared = cfg.model_dump(mode="json", include={"model", "data", "task", "train", "eval"})
    raw = deep_merge(shared, entry, replace_other_kinds=True)  # an entry's own objective is not the shared one
    method = dict(raw.get("method", {}))
    method.setdefault("name", name)
    if method["name"] not in registered_methods():
        raise UserError(f"methods.{name}: unknown method {method['name']!r}; known: {', '.join(registered_methods())} "
                        f"(or set method.name for a named variant)")
    raw["method"] = method
    raw["output"] = {"dir": str(run_dir), "track": cfg.output.track, "group": run_dir.parent.name}
    try:
        run = validate_config(raw)
    except UserError as exc:
        raise UserError(f"methods.{name}: {exc}") from None
    run.train.seed += seed_offset
    return run


def plan(cfg: CompareConfig, methods: str | None = None, seeds: int | None = None, output: str | None = None,
         quick: bool = False) -> Plan:
    """Every run of the comparison with its resolved config; raises on any bad input."""
    if seeds is not None:
        if not 1 <= seeds <= 100:
            raise UserError(f"--seeds must be between 1 and 100 (got {seeds})")
        cfg = cfg.model_copy(update={"seeds": seeds})
    if output is None:
        safe = lambda s: Path(s).name.replace("/", "_") or "data"  # noqa: E731
        output = cfg.output.dir or str(Path("runs") / f"compare-{safe(cfg.model.name)}-{safe(cfg.data.name)}")
        # A quick comparison never lands in (or is mistaken for) the full one's directory.
        output += "-quick" if quick else ""
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": output})})
    names = pick_methods(cfg, methods)
    # Keep only the picked entries (in the order asked), so compare.yaml says what ran.
    entries = method_entries(cfg)
    cfg = cfg.model_copy(update={"methods": {n: entries.get(n, {}) for n in names}})
    directory = Path(cfg.output.dir)
    runs = []
    for name in names:
        for k in range(cfg.seeds):
            probe = run_config(cfg, name, k, directory / name)
            run_dir = directory / (name if cfg.seeds == 1 else f"{name}-seed{probe.train.seed}")
            probe.output.dir = str(run_dir)
            runs.append(PlannedRun(name, probe.train.seed, run_dir, probe))
        if cfg.tune is not None:
            from tunelab.tuning import tuning_for

            tuning_for(cfg, name, runs[-cfg.seeds].config)  # every searched key and value checked now
    return Plan(directory, cfg, runs)


# --------------------------------------------------------------------------------------------
# Running


def _differences(planned: RunConfig, existing: RunConfig) -> str | None:
    """The first key whose value differs, ignoring the output section."""
    def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a = flat(planned.model_dump(mode="json", exclude={"output"}))
    b = flat(existing.model_dump(mode="json", exclude={"output"}))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key} {b.get(key)!r}, this comparison asks for {a.get(key)!r}"
    return None


def run_state(run: PlannedRun) -> str:
    """`done`, `resume` (a snapshot to continue from), `restart` (started, nothing to keep) or `new`.

    A run made with another config is refused rather than mixed into this comparison."""
    from tunelab import runs as run_files

    if not run.run_dir.exists() or not any(run.run_dir.iterdir()):
        return "new"
    config_file = run.run_dir / "config.yaml"
    if config_file.is_file():
        try:
            existing = load_config(config_file)
        except UserError:
            existing = None
        diff = _differences(run.config, existing) if existing is not None else "an unreadable config.yaml"
        if diff:
            raise UserError(f"{run.run_dir} holds a run made with {diff}; use another --output or remove that run")
    if (run.run_dir / "summary.json").is_file():
        return "done"
    if config_file.is_file() and run_files.has_snapshot(run.run_dir):
        return "resume"
    return "restart"


def check_directory(plan: Plan) -> None:
    """A tuned comparison never shares a directory with an untuned one (or the other way round):
    their runs of one method differ in what chose the learning rate."""
    existing = plan.directory / "compare.yaml"
    if not existing.is_file():
        return
    try:
        before = yaml.safe_load(existing.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return
    tuned_before = bool(isinstance(before, dict) and before.get("tune"))
    if tuned_before != (plan.config.tune is not None):
        kind, wanted = ("a tuned", "untuned") if tuned_before else ("an untuned", "tuned")
        raise UserError(f"{plan.directory} holds {kind} comparison; a {wanted} one needs its own directory: "
                        f"give --output {plan.directory}-{wanted}")


def train_command(run: PlannedRun, state: str, config_file: Path, launcher: str | None = None) -> list[str]:
    base = [*tunelab_command(launcher), "train"]
    if state == "resume":
        return base + ["--resume", str(run.run_dir)]
    command = base + ["--config", str(config_file), "--output.dir", str(run.run_dir)]
    return command + (["--output.overwrite", "true"] if state == "restart" else [])


def run_child(command: list[str], log_file: Path, on_progress=None, env: dict[str, str] | None = None) -> int:
    """Run one training process, its output into ``log_file``; report its step as it goes.
    Forked from the warm server where one is held (tunelab.warm), else started cold."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())

    def on_output(chunk: bytes) -> None:
        found = PROGRESS_PATTERN.findall(chunk)
        if found and on_progress is not None:
            step, total = found[-1]
            on_progress(int(step), int(total))

    prefix = tunelab_command(None)  # `python -m tunelab.cli`: what the warm server's children become
    server = warm.server(env) if command[:len(prefix)] == prefix else None
    code = warm.run(server, command[len(prefix):], env, log_file, on_output) if server is not None else None
    return code if code is not None else run_cold(command, log_file, on_output, env)


def run_cold(command: list[str], log_file: Path, on_output, env: dict[str, str]) -> int:
    """A new process for the command, its output appended to ``log_file`` and to ``on_output``."""
    linux = sys.platform.startswith("linux")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent if linux else None)
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                on_output(chunk)
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def last_error_line(log_file: Path) -> str:
    lines = [line.strip() for line in log_file.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
             .splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "Error", "Traceback")) or "Error:" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


class Bars:
    """Two progress bars: runs of the comparison, and steps of the run in progress."""

    def __init__(self, total_runs: int, enabled: bool):
        from tqdm.auto import tqdm

        self.runs = tqdm(total=total_runs, desc="compare", unit="run", position=0, disable=not enabled,
                         dynamic_ncols=True)
        self.steps = tqdm(total=1, unit="step", position=1, leave=False, disable=not enabled, dynamic_ncols=True)
        self.key = ""

    def start(self, key: str, state: str) -> None:
        self.key = key
        self.runs.set_postfix_str(f"{key} ({'resuming' if state == 'resume' else 'starting'})")
        self.steps.reset(total=1)
        self.steps.set_description(key)

    def step(self, step: int, total: int) -> None:
        if self.steps.total != total:
            self.steps.reset(total=total)
        self.steps.n = step
        self.steps.refresh()
        self.runs.set_postfix_str(f"{self.key} step {step}/{total}", refresh=True)

    def close(self) -> None:
        self.steps.close()
        self.runs.close()


def run_one(plan: Plan, run: PlannedRun, state: str, bars: Bars | None, key: str | None = None,
            env: dict[str, str] | None = None) -> str:
    """Train one planned run in its own process; `done` or `failed: <its last error line>`.
    ``key`` names its config and log files (the run directory's name by default); ``env`` is
    the training process's environment (a tuning trial's link to its study)."""
    from tqdm.auto import tqdm

    from tunelab import runs as run_files

    key = key or run.run_dir.name
    config_file = plan.directory / "configs" / f"{key}.yaml"
    run_files.atomic_write_text(config_file, to_yaml(run.config))
    if bars is not None:
        bars.start(key, state)
    started = time.perf_counter()
    log_file = plan.directory / "logs" / f"{key}.log"
    code = run_child(train_command(run, state, config_file, plan.config.launcher), log_file,
                     bars.step if bars is not None else None, env=env)
    if code == 130:
        raise KeyboardInterrupt
    if code == 0 and (run.run_dir / "summary.json").is_file():
        return "done"
    line = last_error_line(log_file)
    tqdm.write(f"{key} failed after {time.perf_counter() - started:.0f}s (exit {code}): {line}", file=sys.stderr)
    return f"failed: {line}"


def compare_yaml(cfg: CompareConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
