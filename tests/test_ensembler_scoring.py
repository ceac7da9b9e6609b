"""Diff-Ensembler's file-space scores: the `ensembler_score` job on NIfTI folders, and the
evaluation job's `psnr_file`/`ssim_file` and segmenter ceiling row."""

import csv
import json
import types

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from configs.ensembler import evaluate as evaluate_configs
from configs.ensembler import score as score_configs
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluate_job
from sciimg_jax.ensembler import scoring_job
from sciimg_jax.ensembler import translator as translator_lib

SHAPE = (12, 14, 10)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def brain_volume(seed, shape=SHAPE):
  """A bright textured ellipsoid on a zero background."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
  inside = (grid**2).sum(0) < 0.7
  return (inside * (100.0 + 40.0 * rng.random(shape))).astype(np.float32)


def save(path, volume, affine=AFFINE):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), affine), str(path))


def score_config(predictions, ground_truth, methods=()):
  c = score_configs.get_config("tiny")
  c.evaluate.predictions, c.evaluate.ground_truth = str(predictions), str(ground_truth)
  c.evaluate.methods = tuple(methods)
  return c


def test_scores_perfect_perturbed_and_failing_cases(tmp_path):
  gt_root, pred = tmp_path / "gt", tmp_path / "pred"
  names = [f"BraTS-GLI-0000{i}-000" for i in range(6)]
  truths = {n: brain_volume(i) for i, n in enumerate(names)}
  for n, v in truths.items():
    save(gt_root / n / f"{n}-t2f.nii.gz", v)
  noise = np.random.default_rng(9).normal(0.0, 5.0, SHAPE).astype(np.float32)
  # 0: perfect (flat file); 1: perturbed (per-case folder); 2: missing; 3: other shape;
  # 4: other affine; 5: NaN.
  save(pred / f"{names[0]}-t2f.nii.gz", truths[names[0]])
  save(pred / names[1] / f"{names[1]}-t2f.nii.gz", truths[names[1]] + noise)
  save(pred / f"{names[3]}-t2f.nii.gz", truths[names[3]][..., :-1])
  save(pred / f"{names[4]}-t2f.nii.gz", truths[names[4]], np.diag([2.0, 2.0, 3.0, 1.0]))
  nan = truths[names[5]].copy()
  nan[0, 0, 0] = np.nan
  save(pred / f"{names[5]}-t2f.nii.gz", nan)

  summary = scoring_job.evaluate_folder(score_config(pred, gt_root), tmp_path / "work")
  rows = list(csv.DictReader((tmp_path / "work" / "scores.csv").open()))
  assert [r["case"] for r in rows] == names[:2] and {r["method"] for r in rows} == {"pred"}
  assert float(rows[0]["ssim"]) == pytest.approx(1.0)
  assert float(rows[0]["psnr"]) == np.inf or float(rows[0]["psnr"]) > 100
  assert float(rows[0]["texture"]) == pytest.approx(1.0)
  # 10 log10(1 / MSE) after min-max by the ground truth's range, from the formula
  g = truths[names[1]].astype(np.float64)
  p = (truths[names[1]] + noise).astype(np.float64)
  span = g.max() - g.min()
  expected = 10.0 * np.log10(1.0 / np.mean(((p - g.min()) / span - (g - g.min()) / span)**2))
  assert float(rows[1]["psnr"]) == pytest.approx(expected, rel=1e-6)
  assert 0.0 < float(rows[1]["ssim"]) < 1.0

  on_disk = json.loads((tmp_path / "work" / "summary.json").read_text())
  assert on_disk == summary
  entry = summary["methods"]["pred"]
  assert entry["count"] == 2 and entry["total"] == 6
  assert entry["metrics"]["psnr"]["mean"] == pytest.approx(expected, rel=1e-6)  # finite only
  failed = {f["case"]: f["error"] for f in entry["failed"]}
  assert sorted(failed) == names[2:]
  missing = f"{names[2]}-t2f.nii.gz"
  assert f"{pred / names[2] / missing} and {pred / missing}" in failed[names[2]]
  assert "shape (12, 14, 9) differs" in failed[names[3]]
  assert "affine differs" in failed[names[4]]
  assert "NaN" in failed[names[5]]
  assert not list((tmp_path / "work").glob(".*"))  # no temporary files left behind


def test_methods_score_subfolders_a_row_each(tmp_path, capsys):
  gt_root, outputs = tmp_path / "gt", tmp_path / "outputs"
  name = "BraTS-GLI-00000-000"
  truth = brain_volume(0)
  save(gt_root / name / f"{name}-t2f.nii.gz", truth)
  (gt_root / "BraTS-GLI-00001-000").mkdir()  # a folder without the target: listed
  save(outputs / "good" / name / f"{name}-t2f.nii.gz", truth)
  save(outputs / "smooth" / name / f"{name}-t2f.nii.gz", truth * 0.9)
  summary = scoring_job.evaluate_folder(score_config(outputs, gt_root, ("good", "smooth")),
                                        tmp_path / "work")
  assert list(summary["methods"]) == ["good", "smooth"]
  assert summary["methods"]["smooth"]["metrics"]["ssim"]["mean"] < 1.0
  assert summary["methods"]["good"]["failed"] == [
      {"case": "BraTS-GLI-00001-000", "error": "ground truth: empty case folder"}]
  table = capsys.readouterr().out
  assert "| good | 1 of 2 |" in table and "PSNR (dB)" in table
  with pytest.raises(InputError, match=r"no subfolder for method\(s\) fused .* good, smooth"):
    scoring_job.evaluate_folder(score_config(outputs, gt_root, ("good", "fused")),
                                tmp_path / "work2")


def test_nothing_scored_names_the_folder(tmp_path):
  gt_root, pred = tmp_path / "gt", tmp_path / "pred"
  name = "BraTS-GLI-00000-000"
  save(gt_root / name / f"{name}-t2f.nii.gz", brain_volume(0))
  pred.mkdir()
  with pytest.raises(InputError, match=f"{pred}: no case could be scored"):
    scoring_job.evaluate_folder(score_config(pred, gt_root), tmp_path / "work")
  assert json.loads((tmp_path / "work" / "summary.json").read_text())["methods"]["pred"][
      "count"] == 0


class _Translator:
  """The pooled input as every method's result: the evaluation job without networks."""
  names, mesh = (), None

  def check_method(self, method):
    pass

  def image(self, method, cond, key):
    return np.asarray(cond[..., 0])


