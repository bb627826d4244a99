"""examples/quickstart.ipynb runs from top to bottom in a fresh kernel, and its objects display as HTML."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient  # the dev extras hold nbclient, nbformat and ipykernel
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes_and_displays_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # shipped clean
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env={**os.environ})
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("vditscope capture" in page for page in html)  # the capture object's own summary
    assert any("key_norm" in page for page in html)  # the probe's column in the table
    assert any("analyze" in page and "heads.parquet" in page for page in html)  # the reopened run
    listed = notebook.cells[-1].outputs[0]["data"]["text/plain"]  # the first files under figures/
    assert ".png'" in listed and ".svg'" in listed, listed
