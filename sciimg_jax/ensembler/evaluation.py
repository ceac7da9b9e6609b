"""Diff-Ensembler's scores, as its released evaluation computes them.

Both volumes are min-max normalised by the ground truth's range
(`image_metrics.minmax_by_reference`); then

  psnr     10 log10(1 / MSE) over the whole volume;
  ssim     skimage's `structural_similarity(data_range=1)` on the whole 3D volume (its
           7^3 uniform window), as the released code calls it;
  texture  `image_metrics.texture_ratio` in the brain: < 1 is over-smoothed;
  mmd      `image_metrics.mmd_linear` between the set of ground truths and the set of a
           method's outputs (a set-level score, one number per method);
  dice     of the downstream segmenter's mask (probability > 0.5) against the labels.
"""

import numpy as np
from skimage.metrics import structural_similarity

from sciimg_jax.core import image_metrics


def normalised(prediction, truth):
  """`prediction` min-max normalised by the range of `truth` (float32)."""
  return image_metrics.minmax_by_reference(prediction, truth)[0].astype(np.float32)


def scores(prediction, truth, brain):
  """{psnr, ssim, texture} of one volume against its ground truth."""
  p, g = image_metrics.minmax_by_reference(prediction, truth)
  return {"psnr": image_metrics.psnr(p, g),
          "ssim": float(structural_similarity(g, p, data_range=1.0)),
          "texture": image_metrics.texture_ratio(p, g, brain)}


def set_mmd(outputs, truths):
  """MMD (linear kernel) between a method's normalised outputs and the ground truths, from
  the running (float64 sum, count) of each set: |mean(truths) - mean(outputs)|^2, which is
  `image_metrics.mmd_linear` of the two sets without keeping every volume."""
  (output_sum, outputs_n), (truth_sum, truths_n) = outputs, truths
  delta = (np.asarray(truth_sum) / truths_n - np.asarray(output_sum) / outputs_n).reshape(-1)
  return float(delta @ delta)


def dice(probability, labels):
  """Dice of `probability > 0.5` against `labels > 0.5`; 1 when both are empty."""
  p, g = np.asarray(probability) > 0.5, np.asarray(labels) > 0.5
  total = p.sum() + g.sum()
  return float(2.0 * (p & g).sum() / total) if total else 1.0