def test_evaluation_scores_its_files_and_the_segmenter_ceiling(tmp_path, monkeypatch):
  root = tmp_path / "cases"
  for i in range(2):
    name = f"BraTS-GLI-0000{i}-000"
    truth = brain_volume(i, shape=(26, 30, 22))
    save(root / name / f"{name}-t2f.nii.gz", truth)
    save(root / name / f"{name}-mask-unhealthy.nii.gz", (truth > 125).astype(np.float32))
  c = evaluate_configs.get_config("sr+tiny")
  c.data.cache_dir, c.evaluate.input_root = str(tmp_path / "cache"), str(root)
  c.evaluate.methods, c.evaluate.progress_bar = ("cubic",), False
  segmenter = types.SimpleNamespace(
      config=ml_collections.ConfigDict({"data": {"conditions": ("t2f",)}}))
  monkeypatch.setattr(translator_lib, "slicewise_network",
                      lambda net, data, cond, chunk, mesh: (cond[..., 0] > 0.2).astype(np.float32))
  summary = evaluate_job.evaluate_cases(c, tmp_path / "eval", _Translator(), segmenter)

  assert list(summary) == ["cubic", evaluate_job.CEILING]
  assert "mmd" in summary["cubic"] and "mmd" not in summary[evaluate_job.CEILING]
  assert set(summary[evaluate_job.CEILING]) == {"cases", "dice"}
  rows = list(csv.DictReader((tmp_path / "eval" / "cases.csv").open()))
  ceiling = [r for r in rows if r["method"] == evaluate_job.CEILING]
  assert len(ceiling) == 2 and all(0.0 <= float(r["dice"]) <= 1.0 for r in ceiling)
  assert all(r["psnr"] == r["ssim"] == r["psnr_file"] == "" for r in ceiling)
  methods = [r for r in rows if r["method"] == "cubic"]
  assert all(np.isfinite(float(r["psnr_file"])) and 0 < float(r["ssim_file"]) < 1
             and float(r["psnr"]) > 0 for r in methods)
  # the same scores as the scoring job gives the written files
  scored = scoring_job.evaluate_folder(score_config(tmp_path / "eval" / "outputs", root,
                                                    ("cubic",)), tmp_path / "score")
  assert scored["methods"]["cubic"]["metrics"]["psnr"]["mean"] == pytest.approx(
      summary["cubic"]["psnr_file"][0], rel=1e-9)
  assert "PSNR file (dB)" in evaluate_job.format_table(summary)
