"""docs/notebooks/quickstart.ipynb runs end to end, every cell, on the real embedded model and data:
a cell that raises fails the suite, so the notebook cannot rot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "docs" / "notebooks" / "quickstart.ipynb"


@pytest.mark.e2e
def test_the_quickstart_notebook_runs_and_shows_the_report(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits this process's environment (the shared artifact cache, the hub offline),
    # its `python` is this one (ipykernel's kernel spec names no path), and it works in tmp_path.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = {i: cell.outputs for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    shown = [out for cell in outputs.values() for out in cell]
    assert not [out for out in shown if out.output_type == "error"]
    html = [out["data"]["text/html"] for out in shown if "text/html" in out.get("data", {})]
    assert any("<table" in h and "data:image/png;base64" in h and ">lora<" in h and ">head<" in h for h in html)
    assert any("'probabilities'" in out.get("data", {}).get("text/plain", "") for out in shown)
    assert (tmp_path / "runs" / "notebook-quick" / "report.html").is_file()
    assert (tmp_path / "runs" / "notebook-bitfit" / "summary.json").is_file()
