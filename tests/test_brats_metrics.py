"""Tests of the challenge scores, the 3D SSIM, the seam measure and the evaluation job."""

import csv
import json

import numpy as np
import pytest
from skimage import metrics as skmetrics

from configs.inpainting import evaluate as inpaint_evaluate
from sciimg_jax.inpainting import brats_metrics as bm
from sciimg_jax.inpainting import scoring_job
from sciimg_jax.core import image_metrics
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance

# Produced once, not at test time, by running the challenge's `generate_metrics` steps
# (github.com/BraTS-inpainting/inpainting, inpainting/challenge_metrics_2023.py) on
# `toy_case()` with torch 2.13.0+cpu and torchmetrics 1.9.0: tensors [1, X, Y, Z];
# prediction and target times the healthy mask, normalised with np.percentile(voided,
# [0.5, 99.5]) (lower bound >= 0), clipped and scaled to [0, 1];
# StructuralSimilarityIndexMeasure(return_full_image=True) full map averaged over the mask;
# MeanSquaredError and PeakSignalNoiseRatio(data_range=1.0) on the masked voxels; ssim_3d
# is the same SSIM on [1, 1, X, Y, Z] tensors (torchmetrics' 3D SSIM).
TORCHMETRICS_REFERENCE = dict(ssim=0.6224814165253286, psnr=16.043304443359375,
                              mse=0.024869637563824654, ssim_3d=0.8431942462521114)


def toy_case(shape=(16, 16, 12), seed=0):
  """(prediction, ground truth, voided, healthy mask) as float32, with a zero background."""
  rng = np.random.default_rng(seed)
  x, y, z = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
  gt = 100 + 40 * np.sin(3 * x + 2 * y) * np.cos(4 * z) + 5 * rng.standard_normal(shape)
  gt[:2] = 0.0
  healthy = np.zeros(shape)
  healthy[4:12, 6:16, 0:8] = 1.0  # touches two borders
  voided = gt * (1.0 - healthy)
  pred = gt + healthy * 25.0 * rng.standard_normal(shape) + 3.0 * healthy
  return [a.astype(np.float32) for a in (pred, gt, voided, healthy)]


def test_official_scores_match_torchmetrics_reference():
  scores = bm.official_scores(*toy_case())
  assert scores["ssim"] == pytest.approx(TORCHMETRICS_REFERENCE["ssim"], abs=1e-9)
  # torchmetrics keeps the MSE/PSNR states in float32 (ours: float64). MSE: its float64 sum
  # rounded into the state, then / count: 2 roundings. PSNR: those, log, log(10), 10 / log(10)
  # and the product: 6 (no cancellation: relative).
  assert scores["mse"] == pytest.approx(TORCHMETRICS_REFERENCE["mse"],
                                        rel=float32_tolerance(1.0, 2))
  assert scores["psnr"] == pytest.approx(TORCHMETRICS_REFERENCE["psnr"],
                                         rel=float32_tolerance(1.0, 6))
  assert bm.ssim_3d(*toy_case()) == pytest.approx(TORCHMETRICS_REFERENCE["ssim_3d"], abs=1e-9)


def test_plane_ssim_equals_skimage_per_yz_plane():
  pred, gt, mask = bm.normalized_in_mask(*toy_case(seed=3))
  data_range = max(np.ptp(pred), np.ptp(gt))
  ours = bm.ssim_map(pred, gt, data_range, axes=(1, 2))
  # torch's 'reflect' padding repeats no edge voxel (np.pad 'reflect'); skimage filters
  # with scipy's 'reflect', which does. Padding each plane by the window radius ourselves
  # leaves skimage's own border handling outside the cropped map, so the maps are equal
  # everywhere, borders included.
  r = image_metrics.RADIUS
  for i in range(pred.shape[0]):
    a, b = (np.pad(v[i], r, mode="reflect") for v in (pred, gt))
    _, full = skmetrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=data_range, full=True)
    np.testing.assert_allclose(ours[i], full[r:-r, r:-r], atol=1e-10)
  # Without that padding only the interior agrees: a check that the padding mode matters.
  _, full = skmetrics.structural_similarity(
      pred[6], gt[6], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=data_range, full=True)
  np.testing.assert_allclose(ours[6][r:-r, r:-r], full[r:-r, r:-r], atol=1e-10)
  assert not np.allclose(ours[6], full, atol=1e-6)


