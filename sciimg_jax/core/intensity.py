"""Intensity normalisation as in the BraTS inpainting challenge.

The challenge's evaluation normalises prediction and ground truth with the 0.5 and
99.5 percentiles of the *voided* image, taken over the whole volume (background
included), with the lower bound clipped at 0. We use the same range for training so
that a network's [-1, 1] output maps straight back to the scoring scale:

    lo, hi = percentile_range(voided)
    y = normalize(x, lo, hi)        # clip to [lo, hi], scale to [-1, 1]
    x_clipped = denormalize(y, lo, hi)
"""

import numpy as np

from sciimg_jax.core.errors import InputError


def percentile_range(voided, lower=0.5, upper=99.5, where="voided image", *,
                     nonzero_fallback=True):
  """Returns (lo, hi): the `lower`/`upper` percentiles of `voided`, lo clipped at >= 0.

  When the whole-volume range is degenerate (a large field of view whose brain holds
  under 1 % of the voxels gives hi = lo = 0), the percentiles of the non-zero voxels
  are used instead, unless `nonzero_fallback=False` (scoring keeps the challenge's exact
  rule). Training and inference share this function, so they normalise alike.
  `where` names the source (e.g. the file) in the InputError raised when hi <= lo.
  """
  voided = np.asarray(voided, dtype=np.float64)
  lo, hi = np.percentile(voided, [lower, upper])
  lo, hi = max(float(lo), 0.0), float(hi)
  if not hi > lo and nonzero_fallback and np.any(voided != 0):
    lo, hi = np.percentile(voided[voided != 0], [lower, upper])
    lo, hi = max(float(lo), 0.0), float(hi)
  if not hi > lo:
    raise InputError(where, f"voided image has no intensity range "
                     f"({lower}/{upper} percentiles: lo={lo:g}, hi={hi:g})")
  return lo, hi


def _check(lo, hi):
  if not hi > lo:
    raise InputError("normalisation", f"empty intensity range lo={lo:g}, hi={hi:g}")


def normalize(x, lo, hi):
  """Clips `x` to [lo, hi] and maps that range linearly onto [-1, 1] (float32)."""
  _check(lo, hi)
  x = np.clip(np.asarray(x, dtype=np.float32), lo, hi)
  return (2.0 * (x - lo) / (hi - lo) - 1.0).astype(np.float32)


def denormalize(y, lo, hi):
  """Inverse of `normalize`: maps [-1, 1] back onto [lo, hi] (no clipping)."""
  _check(lo, hi)
  y = np.asarray(y, dtype=np.float32)
  return ((y + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)
