"""The report layer: case keys, mean/std, the table writer, finished runs and the data cache."""

import csv
import json
import pathlib
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sciimg_jax.core import checkpoint
from sciimg_jax.core import reports

NAMES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-MEN-00417-001")


def key_bits(key):
  return np.asarray(jax.random.key_data(key))


def test_case_key_depends_on_the_name_only():
  base = jax.random.key(3)
  forward = {n: key_bits(reports.case_key(base, n)) for n in NAMES}
  backward = {n: key_bits(reports.case_key(base, n)) for n in reversed(NAMES)}
  for n in NAMES:
    np.testing.assert_array_equal(forward[n], backward[n])
    np.testing.assert_array_equal(
        forward[n], key_bits(jax.random.fold_in(base, zlib.crc32(n.encode()))))
  assert len({forward[n].tobytes() for n in NAMES}) == len(NAMES)
  assert not np.array_equal(forward[NAMES[0]], key_bits(reports.case_key(jax.random.key(4),
                                                                          NAMES[0])))


def test_mean_std_is_the_sample_std():
  values = np.random.default_rng(0).normal(size=7).tolist()
  mean, std = reports.mean_std(iter(values))  # any iterable
  assert mean == float(np.mean(values))
  assert std == float(np.std(values, ddof=1)) and std != float(np.std(values))
  assert isinstance(mean, float) and isinstance(std, float)
  assert reports.mean_std([2.5]) == (2.5, None)
  assert reports.mean_std([]) == (None, None)


ROWS = [dict(method="a|b", psnr=(30.123, 1.456), ssim={"mean": 0.91234, "std": None},
             mmd=1.5e-3, seconds=np.float32(2.0)),
        dict(method="fused", psnr=[31.0, 0.5], ssim=0.8, mmd=None)]
COLUMNS = (reports.Column("method", "method"), reports.Column.mean_std("PSNR (dB)", "psnr", 2),
           reports.Column.mean_std("SSIM", "ssim", 3), reports.Column("MMD", "mmd", ".2e"),
           reports.Column("s", "seconds", ".1f"))


def test_markdown_formats_each_column():
  assert reports.format_markdown(ROWS, COLUMNS).splitlines() == [
      "| method | PSNR (dB) | SSIM | MMD | s |",
      "| --- | --- | --- | --- | --- |",
      "| a\\|b | 30.12 ± 1.46 | 0.912 | 1.50e-03 | 2.0 |",
      "| fused | 31.00 ± 0.50 | 0.800 | - | - |"]


def test_write_table_by_suffix_reads_back(tmp_path):
  reports.write_table(tmp_path / "t.md", ROWS, COLUMNS)
  assert (tmp_path / "t.md").read_text() == reports.format_markdown(ROWS, COLUMNS) + "\n"

  reports.write_table(tmp_path / "t.csv", ROWS, COLUMNS)
  back = list(csv.DictReader((tmp_path / "t.csv").open()))
  assert list(back[0]) == ["method", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "mmd",
                           "seconds"]
  assert back[0] == dict(method="a|b", psnr_mean="30.123", psnr_std="1.456", ssim_mean="0.91234",
                         ssim_std="", mmd="0.0015", seconds="2.0")
  assert back[1] == dict(method="fused", psnr_mean="31.0", psnr_std="0.5", ssim_mean="0.8",
                         ssim_std="", mmd="", seconds="")

  reports.write_table(tmp_path / "t.json", ROWS, COLUMNS)
  assert json.loads((tmp_path / "t.json").read_text()) == [
      dict(method="a|b", psnr=dict(mean=30.123, std=1.456), ssim=dict(mean=0.91234, std=None),
           mmd=1.5e-3, seconds=2.0),
      dict(method="fused", psnr=dict(mean=31.0, std=0.5), ssim=dict(mean=0.8, std=None),
           mmd=None, seconds=None)]


def test_write_table_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "out" / "scores.csv"
  reports.write_table(path, ROWS, COLUMNS)
  before = path.read_text()

  def half_then_fail(self, text):
    with open(self, "w") as f:
      f.write(text[:10])
    raise OSError("disk full")

  with monkeypatch.context() as m:
    m.setattr(pathlib.Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
      reports.write_table(path, ROWS[:1], COLUMNS)
  assert path.read_text() == before  # the old table, whole; no temporary file left
  assert [p.name for p in path.parent.iterdir()] == ["scores.csv"]
  reports.write_table(path, ROWS[:1], COLUMNS)
  assert len(list(csv.DictReader(path.open()))) == 1
  assert [p.name for p in path.parent.iterdir()] == ["scores.csv"]
  with pytest.raises(ValueError, match="written as .md, .csv, .json"):
    reports.write_table(path.with_suffix(".txt"), ROWS, COLUMNS)
  assert [p.name for p in path.parent.iterdir()] == ["scores.csv"]


def test_a_markdown_cell_that_cannot_be_formatted_leaves_nothing(tmp_path):
  with pytest.raises(ValueError):
    reports.write_table(tmp_path / "t.md", [dict(mmd="text")], COLUMNS[3:4])
  assert list(tmp_path.iterdir()) == []


def test_run_is_finished_at_or_after_its_last_step(tmp_path):
  assert not reports.run_is_finished(tmp_path, 1)
  assert not (tmp_path / "checkpoints").exists()  # asking creates nothing
  (tmp_path / "checkpoints").mkdir()
  assert not reports.run_is_finished(tmp_path, 1)  # an empty folder: nothing saved yet
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  tree = {"w": jnp.arange(3.0)}
  ckpt.save(4, tree, tree, None, ml_collections.ConfigDict({"seed": 0}))
  ckpt.wait_until_finished()
  ckpt.close()
  assert reports.run_is_finished(tmp_path, 4) and reports.run_is_finished(tmp_path, 3)
  assert not reports.run_is_finished(tmp_path, 5)
