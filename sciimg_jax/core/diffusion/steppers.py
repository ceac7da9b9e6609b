"""Reverse-diffusion steppers: one step x_i -> x_{i-1} of a (respaced) chain.

Every stepper has the signature
  step(schedule, parameterization, x_t, i, model_out, key, *, eta, clip_x0) -> x_{i-1}
and reads `model_out` in the given parameterization (`schedules`). Single DDPM and
DDIM steps are tested against MONAI's schedulers.

A multistep stepper (`MULTISTEP`) also takes the x0 estimate of the step before,
`prev_x0` (None at the walk's first step), and returns (x_{i-1}, its own x0 estimate),
which the sampler carries to the next step:
  dpm++2m  DPM-Solver++(2M) (Lu et al. 2022), the second-order multistep solver of the
           probability-flow ODE in its data-prediction form: deterministic, exact in
           log-SNR steps for a linear x0 estimate, first order (= DDIM, eta 0) at the
           first step and at the last two.
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


def _log_snr_half(abar):
  """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2."""
  return 0.5 * (jnp.log(abar) - jnp.log1p(-abar))


def dpmpp_2m_step(schedule, parameterization, x_t, i, model_out, key, eta=0.0, clip_x0=None,
                  *, prev_x0=None, has_prev=True):
  """One DPM-Solver++(2M) step x_i -> x_{i-1}; returns (x_{i-1}, x0 estimate at i).

  With h = lambda_{i-1} - lambda_i and the data estimate D,
  x_{i-1} = (sigma_{i-1} / sigma_i) x_i + alpha_{i-1} (1 - exp(-h)) D, where D is the x0
  estimate at i (first order: DDIM with eta 0) at the first step (`prev_x0` None, or
  `has_prev` false: a traced flag for the sampler's loop) and at indices 1 and 0 (the
  lower-order final steps of DPM-Solver: into t = 0 the log-SNR step is many times the one
  before, and the extrapolation would blow up), else (1 + 1/(2r)) x0_i - 1/(2r) x0_{i+1}
  with r = h_{i+1} / h, h_{i+1} the log-SNR step before. `key` and `eta` are unused (the
  solver is deterministic).
  """
  del key, eta
  x0, _ = _predict(schedule, parameterization, x_t, i, model_out, clip_x0)
  abar, abar_prev = schedule.alphas_cumprod[i], _abar_prev(schedule, i)
  if prev_x0 is None:
    d = x0
  else:
    abar_next = schedule.alphas_cumprod[jnp.minimum(i + 1, schedule.betas.shape[0] - 1)]
    lam, lam_prev = _log_snr_half(abar), _log_snr_half(jnp.maximum(abar_prev, abar))
    h = lam_prev - lam
    r = (lam - _log_snr_half(abar_next)) / jnp.where(h > 0, h, 1.0)
    second = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
    d = jnp.where((i > 1) & has_prev, second, x0)
  # (sigma_prev / sigma) x + alpha_prev (1 - exp(-h)) D, with exp(-h) written out:
  # exp(-h) = alpha sigma_prev / (sigma alpha_prev); at index 0 sigma_prev = 0: x_{-1} = D.
  sigma, sigma_prev = jnp.sqrt(1.0 - abar), jnp.sqrt(1.0 - abar_prev)
  coef_d = jnp.sqrt(abar_prev) - jnp.sqrt(abar) * sigma_prev / sigma
  x_prev = (sigma_prev / sigma) * x_t + coef_d * d
  return x_prev, x0


STEPPERS = {"ddpm": ddpm_step, "ddim": ddim_step, "dpm++2m": dpmpp_2m_step}
MULTISTEP = ("dpm++2m",)
