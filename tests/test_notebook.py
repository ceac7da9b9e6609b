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
  methods = {"hierarchical/fixed/mean2", "hierarchical/fixed/sample", "biharmonic/none",
             "harmonic/none"}
  methods |= {f"{m} [box]" for m in methods}  # again on held-out masks of the box family
  assert all(m in text for m in methods)
  rows = json.loads((tmp_path / "run" / "comparison.json").read_text())
  assert set(rows) == methods
  for name, stats in rows.items():  # the spread of samples: in the mean's rows only
    assert ("spread" in stats) == ("mean2" in name), name
    if "mean2" in name:
      assert stats["spread"]["mean"] >= 0 and stats["calibration"]["mean"] >= 0
  assert rows["biharmonic/none"]["mse"] != rows["biharmonic/none [box]"]["mse"]
  for stats in rows.values():
    assert 0 < stats["ssim"]["mean"] <= 1 and stats["mse"]["mean"] > 0
    assert stats["texture"]["mean"] > 0
  for name, stats in rows.items():
    one_sample = "/sample" in name  # 'hierarchical/fixed/sample' and '... [box]'
    assert one_sample == ("seconds" not in stats)
    assert one_sample or stats["seconds"]["mean"] > 0
  assert "figures" in text and " 0 figures" not in text


def _install_cell(nb):
  return next(c.source for c in nb.cells if c.source.startswith("if INSTALL:"))


def test_notebook_installs_only_from_the_checkout_or_a_set_source(tmp_path, monkeypatch):
  nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
  assert "github.com" not in json.dumps(nb)  # no invented repository address
  import subprocess  # noqa: PLC0415
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  monkeypatch.chdir(ROOT / "notebooks")
  exec(_install_cell(nb), {"INSTALL": True, "SOURCE": ""})  # noqa: S102
  assert calls[-1][-2:] == ["-e", str(ROOT)]
  monkeypatch.chdir(tmp_path)  # not a checkout, nothing set: a clear stop, no install
  try:
    exec(_install_cell(nb), {"INSTALL": True, "SOURCE": ""})  # noqa: S102
    raise AssertionError("expected SystemExit")
  except SystemExit as e:
    assert "set SOURCE" in str(e)
  assert len(calls) == 1
  exec(_install_cell(nb), {"INSTALL": True, "SOURCE": "my-index/sciimg_jax.whl"})  # noqa: S102
  assert calls[-1][-1] == "my-index/sciimg_jax.whl" and "-e" not in calls[-1]


def test_compare_entries_are_parsed_and_checked():
  from sciimg_jax.inpainting import quickstart  # noqa: PLC0415
  from sciimg_jax.core.errors import InputError  # noqa: PLC0415
  assert quickstart.parse_entry("axial/none") == ("axial", "none", 1)
  assert quickstart.parse_entry("hierarchical/fixed/mean4") == ("hierarchical", "fixed", 4)
  for bad in ("axial", "axial/none/mean1", "axial/none/mean", "axial/none/x4", "a/b/mean2/c"):
    try:
      quickstart.parse_entry(bad)
      raise AssertionError(f"{bad!r} was accepted")
    except InputError as e:
      assert "is not 'method/resampling' or 'method/resampling/meanN'" in str(e)
