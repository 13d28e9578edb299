"""Faults while writing, and damaged files read back.

A full disk (``OSError(ENOSPC)``) is injected at every place tunelab's own code writes a file
(runs.py, files.py, export/, report/, compare), one place per run of the command: the command
must end with one line and exit 2, leave every file it had written whole (no half file, no
``*.tmp``), and the same command run again must finish. A real size-limited tmpfs shows the same
end to end. Damaged checkpoints and snapshots are refused by name, or fallen back from.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import safetensors.torch

from conftest import cli_args
from tunelab import cli, runs

SRC = Path(runs.__file__).parent
WATCHED = ("runs.py", "loop.py", "summary.py", "export", "report", "comparison.py", "jobs.py", "catalog.py",
           "train_command.py", "sweep")
"""Where tunelab's own writes are made (by path under src/tunelab); files.py holds the helpers they share."""


def site() -> str | None:
    """Where tunelab's own code asked for the write, as file:line: the innermost frame inside a
    watched part of tunelab, past the write helpers of files.py that every site shares. Marked
    ``(own)`` where tunelab writes the file itself, not a library it calls (Optuna's journal)."""
    helper = False
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if SRC in path.parents:
            relative = path.relative_to(SRC).as_posix()
            if relative == "files.py":
                helper = True
                continue
            if not relative.startswith(WATCHED):
                return None
            own = helper or relative.startswith(("runs.py", "export"))
            return f"{relative}:{frame.lineno}" + (" (own)" if own else "")
    return None


class Faults:
    """Counts the write calls made from watched sites; raises ENOSPC at the one named ``fail_at``."""

    def __init__(self, fail_at: str | None = None):
        self.fail_at, self.seen, self.failed = fail_at, [], False

    def check(self, filename) -> None:
        where = site()
        if where is None:
            return
        if where not in self.seen:
            self.seen.append(where)
        if where == self.fail_at and not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))


@contextmanager
def injected(monkeypatch, faults: Faults):
    real_open, real_replace, real_save = builtins.open, os.replace, safetensors.torch.save_file

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            faults.check(file)
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        faults.check(dst)
        return real_replace(src, dst, *args, **kwargs)

    def save_file(tensors, filename, *args, **kwargs):
        faults.check(filename)
        return real_save(tensors, filename, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", open_)
        m.setattr(os, "replace", replace)
        m.setattr(runs, "save_file", save_file)
        yield faults


def whole(folder: Path) -> None:
    """Nothing half-written: no temporary file, every JSON parses, every safetensors file loads."""
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())
    for path in folder.rglob("*.safetensors"):
        safetensors.torch.load_file(str(path))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sites_of(monkeypatch, command: list[str]) -> list[str]:
    with injected(monkeypatch, Faults()) as faults:
        assert cli.main(command) == 0
    assert faults.seen
    return faults.seen


def test_a_full_disk_at_every_write_of_train_leaves_a_run_that_resumes(tiny_run_config, tmp_path, monkeypatch, capsys):
    cfg = dict(tiny_run_config, train={**tiny_run_config["train"], "eval_every_steps": 3})
    clean = tmp_path / "clean"
    sites = sites_of(monkeypatch, ["train", *cli_args({**cfg, "output": {"dir": str(clean)}})])
    expected = json.loads((clean / "summary.json").read_text())["test"]
    assert any(s.startswith("runs.py") for s in sites) and any(s.startswith("train_command.py") for s in sites)
    for k, where in enumerate(sites):
        run_dir = tmp_path / f"fault-{k}"
        with injected(monkeypatch, Faults(where)) as faults:
            code = cli.main(["train", *cli_args({**cfg, "output": {"dir": str(run_dir)}})])
        assert faults.failed and code == 2, where
        line = one_line(capsys)
        assert "no space left on the device holding" in line and "the last good files are intact" in line, line
        whole(run_dir)
        # the same run, continued (or started again where nothing was kept), ends where the clean one did
        resume = ["train", "--resume", str(run_dir)] if (run_dir / "config.yaml").is_file() and \
            runs.has_snapshot(run_dir) else ["train", *cli_args({**cfg, "output": {"dir": str(run_dir),
                                                                                    "overwrite": True}})]
        assert cli.main(resume) == 0, (where, capsys.readouterr().err)
        assert json.loads((run_dir / "summary.json").read_text())["test"] == pytest.approx(expected), where
    capsys.readouterr()


