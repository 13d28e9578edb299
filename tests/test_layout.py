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
