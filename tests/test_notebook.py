"""notebooks/quickstart.ipynb runs headless with the tiny config (and so does the quickstart job)."""

import json
import pathlib

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path):
  nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
  params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  params.source = f"TINY = True\nINSTALL = False\nWORKDIR = {str(tmp_path / 'run')!r}"
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
  methods = {"hierarchical/fixed", "hierarchical/adaptive", "axial/none"}
  assert all(m in text for m in methods)
  rows = json.loads((tmp_path / "run" / "comparison.json").read_text())
  assert set(rows) == methods
  for means in rows.values():
    assert 0 < means["ssim"] <= 1 and means["mse"] > 0 and means["seconds"] > 0
  assert "figures" in text and " 0 figures" not in text