def test_ssim_is_planewise_not_3d():
  pred, gt, voided, mask = toy_case()
  # Shuffling the (Y, Z) planes along X leaves the plane-wise SSIM map the same per plane.
  order = np.random.default_rng(0).permutation(pred.shape[0])
  shuffled = bm.official_scores(pred[order], gt[order], voided, mask[order])
  assert shuffled["ssim"] == pytest.approx(bm.official_scores(pred, gt, voided, mask)["ssim"])
  assert bm.ssim_3d(pred[order], gt[order], voided, mask[order]) != pytest.approx(
      bm.ssim_3d(pred, gt, voided, mask), abs=1e-4)


def test_identity_scores():
  _, gt, voided, mask = toy_case()
  scores = bm.official_scores(gt, gt, voided, mask)
  assert scores["ssim"] == pytest.approx(1.0, abs=1e-12)
  assert scores["mse"] == 0.0
  assert scores["psnr"] == np.inf  # torchmetrics PSNR without epsilon, as the challenge.
  assert bm.ssim_3d(gt, gt, voided, mask) == pytest.approx(1.0, abs=1e-12)


def test_normalisation_uses_voided_percentiles_and_mask():
  pred, gt, voided, mask = toy_case()
  scores = bm.official_scores(pred, gt, voided, mask)
  # Outside the healthy mask nothing counts.
  noisy = pred + (1 - mask) * 50 * np.random.default_rng(1).standard_normal(pred.shape)
  assert bm.official_scores(noisy, gt, voided, mask) == pytest.approx(scores)
  # Rescaling all three volumes together changes nothing (range from the voided image).
  assert bm.official_scores(3 * pred, 3 * gt, 3 * voided, mask) == pytest.approx(scores)
  # Rescaling only the voided image changes the [0, 1] scale, hence MSE.
  assert bm.official_scores(pred, gt, 2 * voided, mask)["mse"] < scores["mse"] / 2


def test_bad_inputs_raise_input_error():
  pred, gt, voided, mask = toy_case()
  with pytest.raises(InputError, match="healthy mask is empty"):
    bm.official_scores(pred, gt, voided, np.zeros_like(mask))
  bad = pred.copy()
  bad[5, 5, 5] = np.nan
  with pytest.raises(InputError, match="NaN"):
    bm.official_scores(bad, gt, voided, mask)
  with pytest.raises(InputError, match="shape"):
    bm.official_scores(pred[1:], gt, voided, mask)


def test_discontinuity():
  pred, gt, _, mask = toy_case()
  same = bm.discontinuity(gt, gt, mask)
  assert same == dict(x=1.0, y=1.0, z=1.0, mean=1.0)
  # Slice-wise offsets along z (an axial 2D model's seams) raise only the z score.
  offsets = 10 * np.random.default_rng(2).standard_normal(gt.shape[2])
  seams = bm.discontinuity(gt + offsets[None, None, :], gt, mask)
  assert seams["z"] > 1.5
  assert seams["x"] == pytest.approx(1.0) and seams["y"] == pytest.approx(1.0)
  assert seams["mean"] == pytest.approx((seams["x"] + seams["y"] + seams["z"]) / 3)
  # Smoothing along z lowers it below 1.
  smooth = bm.discontinuity((gt + np.roll(gt, 1, 2) + np.roll(gt, -1, 2)) / 3, gt, mask)
  assert smooth["z"] < 1.0


def test_texture_ratio_known_answers():
  x, y, z = np.meshgrid(*(np.arange(12.0),) * 3, indexing="ij")
  gt = 3.0 * x + 4.0 * y                 # |gradient| = 5 everywhere
  mask = np.zeros(gt.shape, np.uint8)
  mask[3:9, 3:9, 3:9] = 1
  assert image_metrics.texture_ratio(gt, gt, mask) == pytest.approx(1.0)
  assert image_metrics.texture_ratio(0.5 * gt, gt, mask) == pytest.approx(0.5)   # a flatter ramp
  assert image_metrics.texture_ratio(7.0 * gt, 7.0 * gt, mask) == pytest.approx(1.0)  # scale-free
  # A constant fill of the hole has no gradient inside, except where it meets the ramp.
  flat = np.where(mask > 0, gt[mask > 0].mean(), gt)
  inner = np.zeros_like(mask)
  inner[4:8, 4:8, 4:8] = 1
  assert image_metrics.texture_ratio(flat, gt, inner) == pytest.approx(0.0, abs=1e-12)
  # Noise added inside the mask raises it above 1; a flat ground truth gives NaN.
  noisy = gt + 20.0 * np.random.default_rng(0).standard_normal(gt.shape) * mask
  assert image_metrics.texture_ratio(noisy, gt, mask) > 2.0
  assert np.isnan(image_metrics.texture_ratio(gt, np.ones_like(gt), mask))


