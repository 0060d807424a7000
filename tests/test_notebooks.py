"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient), at small settings.

A notebook's cell tagged ``parameters`` holds what the tests shrink; a cell with
SMALL's values is injected after it, as papermill does, so CI stays fast and
fails if a notebook fails. The committed notebooks keep the outputs of a full
run (``python notebooks/build.py``).
"""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL = 'EPOCHS = 3'


def test_there_are_notebooks_to_run():
    """Without this, a moved or emptied notebooks/ folder would leave test_notebook_runs
    parametrised over nothing: skipped, and the suite green."""
    assert {"quickstart.ipynb", "tables.ipynb", "images.ipynb", "compression.ipynb",
            "serving.ipynb"} <= {p.name for p in NOTEBOOKS}


def with_small_parameters(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(SMALL))
            break
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(path, tmp_path):
    nb = with_small_parameters(nbformat.read(str(path), as_version=4))
    NotebookClient(nb, timeout=600, startup_timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.outputs if o.output_type == "error"]
    assert not errors


TUTORIALS = [p for p in NOTEBOOKS if p.name != "quickstart.ipynb"]   # built by build.py


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_committed_notebooks_show_their_results(path):
    """GitHub shows what is committed: every code cell of a tutorial carries its outputs."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") for c in cells if "parameters" not in
               c.get("metadata", {}).get("tags", [])), path.name


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- ci:test -->" in readme and "ci:test" in (ROOT / ".ci" / "run").read_text()


def test_docstring_examples():
    import doctest

    import vaeanom.estimators.vae

    result = doctest.testmod(vaeanom.estimators.vae)
    assert result.attempted > 0 and result.failed == 0
