"""Runs every colabs/*.ipynb top to bottom, as CI does: JDIFF_COLAB_SMOKE=1 (tiny settings), a
temporary workdir (JDIFF_COLAB_WORKDIR), cwd colabs/, the kernel started from this Python (the
test's venv). A notebook added to colabs/ is picked up without changes here.

A failing cell fails the test with nbclient's CellExecutionError, which shows the cell's source
and its traceback. The executed copy goes to the test's tmp_path; the notebook in colabs/ is not
written.
"""

import glob
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))
# Per cell. In SMOKE mode a whole notebook takes one to two minutes on 2 busy CPU cores.
CELL_TIMEOUT_S = 600


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
  with open(path, "rb") as f:
    committed = f.read()
  notebook = nbformat.read(path, as_version=4)
  # The kernel inherits this environment.
  monkeypatch.setenv("JDIFF_COLAB_SMOKE", "1")
  monkeypatch.setenv("JDIFF_COLAB_WORKDIR", str(tmp_path / "workdirs"))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as a user has
  client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": COLABS}},
                          # Plain-text tracebacks in the test's report.
                          extra_arguments=["--InteractiveShell.colors=nocolor"])
  start = time.perf_counter()
  try:
    client.execute()
  finally:
    executed = tmp_path / os.path.basename(path)
    nbformat.write(notebook, str(executed))
    print(f"{os.path.basename(path)}: {time.perf_counter() - start:.1f} s; executed copy: {executed}")
  with open(path, "rb") as f:
    assert f.read() == committed, f"{path} changed while it ran"
