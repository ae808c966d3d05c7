"""The guided notebook runs top to bottom without an error (in quick mode)."""

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOK = Path(ROOT) / "notebooks" / "gpt2_from_scratch.ipynb"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # A kernel spec of our own, so the kernel is this very interpreter with this checkout's source,
    # whatever kernels are (or are not) installed on the machine.
    spec_dir = tmp_path / "kernels" / "gpt2lab-test"
    spec_dir.mkdir(parents=True)
    env = {"PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GPT2LAB_NOTEBOOK_QUICK": "1", "MPLBACKEND": "Agg"}
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpt2lab test", "language": "python", "env": env}))
    km = KernelManager(kernel_name="gpt2lab-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Logits vs transformers" in text and "100.00% of" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # loss curve, attention, per-token losses
    assert not [p for p in tmp_path.iterdir() if p.name != "kernels"]  # the notebook writes no files


def test_notebook_is_built_from_its_script():
    """The committed .ipynb holds exactly the cells of build_notebook.py (no stale edits, no outputs)."""
    nbformat = pytest.importorskip("nbformat")
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        import build_notebook
    finally:
        sys.path.pop(0)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = build_notebook.build()
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
