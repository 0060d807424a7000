"""Every notebook's code cells run top to bottom (in-process, no Jupyter kernel needed)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_to_run():
    """Without this, a moved or emptied notebooks/ folder would leave test_notebook_runs
    parametrised over nothing: skipped, and the suite green."""
    assert "quickstart.ipynb" in [p.name for p in NOTEBOOKS], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    code = [cell["source"] for cell in json.loads(path.read_text())["cells"]
            if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    namespace: dict = {}
    for source in code:
        exec(compile("".join(source), f"{path.name}", "exec"), namespace)


def test_readme_test_command_is_what_ci_runs():
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    assert "<!-- ci:test -->" in readme and "ci:test" in (root / ".ci" / "run").read_text()


def test_docstring_examples():
    import doctest

    import vaeanom.estimators.vae

    result = doctest.testmod(vaeanom.estimators.vae)
    assert result.attempted > 0 and result.failed == 0
