"""Scores of the BraTS 2023/2024 inpainting challenge, a 3D SSIM and a seam measure.

Official scores (`official_scores`)
-----------------------------------
Source: the challenge's metrics package, github.com/BraTS-inpainting/inpainting,
`inpainting/challenge_metrics_2023.py` (`generate_metrics`, pinned to torchmetrics >= 1.1.2,
torch >= 2.0.1), as called in its README with `mask` = `-mask-healthy`,
`normalization_tensor` = `-t1n-voided`, every volume read as a float32 tensor of shape
[1, X, Y, Z]. We match it step by step, in numpy/scipy:

1. Multiply prediction and ground truth by the healthy mask M (the mask is `.bool()`: any
   non-zero voxel counts) *before* normalising.
2. Normalise both with the 0.5 / 99.5 percentiles of the *whole* voided volume
   (`np.percentile`, linear interpolation, background zeros included), lower bound clipped
   at 0 (`strictly_positive=True`); clip to that range and scale to [0, 1]. This is
   `intensity.percentile_range`. Since the lower bound is >= 0, voxels outside M stay 0.
3. SSIM: torchmetrics `StructuralSimilarityIndexMeasure(return_full_image=True)` with its
   defaults on the [1, X, Y, Z] tensors. torchmetrics reads that as one image with X
   channels, so it is a 2D SSIM on every (Y, Z) plane: Gaussian window 11 x 11
   (torchmetrics sizes it as 2 * int(3.5 * sigma + 0.5) + 1), sigma 1.5, K1 0.01, K2 0.03,
   population (co)variances, data range = max(range(prediction), range(ground truth)) over
   the whole normalised volumes, 'reflect' padding of 5 voxels in Y and Z (torch's reflect
   repeats no edge voxel: scipy's mode='mirror', not scipy's 'reflect'), variances clamped
   at 0 (torchmetrics >= 1.3; it only changes round-off). The returned full SSIM map is the
   *uncropped* one (the crop in torchmetrics only affects its scalar mean, which the challenge
   discards); the score is the mean of that map over M.
4. MSE: mean squared error over the voxels of M.
5. PSNR: 10 log10(1 / MSE), i.e. `psnr_01` (torchmetrics PSNR with data_range 1), no
   epsilon, so a perfect prediction scores inf. The package also returns `psnr` with a
   range taken from the masked target; the challenge's Synapse scoring
   (Sage-Bionetworks-Challenges/brats2023, `evaluation/inpainting/score.py`) drops that one
   and reports `PSNR_01` as "PSNR" at the organisers' request, and so do we.

Precision: float64 throughout. So does the package from step 2 on, by accident:
`np.clip` of a float32 tensor with float64 percentile bounds returns a float64 tensor; its
SSIM agrees with ours to ~1e-15, its MSE and PSNR (float32 metric states) to ~1e-7.

Deviations: an empty healthy mask, or a voided image whose percentile range is empty,
raises `InputError` where the package would return NaN/inf.

Beside them
-----------
`ssim_3d`: the same normalisation, data range, constants and mirror padding, but a true 3D
Gaussian window (11^3, sigma 1.5), averaged over M. `discontinuity`: a through-plane seam
measure (see its docstring). `texture_ratio`: a realism measure, the prediction's mean
gradient magnitude in M over the ground truth's (1.0 = real texture, < 1 over-smoothed,
> 1 noisier than anatomy); a smooth fill can win PSNR and still score well below 1 here. Axis names x, y, z are array axes 0, 1, 2 (BraTS: sagittal,
coronal, axial slice normal; axial 2D models leave seams along z, coronal ones along y).
`ssim_map`, `texture_ratio` and the input check live in `sciimg_jax.core.image_metrics`,
which the other methods' evaluations share.
"""

import numpy as np
from scipy import ndimage

from sciimg_jax.core import intensity
from sciimg_jax.core.errors import InputError
from sciimg_jax.core.image_metrics import check_volumes, ssim_map

PERCENTILES = (0.5, 99.5)
AXES = ("x", "y", "z")


def normalized_in_mask(prediction, ground_truth, voided, healthy_mask, where="scores"):
  """Steps 1-2 of the challenge: returns (prediction, ground truth, bool mask) on [0, 1]."""
  return _normalized(prediction, ground_truth, voided, healthy_mask, where)[:3]


def _normalized(prediction, ground_truth, voided, healthy_mask, where):
  """`normalized_in_mask`, and the width hi - lo of the intensity range it maps to [0, 1]."""
  check_volumes(where, prediction=prediction, ground_truth=ground_truth, voided=voided,
                healthy_mask=healthy_mask)
  mask = np.asarray(healthy_mask) != 0
  if not mask.any():
    raise InputError(where, "healthy mask is empty")
  lo, hi = intensity.percentile_range(voided, *PERCENTILES, where=where,
                                      nonzero_fallback=False)  # the challenge's rule

  def norm(x):
    x = np.asarray(x, np.float64) * mask
    return (np.clip(x, lo, hi) - lo) / (hi - lo)

  return norm(prediction), norm(ground_truth), mask, hi - lo


