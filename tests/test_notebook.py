"""The guided notebook runs top to bottom without an error (in quick mode), and its French
edition stays in step with the English one."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOK = Path(ROOT) / "notebooks" / "gpt2_from_scratch.ipynb"
EDITIONS = {"en": NOTEBOOK, "fr": NOTEBOOK.with_name("gpt2_from_scratch.fr.ipynb")}


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


@pytest.mark.parametrize("language", EDITIONS)
def test_notebook_is_built_from_its_script(language):
    """The committed .ipynb holds exactly the cells of build_notebook.py (no stale edits, no outputs)."""
    nbformat = pytest.importorskip("nbformat")
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        import build_notebook
    finally:
        sys.path.pop(0)
    committed = nbformat.read(EDITIONS[language], as_version=4)
    built = build_notebook.build(language)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


# gpt2_from_scratch.fr.ipynb is the French edition. Only the execution above runs the English one:
# the French edition's code cells are checked identical here, so running it would test nothing more.
# Its prose is translated, not glossed; what a reader looks up (section numbers, list items,
# `inline code`) stays the same, cell by cell, as for README.fr.md (tests/test_readme.py).

def prose_outline(source):
    """(heading levels and numbers, number of list items, `inline code` spans) of a markdown cell."""
    lines = source.splitlines()
    headings = [re.match(r"#+ (\d+\.)?", line).group(0) for line in lines if line.startswith("#")]
    items = sum(bool(re.match(r"(- |\d+\. )", line)) for line in lines)
    spans = {span for _, span in re.findall(r"(`+)(.+?)\1", source)}
    return headings, items, spans


def english_sentences(source):
    """Lines of English prose of five words or more, `inline code` removed."""
    lines = (re.sub(r"`+.+?`+", "", line).strip() for line in source.splitlines())
    return [line for line in lines if len(line.split()) >= 5]


def test_french_notebook_is_in_step_with_english():
    nbformat = pytest.importorskip("nbformat")
    en, fr = (nbformat.read(path, as_version=4) for path in EDITIONS.values())
    nbformat.validate(fr)
    assert fr.metadata == en.metadata
    assert [c.cell_type for c in fr.cells] == [c.cell_type for c in en.cells], (
        "the French notebook's cells are not the English notebook's cells (number or kinds differ)")
    for i, (e, f) in enumerate(zip(en.cells, fr.cells)):
        where = f"cell {i} ({e.source.splitlines()[0][:50]!r})"
        assert f.id == e.id, where
        if e.cell_type == "code":
            assert f.source == e.source, f"{where}: code differs between the editions"
            continue
        copied = [s for s in english_sentences(e.source) if s in f.source]
        assert not copied, f"{where}: English text left in the French cell: {copied}"
        (en_headings, en_items, en_spans), (fr_headings, fr_items, fr_spans) = map(
            prose_outline, (e.source, f.source))
        assert fr_headings == en_headings, f"{where}: headings {en_headings} in English, {fr_headings} in French"
        assert fr_items == en_items, f"{where}: {en_items} list items in English, {fr_items} in French"
        assert fr_spans == en_spans, (f"{where}: `code` only in English: {en_spans - fr_spans}, "
                                      f"only in French: {fr_spans - en_spans}")
