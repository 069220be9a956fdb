"""The quickstart notebook executes top to bottom (so it cannot rot)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.timeout(900)
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    # the notebook's work folder inside pytest's tmp_path (cleaned), not a new one in /tmp per run
    monkeypatch.setenv("LANA_QUICKSTART_DIR", str(tmp_path / "work"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the Pareto plot is shown inline"
    assert (tmp_path / "work" / "library.h5").is_file()  # it worked where it was told to