def _write_case(root, name, seed, affine):
  pred, gt, voided, mask = toy_case(seed=seed)
  case_dir = root / name
  for key, vol in (("t1n", gt), ("t1n-voided", voided), ("mask-healthy", mask),
                   ("mask", mask)):
    nifti.save_volume(case_dir / f"{name}-{key}.nii.gz", vol, affine)
  return pred


def test_evaluate_folder(tmp_path):
  affine = np.diag([1.0, 1.0, 1.0, 1.0])
  gt_root, pred_root, workdir = tmp_path / "gt", tmp_path / "pred", tmp_path / "work"
  names = [f"BraTS-GLI-0000{i}-000" for i in range(5)]
  preds = {n: _write_case(gt_root, n, seed=i, affine=affine) for i, n in enumerate(names)}
  # 0: per-case folder; 1: flat file; 2: missing; 3: wrong affine; 4: NaN.
  nifti.save_volume(pred_root / names[0] / f"{names[0]}-t1n-inference.nii.gz",
                    preds[names[0]], affine)
  nifti.save_volume(pred_root / f"{names[1]}-t1n-inference.nii.gz", preds[names[1]], affine)
  nifti.save_volume(pred_root / f"{names[3]}-t1n-inference.nii.gz", preds[names[3]],
                    np.diag([2.0, 1.0, 1.0, 1.0]))
  nan_pred = preds[names[4]].copy()
  nan_pred[0, 0, 0] = np.nan
  nifti.save_volume(pred_root / f"{names[4]}-t1n-inference.nii.gz", nan_pred, affine)
  (pred_root / "timings.json").write_text(json.dumps({names[0]: 1.5, names[1]: 2.5}))

  config = inpaint_evaluate.get_config("tiny")
  assert config.job == "inpaint_evaluate"
  config.evaluate.predictions = str(pred_root)
  config.evaluate.ground_truth = str(gt_root)
  summary = scoring_job.evaluate_folder(config, workdir)

  with open(workdir / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["case"] for r in rows] == names[:2]
  assert list(rows[0]) == ["case", *scoring_job.METRICS, "seconds"]
  expected = [bm.official_scores(*toy_case(seed=i)) for i in range(2)]
  for row, exp in zip(rows, expected):
    for key in ("ssim", "psnr", "mse"):
      assert float(row[key]) == pytest.approx(exp[key], rel=1e-6)

  on_disk = json.loads((workdir / "summary.json").read_text())
  assert on_disk == summary
  assert on_disk["count"] == 2
  for key in ("ssim", "psnr", "mse"):
    values = [e[key] for e in expected]
    assert on_disk["metrics"][key]["mean"] == pytest.approx(np.mean(values), rel=1e-6)
    assert on_disk["metrics"][key]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-5)
  assert on_disk["metrics"]["seconds"]["mean"] == pytest.approx(2.0)
  failed = {f["case"]: f["error"] for f in on_disk["failed"]}
  assert sorted(failed) == names[2:]
  missing = f"{names[2]}-t1n-inference.nii.gz"
  assert f"{pred_root / names[2] / missing} and {pred_root / missing}" in failed[names[2]]
  assert on_disk["total"] == 5 and on_disk["means_cover"].startswith("2 of 5 cases")
  assert "affine differs" in failed[names[3]]
  assert "NaN" in failed[names[4]]
  assert not list(workdir.glob(".*"))  # no temporary files left behind


def test_case_scores_normalise_once_and_agree():
  case = toy_case(seed=5)
  both = bm.case_scores(*case)
  assert both == dict(bm.official_scores(*case), ssim_3d=bm.ssim_3d(*case))


def test_nothing_scored_is_an_error(tmp_path):
  gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
  _write_case(gt_root, "BraTS-GLI-00000-000", seed=0, affine=np.eye(4))
  pred_root.mkdir()
  config = inpaint_evaluate.get_config("tiny")
  config.evaluate.predictions, config.evaluate.ground_truth = str(pred_root), str(gt_root)
  with pytest.raises(InputError, match="no case could be scored"):
    scoring_job.evaluate_folder(config, tmp_path / "work")
  assert json.loads((tmp_path / "work" / "summary.json").read_text())["count"] == 0


