"""Shared image measures: PSNR after min-max normalisation by the ground truth."""

import numpy as np
import pytest
from skimage import metrics as skmetrics

from sciimg_jax.core import image_metrics
from sciimg_jax.core.errors import InputError


def test_psnr_after_minmax_equals_skimage():
  rng = np.random.default_rng(0)
  gt = rng.uniform(20.0, 300.0, (6, 7, 8))
  pred = gt + rng.normal(0.0, 10.0, gt.shape)
  p, g = image_metrics.minmax_by_reference(pred, gt)
  assert g.min() == 0.0 and g.max() == 1.0
  np.testing.assert_allclose(p, (pred - gt.min()) / np.ptp(gt))
  want = skmetrics.peak_signal_noise_ratio(g, p, data_range=1.0)
  assert image_metrics.psnr(p, g) == pytest.approx(want, rel=1e-12)
  assert image_metrics.psnr(g, g) == float("inf")


def test_bad_volumes_are_named():
  gt = np.ones((4, 4, 4))
  with pytest.raises(InputError, match="the ground truth is constant"):
    image_metrics.minmax_by_reference(gt, gt)
  bad = gt.copy()
  bad[0, 0, 0] = np.nan
  with pytest.raises(InputError, match="prediction has 1 NaN or inf voxels"):
    image_metrics.minmax_by_reference(bad, np.arange(64.0).reshape(4, 4, 4))
  with pytest.raises(InputError, match="expected 3D volumes of one shape"):
    image_metrics.minmax_by_reference(gt[:2], gt)


def test_mmd_linear_equals_the_kernel_means():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 2, 3, 4))
  y = rng.normal(0.3, 1.0, size=(3, 2, 3, 4))
  a, b = x.reshape(5, -1), y.reshape(3, -1)
  want = (a @ a.T).mean() + (b @ b.T).mean() - 2 * (a @ b.T).mean()
  assert image_metrics.mmd_linear(x, y) == pytest.approx(want, rel=1e-10)
  assert image_metrics.mmd_linear(x, x) == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(InputError, match="sets of 24 and 12 values a case"):
    image_metrics.mmd_linear(x, y[:, :1])
