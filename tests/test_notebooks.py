"""Execute the notebooks top to bottom in quick mode, as a user would run them.

Each notebook runs in a fresh kernel with PEPNET_NOTEBOOK_QUICK=1 and a temporary
working directory. Like papermill, the test inserts a cell after the one tagged
"parameters" that points DATA_DIR at a temporary directory, so the two notebooks
never build MovieLens-100K into the same directory at once. The recbole wheel is
read from `<data dir>/downloads` and downloaded there with pip if absent. A cell
that raises fails the test with the cell's traceback.
"""

import glob
import json
import os

import nbclient
import nbformat
import pytest

_NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "notebooks")
_NOTEBOOKS = ("quickstart.ipynb", "gates.ipynb")
# Maximum time of one cell, in seconds. Quick mode trains for well under a minute on
# 2 CPU cores, and the margin covers a machine busy with other tests.
_CELL_TIMEOUT_S = 600


def _read(name):
  return nbformat.read(os.path.join(_NOTEBOOK_DIR, name), as_version=4)


def _execute(name, work_dir, parameters):
  """Execute notebook `name` in `work_dir` with `parameters` injected and return it."""
  notebook = _read(name)
  tagged = [index for index, cell in enumerate(notebook.cells)
            if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
  source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
  injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  notebook.cells.insert(tagged[0] + 1, injected)
  client = nbclient.NotebookClient(
      notebook, timeout=_CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(work_dir)}})
  client.execute()
  return notebook


def _images(notebook):
  return [output for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.outputs if "image/png" in output.get("data", {})]


def _text(notebook):
  chunks = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      chunks.append(output.get("text", ""))
      chunks.append(output.get("data", {}).get("text/plain", ""))
  return "".join(chunks)


@pytest.fixture
def quick_mode(monkeypatch):
  # The kernel is a child process, so it inherits the test's environment.
  monkeypatch.setenv("PEPNET_NOTEBOOK_QUICK", "1")


@pytest.mark.parametrize("name", _NOTEBOOKS)
def test_notebook_committed_without_outputs(name):
  for index, cell in enumerate(_read(name).cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{name} cell {index} has outputs, clear them before committing"
      assert cell.execution_count is None, f"{name} cell {index} has an execution count"


def test_quickstart_runs(tmp_path, quick_mode):
  del quick_mode  # used for its environment variable
  notebook = _execute("quickstart.ipynb", tmp_path,
                      {"DATA_DIR": str(tmp_path / "movielens_100k")})

  model_dir = tmp_path / "runs" / "quickstart" / "model"
  with open(model_dir / "eval" / "test_metrics.json") as handle:
    metrics = json.load(handle)
  for task in ("like", "love"):
    for domain in range(3):
      assert 0.0 <= metrics[f"auc/{task}/domain_{domain}"] <= 1.0
  assert glob.glob(str(model_dir / "export" / "*" / "saved_model.pb"))
  # Quick mode printed its settings and trained on the subset.
  text = _text(notebook)
  assert "QUICK=True EPOCHS=1 MAX_TRAIN_ROWS=20000" in text
  assert "'train': 20000" in text
  assert "SavedModel" in text
  # Training curves and the per-domain AUC bars.
  assert len(_images(notebook)) == 2


def test_gates_runs(tmp_path, quick_mode):
  del quick_mode  # used for its environment variable
  notebook = _execute("gates.ipynb", tmp_path,
                      {"DATA_DIR": str(tmp_path / "movielens_100k")})

  run_dir = tmp_path / "runs" / "gates"
  assert (run_dir / "epnet_gates.png").is_file()
  assert (run_dir / "ppnet_gates.png").is_file()
  assert len(glob.glob(str(run_dir / "epnet_gates_user_*.png"))) == 1
  # The EPNet heatmap, the PPNet histograms, the user's predictions and the user's
  # heatmap.
  assert len(_images(notebook)) == 4
  text = _text(notebook)
  assert "gate values of 3072 test rows" in text
  assert "own domain" in text