def test_unknown_prediction_key_is_refused(tmp_path):
  config = inpaint_evaluate.get_config("tiny")
  config.evaluate.predictions, config.evaluate.ground_truth = str(tmp_path), str(tmp_path)
  config.evaluate.prediction_key = "t1n"
  with pytest.raises(InputError, match="evaluate.prediction_key: must be t1n-inference or "
                     "t1n-sample, got 't1n'"):
    scoring_job.evaluate_folder(config, tmp_path / "work")


@pytest.mark.parametrize("num_samples", [2, 4, 16])
def test_sample_spread_is_calibrated_for_posterior_samples(num_samples):
  """N samples and the truth drawn from one Gaussian posterior per voxel give calibration
  near 1 and spread = the posterior's std on the [0, 1] scale; samples that do not vary give
  0; samples twice as wide give 2."""
  pred, gt, voided, healthy = toy_case(shape=(24, 24, 16))
  rng = np.random.default_rng(1)
  lo, hi = bm.intensity.percentile_range(voided, *bm.PERCENTILES, nonzero_fallback=False)
  sigma = 0.05 * (hi - lo)  # small against the range: the [0, 1] clip leaves it alone
  centre = np.where(healthy > 0, gt + 0.3 * sigma * rng.standard_normal(gt.shape), gt)
  truth = np.where(healthy > 0, centre + sigma * rng.standard_normal(gt.shape), gt)
  for width, want in ((1.0, 1.0), (2.0, 2.0)):
    samples = centre + width * sigma * rng.standard_normal((num_samples,) + gt.shape)
    samples = np.where(healthy > 0, samples, gt)
    scores = bm.sample_spread(samples.std(axis=0), samples.mean(axis=0), truth, voided,
                              healthy, num_samples)
    # not rounding: both the sample variance and the truth's squared error average
    # M = healthy.sum() (about 1000) chi-square terms; with N samples the ratio's relative
    # std is about sqrt(2 / (M (N - 1)) + 2 / M) < 0.07; a 4-sigma band
    m = int(healthy.sum())
    band = 4 * np.sqrt(2 / (m * (num_samples - 1)) + 2 / m)
    assert abs(scores["calibration"] / want - 1) < band, (width, scores)
    assert abs(scores["spread"] / (width * sigma / (hi - lo)) - 1) < 4 * np.sqrt(
        2 / (m * (num_samples - 1))) + float32_tolerance(1.0, 8)
  still = np.zeros_like(centre)  # the std of samples that do not vary
  flat = bm.sample_spread(still, centre, truth, voided, healthy, num_samples)
  assert flat["spread"] == 0.0 and flat["calibration"] == 0.0
  with pytest.raises(InputError, match="N >= 2"):
    bm.sample_spread(still, centre, truth, voided, healthy, 1)


def test_evaluate_folder_scores_the_spread_and_refuses_one_sample(tmp_path):
  affine = np.eye(4)
  gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
  name = "BraTS-GLI-00000-000"
  pred = _write_case(gt_root, name, seed=0, affine=affine)
  std = np.full(pred.shape, 2.0, np.float32)
  nifti.save_volume(pred_root / f"{name}-t1n-inference.nii.gz", pred, affine)
  config = inpaint_evaluate.get_config("tiny")
  config.evaluate.predictions, config.evaluate.ground_truth = str(pred_root), str(gt_root)
  config.evaluate.num_samples = 1
  with pytest.raises(InputError, match="evaluate.num_samples.*needs N >= 2 samples"):
    scoring_job.evaluate_folder(config, tmp_path / "w1")
  config.evaluate.num_samples = 4
  with pytest.raises(InputError, match="no case could be scored"):  # the std file is missing
    scoring_job.evaluate_folder(config, tmp_path / "w2")
  assert "t1n-inference-std.nii.gz: missing" in json.loads(
      (tmp_path / "w2" / "summary.json").read_text())["failed"][0]["error"]
  nifti.save_volume(pred_root / f"{name}-t1n-inference-std.nii.gz", std, affine)
  summary = scoring_job.evaluate_folder(config, tmp_path / "w3")
  _, gt, voided, healthy = toy_case(seed=0)
  want = bm.sample_spread(std, pred, gt, voided, healthy, 4)
  for key in scoring_job.SPREAD_METRICS:
    assert summary["metrics"][key]["mean"] == pytest.approx(want[key], rel=1e-6)
