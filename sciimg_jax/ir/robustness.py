"""Robustness strategies from RGB practice and modality-aware remedies, as config switches.

Batch-level (inside the jitted loss, from the step's key; `train.robust.*`):

  mixup_alpha    > 0: mixup (Zhang et al. 2018): x = l x_i + (1 - l) x_j, soft labels alike,
                 l ~ Beta(alpha, alpha)
  cutmix_alpha   > 0: cutmix (Yun et al. 2019): a box of x_j pasted into x_i, labels mixed by
                 the box's area (when both are set, each batch uses one of them at random)
  noise_std      > 0: Gaussian noise added to the (standardised) input
  band_dropout   > 0: each input channel (band) zeroed with this probability, per example
  sam_rho        > 0: sharpness-aware minimisation (Foret et al. 2021): the loss is taken at
                 w + rho g / |g|, g the gradient at w (stop-gradient on the step), so its
                 gradient is SAM's update
  adversarial_eps  > 0: FGSM adversarial training (Goodfellow et al. 2015): the loss on
                 x + eps sign(grad_x loss), half the batch clean (`adversarial_mix`)
  rank_weight    > 0: a feature-diversity regulariser: weight x the mean squared
                 off-diagonal correlation of the penultimate features over the batch

Input transforms of IR spectra (host-side, before standardisation; `data.spectral_transform`):

  none, snv (standard normal variate: each spectrum minus its mean, over its std),
  derivative (Savitzky-Golay first derivative, window 9, order 2, per spectrum),
  pca_whiten (projection on the training pixels' first `data.pca_components` principal
  components, each scaled to unit variance; fitted on the training patches).
"""

import jax
import jax.numpy as jnp
import numpy as np

SPECTRAL_TRANSFORMS = ("none", "snv", "derivative", "pca_whiten")


# --- host-side spectral transforms -----------------------------------------------------------

def snv(x):
  x = np.asarray(x, np.float32)
  return (x - x.mean(-1, keepdims=True)) / np.maximum(x.std(-1, keepdims=True), 1e-6)


def derivative(x, window=9, order=2):
  from scipy.signal import savgol_filter  # noqa: PLC0415
  return savgol_filter(np.asarray(x, np.float32), window, order, deriv=1, axis=-1).astype(np.float32)


class PcaWhitener:
  """Fitted on (N, bands) pixel spectra: x -> (x - mean) V_k / sqrt(lambda_k)."""

  def __init__(self, pixels, components):
    pixels = np.asarray(pixels, np.float64)
    self.mean = pixels.mean(0)
    _, s, vt = np.linalg.svd(pixels - self.mean, full_matrices=False)
    k = min(components, len(s))
    scale = s[:k] / np.sqrt(max(len(pixels) - 1, 1))
    self.projection = (vt[:k].T / np.maximum(scale, 1e-8)).astype(np.float32)
    self.mean = self.mean.astype(np.float32)

  def __call__(self, x):
    return (np.asarray(x, np.float32) - self.mean) @ self.projection


# --- batch-level strategies (jitted) ---------------------------------------------------------

def mixup(key, x, targets, alpha):
  k1, k2 = jax.random.split(key)
  lam = jax.random.beta(k1, alpha, alpha)
  perm = jax.random.permutation(k2, x.shape[0])
  return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def cutmix(key, x, targets, alpha):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  lam = jax.random.beta(k1, alpha, alpha)
  perm = jax.random.permutation(k2, x.shape[0])
  h, w = x.shape[1], x.shape[2]
  bh = jnp.round(h * jnp.sqrt(1 - lam)).astype(jnp.int32)
  bw = jnp.round(w * jnp.sqrt(1 - lam)).astype(jnp.int32)
  y0 = jax.random.randint(k3, (), 0, h - bh + 1)
  x0 = jax.random.randint(k4, (), 0, w - bw + 1)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = ((rows >= y0) & (rows < y0 + bh) & (cols >= x0) & (cols < x0 + bw))[None, ..., None]
  area = (bh * bw) / (h * w)
  return jnp.where(box, x[perm], x), (1 - area) * targets + area * targets[perm]


def band_dropout(key, x, rate):
  keep = jax.random.bernoulli(key, 1 - rate, (x.shape[0], 1, 1, x.shape[-1]))
  return x * keep


def off_diagonal_correlation(features, eps=1e-5):
  """Mean squared off-diagonal entry of the features' correlation matrix over the batch."""
  f = features - features.mean(0)
  f = f / jnp.sqrt((f ** 2).mean(0) + eps)
  corr = f.T @ f / f.shape[0]
  d = corr.shape[0]
  return ((corr ** 2).sum() - (jnp.diagonal(corr) ** 2).sum()) / max(d * (d - 1), 1)


def augment_inputs(key, x, targets, robust):
  """Mixup / cutmix, noise and band dropout of a batch (the ones the config switches on)."""
  keys = jax.random.split(key, 4)
  if robust.mixup_alpha > 0 and robust.cutmix_alpha > 0:
    mixed = mixup(keys[0], x, targets, robust.mixup_alpha)
    cut = cutmix(keys[0], x, targets, robust.cutmix_alpha)
    use_mix = jax.random.bernoulli(keys[3])
    x, targets = jax.tree.map(lambda a, b: jnp.where(use_mix, a, b), mixed, cut)
  elif robust.mixup_alpha > 0:
    x, targets = mixup(keys[0], x, targets, robust.mixup_alpha)
  elif robust.cutmix_alpha > 0:
    x, targets = cutmix(keys[0], x, targets, robust.cutmix_alpha)
  if robust.noise_std > 0:
    x = x + robust.noise_std * jax.random.normal(keys[1], x.shape, x.dtype)
  if robust.band_dropout > 0:
    x = band_dropout(keys[2], x, robust.band_dropout)
  return x, targets