def test_a_full_disk_at_every_write_of_export_and_report_keeps_the_run(tiny_run_config, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *cli_args({**tiny_run_config, "output": {"dir": str(run_dir)}})]) == 0
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for command, target in [(["export", str(run_dir), "--format", "merged", "--output", "{}"], "export"),
                            (["report", str(run_dir), "--output", "{}"], "report")]:
        sites = sites_of(monkeypatch, [c.format(tmp_path / f"{target}-clean") for c in command])
        for k, where in enumerate(sites):
            out = tmp_path / f"{target}-{k}"
            with injected(monkeypatch, Faults(where)) as faults:
                code = cli.main([c.format(out) for c in command])
            assert faults.failed and code == 2, where
            assert "no space left" in one_line(capsys)
            if out.exists():
                whole(out)
            assert cli.main([c.format(out) for c in command]) == 0, where  # again, with room: it finishes
        capsys.readouterr()
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before, "the run itself is never touched"


def test_a_full_disk_during_a_comparison_and_a_sweep_continues_when_run_again(tmp_path, tiny_bert_dir, sentiment_csv,
                                                                             monkeypatch, capsys):
    import yaml

    shared = {"model": {"name": str(tiny_bert_dir)}, "data": {"name": str(sentiment_csv)}, "task": {"max_length": 32},
              "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "max_steps": 2}, "eval": {"batch_size": 16}}
    compare_yaml = tmp_path / "compare.yaml"
    compare_yaml.write_text(yaml.safe_dump({**shared, "methods": {"head": {}}}))
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text(yaml.safe_dump({**shared, "method": {"name": "head"}, "search": {"train.lr": [1e-2]}}))
    for command in (["compare", "--config", str(compare_yaml), "--no-progress", "--output"],
                    ["sweep", "--config", str(sweep_yaml), "--no-progress", "--output"]):
        out = tmp_path / command[0]
        argv = [*command, str(out)]
        sites = [s for s in sites_of(monkeypatch, argv) if s.endswith("(own)")]  # trains once: then only writes
        report = [s for s in sites if "report" in s]
        assert report
        # every write of the command's own, and one of its report's (the report's every write: the test above)
        sites = [s for s in sites if "report" not in s] + report[:1]
        for where in sites:
            with injected(monkeypatch, Faults(where)) as faults:
                code = cli.main(argv)
            if not faults.failed:
                continue  # a write of the first run only (the training's): the faults of train cover it
            assert code == 2, where
            assert "no space left" in one_line(capsys)
            whole(out)
            assert cli.main(argv) == 0, where
            assert (out / ("report.md" if command[0] == "compare" else "sweep.md")).is_file()
        capsys.readouterr()


# --------------------------------------------------------------------------------------------
# A real full disk: a 1 MB tmpfs


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the injected faults above still run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_line_and_the_run_continues_with_room(tiny_run_config, small_disk, tmp_path, capsys):
    filler = small_disk / "filler"
    run_dir = small_disk / "run"
    cfg = {**tiny_run_config, "train": {**tiny_run_config["train"], "eval_every_steps": 2},
           "output": {"dir": str(run_dir)}}
    # leave a little room: the config and the first records fit, a snapshot does not
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 48 * 1024))
    assert cli.main(["train", *cli_args(cfg)]) == 2
    line = one_line(capsys)
    assert f"(mounted at {small_disk})" in line and "no space left" in line
    whole(run_dir)
    filler.unlink()
    resume = ["train", "--resume", str(run_dir)] if runs.has_snapshot(run_dir) else \
        ["train", *cli_args({**cfg, "output": {"dir": str(run_dir), "overwrite": True}})]
    assert cli.main(resume) == 0
    assert (run_dir / "summary.json").is_file()


# --------------------------------------------------------------------------------------------
# Damaged files read back


