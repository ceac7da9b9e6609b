"""Reverse-diffusion steppers: one step x_i -> x_{i-1} of a (respaced) chain.

Every stepper has the signature
  step(schedule, parameterization, x_t, i, model_out, key, *, eta, clip_x0) -> x_{i-1}
and reads `model_out` in the given parameterization (`schedules`). Single DDPM and
DDIM steps are tested against MONAI's schedulers.
"""

import jax
import jax.numpy as jnp

from sciimg_jax.core.diffusion.schedules import predict_x0_eps


def _predict(schedule, parameterization, x_t, i, model_out, clip_x0):
  """(x0, eps) at index i, with x0 clipped to [-clip_x0, clip_x0] if asked.

  After clipping, eps is recomputed from the clipped x0 (as in improved DDPM);
  MONAI keeps the unclipped eps instead.
  """
  x0, eps = predict_x0_eps(schedule, parameterization, x_t, i, model_out)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    abar = schedule.alphas_cumprod[i]
    eps = (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
  return x0, eps


def _abar_prev(schedule, i):
  """abar at index i - 1, and 1 at index 0."""
  return jnp.where(i > 0, schedule.alphas_cumprod[jnp.maximum(i - 1, 0)], 1.0)


def ddpm_step(schedule, parameterization, x_t, i, model_out, key, clip_x0=None,
              *, eta=None):
  """One ancestral step x_i -> x_{i-1} with the "fixed_small" posterior variance.

  The noise is `jax.random.normal(key, x_t.shape)`; none is added at i == 0.
  `eta` is ignored; it is accepted so that all STEPPERS share one signature.
  """
  del eta
  x0, _ = _predict(schedule, parameterization, x_t, i, model_out, clip_x0)
  abar = schedule.alphas_cumprod[i]
  abar_prev = _abar_prev(schedule, i)
  beta = schedule.betas[i]
  mean = (jnp.sqrt(abar_prev) * beta / (1.0 - abar) * x0
          + jnp.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar) * x_t)
  variance = jnp.maximum(beta * (1.0 - abar_prev) / (1.0 - abar), 1e-20)
  std = jnp.where(i > 0, jnp.sqrt(variance), 0.0)
  noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  return mean + std * noise


def ddim_step(schedule, parameterization, x_t, i, model_out, key, eta=0.0,
              clip_x0=None):
  """One DDIM step x_i -> x_{i-1} (Song et al. 2021, eq. 12 and 16).

  eta = 0 is deterministic; eta = 1 has the DDPM posterior variance. The noise
  is `jax.random.normal(key, x_t.shape)`. At i == 0 the result is the predicted x0.
  """
  x0, eps = _predict(schedule, parameterization, x_t, i, model_out, clip_x0)
  abar = schedule.alphas_cumprod[i]
  abar_prev = _abar_prev(schedule, i)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
  noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  return jnp.sqrt(abar_prev) * x0 + direction * eps + sigma * noise


STEPPERS = {"ddpm": ddpm_step, "ddim": ddim_step}
