"""notebooks/weight_landscape.ipynb: committed without outputs, and runs on a report's tables."""

from pathlib import Path

import nbformat
import pytest

from _fake_study import make_study
from wdiv import report

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "weight_landscape.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def execute_notebook(report_dir: Path, monkeypatch, workdir: Path) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel against report_dir; returns the executed copy."""
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("WDIV_REPORT_DIR", str(report_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _outputs(nb, mime):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def test_notebook_runs_on_a_generated_study(tmp_path, monkeypatch):
    root = make_study(tmp_path / "runs", diversity=True)
    assert report.main([str(root), "--no-figures"]) == 0
    (root / "report" / "summary.md").unlink()  # the notebook reads summary.json, never the prose
    nb = execute_notebook(root / "report", monkeypatch, tmp_path)
    assert len(_outputs(nb, "image/png")) >= 6  # dM, three D-vs-level, per-layer, accuracy-vs-diversity
    assert any("falls monotonically" in o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown"))


def test_readme_notebook_command_runs_with_the_dev_extras(tmp_path):
    """README's headless notebook command, as written there, on a generated study's report."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    readme = (NOTEBOOK.parents[1] / "README.md").read_text()
    found = re.search(r"`(WDIV_REPORT_DIR=(\S+) jupyter execute (\S+))`", readme)
    assert found, "README lost its notebook command"
    root = make_study(tmp_path / "runs", diversity=True)
    assert report.main([str(root), "--no-figures"]) == 0
    words = shlex.split(found.group(1))
    env = {**os.environ, "WDIV_REPORT_DIR": str(root / "report"), "MPLBACKEND": "Agg"}
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.run([str(jupyter), *words[2:3], str(NOTEBOOK.parents[1] / words[3])], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
