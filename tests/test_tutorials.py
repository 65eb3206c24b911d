"""The tutorials in tutorials/: stored without outputs, and every one runs top to bottom.

Each notebook runs in a fresh Jupyter kernel (nbclient); an exception in any cell fails the
test, and so does a notebook slower than NOTEBOOK_LIMIT_S. The exercise cells hold skeletons
that raise NotImplementedError, so each check must say "not implemented yet" (a check that
printed PASS would mean a solution had slipped into the notebook).
"""
import json
import time
from pathlib import Path

import nbclient          # in the test extra: the tutorials must run, not be skipped
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
CELL_TIMEOUT_S = 300
NOTEBOOK_LIMIT_S = 600      # each takes well under a minute on 2 quiet cores


def test_the_tutorials_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_"], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    """Outputs and execution counts stay out of git (clear them before committing:
    ``jupyter nbconvert --clear-output --inplace tutorials/*.ipynb``)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(raw["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: cell {i} has timing metadata"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_top_to_bottom(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    start = time.perf_counter()
    client.execute()                      # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    assert seconds < NOTEBOOK_LIMIT_S, f"{path.name} took {seconds:.0f} s"

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no picture"

    checks = [c for c in nb.cells if c.cell_type == "code" and "check_" in c.source
              and "fastconv.exercises import" in c.source]
    assert checks, f"{path.name} has no exercise"
    for cell in checks:
        out = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "not implemented yet" in out, f"{path.name}: {cell.source!r} printed {out!r}"
    assert "PASS" not in text and "FAIL" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exercise_skeletons_match_working_solutions(path):
    """Each skeleton has the signature of a solution that passes its check (the solutions
    live in test_exercises.py, not in the notebooks), and the cell after it checks it."""
    import ast
    import inspect

    import test_exercises as solutions
    cells = nbformat.read(path, as_version=4).cells
    skeletons = 0
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or "raise NotImplementedError" not in cell.source:
            continue
        (fn,) = [n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
        params = [a.arg for a in fn.args.args]
        solution = getattr(solutions, fn.name)
        assert list(inspect.signature(solution).parameters)[:len(params)] == params, fn.name
        check_cell = next(c for c in cells[i + 1:] if c.cell_type == "code")
        assert f"({fn.name})" in check_cell.source and "check_" in check_cell.source
        skeletons += 1
    assert skeletons >= 1
