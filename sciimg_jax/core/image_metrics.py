"""Image-similarity measures shared by the methods' evaluations (numpy/scipy, on the host).

  ssim_map        the SSIM map of torchmetrics (Gaussian window 11, sigma 1.5, mirror
                  padding), in 2D planes or a true 3D window
  texture_ratio   the prediction's mean gradient magnitude in a region over the ground truth's
  minmax_by_reference, psnr
                  PSNR after min-max normalisation of both volumes by the ground truth's
                  range (Diff-Ensembler's evaluation)
  mmd_linear      maximum mean discrepancy with a linear kernel between two sets of
                  volumes (one row per case), as Diff-Ensembler reports it for a method

The BraTS inpainting scores (`sciimg_jax.inpainting.brats_metrics`) build on these.
"""

import numpy as np
from scipy import ndimage

from sciimg_jax.core.errors import InputError

SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)  # 5: torchmetrics' 11-voxel Gaussian window.
K1, K2 = 0.01, 0.03


def check_volumes(where="scores", **volumes):
  """Stops unless the volumes are 3D, of one shape, and finite; names the bad one."""
  shapes = {name: np.shape(v) for name, v in volumes.items()}
  if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
    raise InputError(where, f"expected 3D volumes of one shape, got {shapes}")
  for name, v in volumes.items():
    if not np.all(np.isfinite(v)):
      raise InputError(where, f"{name} has {int(np.sum(~np.isfinite(v)))} NaN or inf voxels")


def ssim_map(x, y, data_range=None, axes=(1, 2)):
  """SSIM map of torchmetrics (Gaussian window, mirror padding) over the given axes.

  `axes=(1, 2)` is torchmetrics on a [1, X, Y, Z] tensor (a 2D SSIM per (Y, Z) plane);
  `axes=(0, 1, 2)` a 3D SSIM. `data_range=None` takes the larger value range of x and y.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if data_range is None:
    data_range = max(np.ptp(x), np.ptp(y))
  c1, c2 = (K1 * data_range)**2, (K2 * data_range)**2

  def blur(v):
    return ndimage.gaussian_filter(v, SIGMA, mode="mirror", radius=RADIUS, axes=axes)

  mu_x, mu_y = blur(x), blur(y)
  var_x = np.maximum(blur(x * x) - mu_x**2, 0.0)
  var_y = np.maximum(blur(y * y) - mu_y**2, 0.0)
  cov = blur(x * y) - mu_x * mu_y
  return (((2 * mu_x * mu_y + c1) * (2 * cov + c2)) /
          ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))


def minmax_by_reference(prediction, ground_truth):
  """Both volumes scaled by the ground truth's range: (v - min(gt)) / (max(gt) - min(gt))."""
  check_volumes("minmax_by_reference", prediction=prediction, ground_truth=ground_truth)
  gt = np.asarray(ground_truth, np.float64)
  lo, hi = gt.min(), gt.max()
  if hi <= lo:
    raise InputError("minmax_by_reference", "the ground truth is constant")
  return (np.asarray(prediction, np.float64) - lo) / (hi - lo), (gt - lo) / (hi - lo)


def psnr(prediction, ground_truth, data_range=1.0):
  """10 log10(range^2 / MSE); inf for a perfect prediction."""
  mse = np.mean((np.asarray(prediction, np.float64) - np.asarray(ground_truth, np.float64))**2)
  with np.errstate(divide="ignore"):
    return float(10.0 * np.log10(data_range**2 / mse))


def mmd_linear(x, y):
  """MMD^2 with the kernel k(a, b) = <a, b> between sets x (n, d) and y (m, d).

  mean(x x^T) + mean(y y^T) - 2 mean(x y^T), which equals |mean(x) - mean(y)|^2: it
  compares the mean volumes of two sets of cases (ground truths and a method's outputs),
  not cases one by one.
  """
  x, y = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (x, y))
  if x.shape[1] != y.shape[1]:
    raise InputError("mmd_linear", f"sets of {x.shape[1]} and {y.shape[1]} values a case")
  delta = x.mean(0) - y.mean(0)
  return float(delta @ delta)


def texture_ratio(prediction, ground_truth, mask):
  """In-mask texture of the prediction relative to the ground truth's.

  With the gradient g(v) = (dv/dx, dv/dy, dv/dz) by central differences
  (`np.gradient`, one-sided on the array's edges) and M the non-zero voxels of `mask`,

      G(v) = mean over p in M of |g(v)(p)|   (Euclidean norm),
      texture_ratio = G(prediction) / G(ground truth).

  1.0: as much local structure as real anatomy; < 1: over-smoothed (a harmonic or
  biharmonic fill); > 1: noisier. Computed on the raw intensities, so it is unchanged by
  a scaling applied to both volumes. NaN where the ground truth is flat in M.
  """
  check_volumes("texture_ratio", prediction=prediction, ground_truth=ground_truth, mask=mask)
  region = np.asarray(mask) != 0
  def mean_gradient(v):
    grads = np.gradient(np.asarray(v, np.float64))
    return np.sqrt(sum(g**2 for g in grads))[region].mean() if region.any() else np.nan
  reference = mean_gradient(ground_truth)
  return float(mean_gradient(prediction) / reference) if reference > 0 else float("nan")
