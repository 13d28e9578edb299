"""The installable package: a wheel built from the project carries its configs, and the installed
``tunelab`` (not the editable one of this checkout) compares methods from a directory that is not
a clone.

The fresh environment gets no dependencies of its own: a ``.pth`` line puts this environment's
site-packages on its path (torch and the rest, no download). A directory named in a ``.pth`` is
only appended to ``sys.path``; the ``.pth`` files inside it (this checkout's editable
``__editable__.tunelab-*.pth``) are not processed, so ``import tunelab`` finds the wheel's copy.
The embedded model and data come from the same ``$TUNELAB_CACHE`` (the environment is inherited).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import UserError
from tunelab.shipped import CONFIGS, resolve_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def run(*words, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(w) for w in words], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{words}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources: an in-tree build would leave build/ in the checkout."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("tunelab-*.whl")
    return wheel


def install(wheel: Path, tmp: Path) -> Path:
    """A fresh environment holding the wheel; this environment's packages are reached through a
    ``.pth`` written only after pip ran (else pip would see this checkout's tunelab as installed)."""
    env = tmp / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    return install(build_wheel(tmp), tmp)


def test_the_wheel_carries_every_shipped_config(installed):
    assert len(SHIPPED) > 40 and "minilm-l6/compare-rt-snippets.yaml" in SHIPPED  # precondition
    python = installed / "bin" / "python"
    where = run(python, "-c", "import tunelab.shipped as s; print(s.__file__); print(s.CONFIGS)").stdout.split()
    assert Path(where[0]).is_relative_to(installed), f"the editable tunelab was imported: {where[0]}"
    found = sorted(p.relative_to(where[1]).as_posix() for p in Path(where[1]).rglob("*.yaml"))
    assert found == SHIPPED


def test_installed_tunelab_compares_from_another_directory(installed, tmp_path):
    """The default comparison (no --config), cut to one method by --quick --methods head: ~20 s."""
    environ = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    tunelab = installed / "bin" / "tunelab"
    assert "--quick" in run(tunelab, "compare", "--help", cwd=tmp_path, env=environ).stdout
    params = run(tunelab, "params", "--config", "configs/minilm-l6/rt-snippets-lora.yaml", cwd=tmp_path, env=environ)
    assert "111,362" in params.stdout  # LoRA r=8 on query, key, value of MiniLM-L6, plus the head
    run(tunelab, "compare", "--quick", "--methods", "head", "--no-progress", "--output", "cmp",
        cwd=tmp_path, env=environ)
    report = tmp_path / "cmp" / "report.md"
    assert report.is_file() and "| head |" in report.read_text()


def test_a_relative_name_falls_back_to_the_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("configs/lstm/rt-snippets.yaml") == CONFIGS / "lstm" / "rt-snippets.yaml"
    assert resolve_config("lstm/rt-snippets.yaml") == CONFIGS / "lstm" / "rt-snippets.yaml"
    (tmp_path / "configs" / "lstm").mkdir(parents=True)
    (tmp_path / "configs" / "lstm" / "rt-snippets.yaml").write_text("model: {name: lstm}\n")
    assert resolve_config("configs/lstm/rt-snippets.yaml") == Path("configs/lstm/rt-snippets.yaml")  # a file here wins
    with pytest.raises(UserError, match="^config file not found: configs/lstm/nope.yaml$"):
        load_config("configs/lstm/nope.yaml")
