"""The shape of the code base, kept: no import cycle among tunelab's modules, no file over 400
lines, no function over 60. A reader meets small modules that depend one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "src" / "tunelab").rglob("*.py"))
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_no_import_cycle():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "module-graph")], capture_output=True, text=True)
    assert result.returncode == 0 and "cycles: none" in result.stdout, result.stdout + result.stderr


def test_no_long_file():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_long_function():
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_planner_asks_methods_through_their_protocol():
    """The memory planner reads what a method's modules add from ``AdapterModule.memory_site``
    (tunelab.methods.memory_sites), never from a method's own module: a method it has never heard
    of is planned the same way."""
    methods = ROOT / "src" / "tunelab" / "methods"
    own = {f"tunelab.methods.{p.stem}" for p in methods.glob("*.py")} - {
        "tunelab.methods.__init__", "tunelab.methods.common", "tunelab.methods.memory_sites",
        "tunelab.methods.options"}
    found = {}
    for path in sorted((ROOT / "src" / "tunelab" / "planner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found.update({name: path.name for name in names if name in own})
    assert not found, f"the planner imports method modules: {found}"