@pytest.fixture
def finished_run(tiny_run_config, tmp_path) -> Path:
    cfg = {**tiny_run_config, "train": {**tiny_run_config["train"], "eval_every_steps": 3}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    return Path(cfg["output"]["dir"])


@pytest.mark.parametrize("damage", ["truncated", "not safetensors", "other tensors"])
@pytest.mark.parametrize("command", [["eval"], ["predict", "fine movie"], ["export", "--format", "merged",
                                                                             "--output", "OUT"]])
def test_a_damaged_checkpoint_is_named_before_it_is_used(finished_run, tmp_path, capsys, damage, command):
    checkpoint = finished_run / "checkpoint" / "model.safetensors"
    data = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "not safetensors":
        checkpoint.write_bytes(b"PK\x03\x04 this is a zip file, not tensors")
    else:  # a whole, valid file, but not the one the run wrote
        tensors = safetensors.torch.load_file(str(checkpoint))
        safetensors.torch.save_file({k: v + 1 for k, v in tensors.items()}, str(checkpoint))
    argv = [command[0], str(finished_run), *[str(tmp_path / "out") if c == "OUT" else c for c in command[1:]]]
    capsys.readouterr()
    assert cli.main(argv) == 2
    line = one_line(capsys)
    assert line == (f"error: {checkpoint} is damaged (sha256 differs from summary.json): re-run or restore it")
    assert not (tmp_path / "out").exists()


def test_a_run_without_recorded_checksums_still_refuses_a_broken_file(finished_run, capsys):
    summary = json.loads((finished_run / "summary.json").read_text())
    summary.pop("checksums")  # as a run written before checksums
    (finished_run / "summary.json").write_text(json.dumps(summary))
    meta = json.loads((finished_run / "checkpoint" / "meta.json").read_text())
    meta.pop("sha256")
    (finished_run / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    checkpoint = finished_run / "checkpoint" / "model.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(["eval", str(finished_run)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"error: {checkpoint} is damaged (not a complete safetensors file")


def test_a_damaged_snapshot_falls_back_to_the_one_before(tiny_run_config, tmp_path, monkeypatch, capsys):
    from tunelab import loop as train_module

    cfg = {**tiny_run_config, "train": {**tiny_run_config["train"], "eval_every_steps": 2}}
    run_dir = Path(cfg["output"]["dir"])
    real = train_module.validate
    calls = []

    def stop_after_two(loop, state):  # the run is killed after its second snapshot
        stop = real(loop, state)
        calls.append(state.step)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(train_module, "validate", stop_after_two)
    assert cli.main(["train", *cli_args(cfg)]) == 130
    monkeypatch.setattr(train_module, "validate", real)
    assert (run_dir / runs.STATE).is_dir() and (run_dir / runs.PREVIOUS_STATE).is_dir()
    optim = run_dir / runs.STATE / "optim.pt"
    optim.write_bytes(optim.read_bytes()[:-10])
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{optim} is damaged (sha256 differs from {run_dir / runs.STATE / runs.CHECKSUMS}); resuming from the " \
           f"snapshot before it" in err
    assert (run_dir / "summary.json").is_file()

    # both damaged: one line, and what to do
    other = tmp_path / "other"
    monkeypatch.setattr(train_module, "validate", stop_after_two)
    calls.clear()
    assert cli.main(["train", *cli_args({**cfg, "output": {"dir": str(other)}})]) == 130
    monkeypatch.setattr(train_module, "validate", real)
    for folder in (runs.STATE, runs.PREVIOUS_STATE):
        path = other / folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:50])
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(other)]) == 2
    assert ("and there is no good snapshot before it: start the run again with --output.overwrite true"
            in one_line(capsys))


def test_bad_paths_are_one_line(tiny_run_config, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for target, phrase in [(a_file, "is a file, not a directory"),
                           (a_file / "run", f"is under {a_file}, which is a file")]:
        assert cli.main(["train", *cli_args({**tiny_run_config, "output": {"dir": str(target)}})]) == 2
        assert phrase in one_line(capsys)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert cli.main(["train", "--config", str(empty)]) == 2
    assert one_line(capsys) == (f"error: config file {empty} is empty; give its sections (model, data, ...), or to "
                                "train the built-in defaults (minilm-l6, rt-snippets, LoRA) run without --config")
    assert cli.main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory; give a YAML file" in one_line(capsys)
    assert cli.main(["train", *cli_args({**tiny_run_config, "train": {"lr": "inf"}})]) == 2
    assert one_line(capsys) == "error: train.lr: Input should be a finite number (got inf)"


@pytest.mark.parametrize("content, phrase", [
    (b"", "is empty; give a file with rows"),
    (b"text,label\n", "has a header and no rows"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "is not a text file (it holds binary data)"),
])
def test_bad_input_files_are_one_line(finished_run, tiny_run_config, tmp_path, capsys, content, phrase):
    path = tmp_path / "texts.csv"
    path.write_bytes(content)
    capsys.readouterr()
    assert cli.main(["predict", str(finished_run), "--file", str(path)]) == 2
    assert phrase in one_line(capsys)
    cfg = {**tiny_run_config, "data": {"name": str(path)}, "output": {"dir": str(tmp_path / "run2")}}
    assert cli.main(["train", *cli_args(cfg)]) == 2
    assert phrase in one_line(capsys) and not (tmp_path / "run2").exists()