def official_scores(prediction, ground_truth, voided, healthy_mask, where="scores"):
  """SSIM, PSNR and MSE exactly as the challenge computes them (see module docstring).

  Args:
    prediction: the inpainted volume (-t1n-inference), any intensity scale.
    ground_truth: the real volume (-t1n).
    voided: the network's input (-t1n-voided); sets the normalisation range.
    healthy_mask: the scored region (-mask-healthy); non-zero = inside.
    where: names the case in InputError messages.

  Returns:
    dict(ssim=, psnr=, mse=) as Python floats; psnr is inf when mse is 0.
  """
  return _official(*normalized_in_mask(prediction, ground_truth, voided, healthy_mask, where))


def ssim_3d(prediction, ground_truth, voided, healthy_mask, where="scores"):
  """3D SSIM (11^3 Gaussian window, sigma 1.5) on the normalised volumes, mean over M."""
  return _ssim_3d(*normalized_in_mask(prediction, ground_truth, voided, healthy_mask, where))


def case_scores(prediction, ground_truth, voided, healthy_mask, where="scores"):
  """`official_scores` and `ssim_3d` of one case, normalising the volumes once."""
  normalized = normalized_in_mask(prediction, ground_truth, voided, healthy_mask, where)
  return dict(_official(*normalized), ssim_3d=_ssim_3d(*normalized))


def sample_spread(std, prediction, ground_truth, voided, healthy_mask, num_samples,
                  where="scores"):
  """How much N posterior samples vary, against how far their mean is from the truth.

  `std` is the per-voxel standard deviation of the N samples (ddof 0, as the inpainting job
  writes `-t1n-inference-std`) and `prediction` their mean; both are put on the challenge's
  [0, 1] scale (the voided image's 0.5/99.5 percentiles, `normalized_in_mask`). Over the
  healthy mask M, with s^2 = std^2 N / (N - 1) the unbiased sample variance:

      spread      = sqrt(mean_M s^2)                    the samples' own std
      calibration = sqrt(mean_M s^2 (1 + 1/N) / MSE)    MSE of the mean, as `official_scores`

  For samples from the true posterior, E (truth - mean_N)^2 = sigma^2 (1 + 1/N), so a
  calibrated model scores calibration = 1; samples that do not vary score 0 (a
  deterministic regressor), over-dispersed ones more than 1.
  """
  if int(num_samples) < 2:
    raise InputError(where, f"the spread of samples needs N >= 2 samples, got {num_samples}")
  pred, gt, mask, width = _normalized(prediction, ground_truth, voided, healthy_mask, where)
  check_volumes(where, std=std, prediction=prediction)
  n = int(num_samples)
  variance = np.mean((np.asarray(std, np.float64)[mask] / width)**2) * n / (n - 1)
  mse = np.mean((pred[mask] - gt[mask])**2)
  calibration = np.sqrt(variance * (1.0 + 1.0 / n) / mse) if mse > 0 else float("nan")
  return dict(spread=float(np.sqrt(variance)), calibration=float(calibration))


def _official(pred, gt, mask):
  ssim = ssim_map(pred, gt, axes=(1, 2))[mask].mean()
  mse = np.mean((pred[mask] - gt[mask])**2)
  with np.errstate(divide="ignore"):
    psnr = 10.0 * np.log10(1.0 / mse)
  return dict(ssim=float(ssim), psnr=float(psnr), mse=float(mse))


def _ssim_3d(pred, gt, mask):
  return float(ssim_map(pred, gt, axes=(0, 1, 2))[mask].mean())


def _mean_abs_second_difference(volume, region, axis):
  """Mean |v[p+1] - 2 v[p] + v[p-1]| along `axis` over the voxels p of `region`."""
  d2 = np.diff(volume, n=2, axis=axis)  # d2[i] is centred on voxel i + 1.
  centre = np.take(region, np.arange(1, volume.shape[axis] - 1), axis=axis)
  return np.abs(d2)[centre].mean() if centre.any() else np.nan


def discontinuity(prediction, ground_truth, mask, dilation=2):
  """Through-plane roughness of the prediction relative to the ground truth's.

  Let R be `mask` (non-zero voxels) dilated by `dilation` voxels (scipy binary_dilation,
  6-connected, so it takes in the seam between known and inpainted tissue). For an axis a
  and a volume v let

      D_a(v) = mean over voxels p in R (not on the volume's first or last slice along a)
               of |v(p + e_a) - 2 v(p) + v(p - e_a)|,

  the mean absolute second difference along a. The score along a is
  D_a(prediction) / D_a(ground truth): 1.0 is as smooth as real anatomy, > 1 means
  extra structure across slices (slice seams of a 2D model), < 1 over-smoothing. It is
  computed on the raw intensities, and is unchanged by any intensity scaling applied
  to both volumes. NaN along an axis where the ground truth is flat (D_a = 0) or R
  has no inner voxel.

  Returns:
    dict(x=, y=, z=, mean=) with mean the average of the three axis scores.
  """
  check_volumes("discontinuity", prediction=prediction, ground_truth=ground_truth, mask=mask)
  region = np.asarray(mask) != 0
  if dilation:
    region = ndimage.binary_dilation(region, iterations=int(dilation))
  pred = np.asarray(prediction, np.float64)
  gt = np.asarray(ground_truth, np.float64)
  out = {}
  for axis, name in enumerate(AXES):
    with np.errstate(divide="ignore", invalid="ignore"):
      out[name] = float(_mean_abs_second_difference(pred, region, axis) /
                        _mean_abs_second_difference(gt, region, axis))
  out["mean"] = float(np.mean([out[a] for a in AXES]))
  return out
