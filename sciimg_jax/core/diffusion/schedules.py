"""Gaussian diffusion: noise schedules, the forward process and training targets.

A `Schedule` holds the betas and cumulative alphas of a chain of K steps. Index i
in 0..K-1 addresses the chain; `schedule.timesteps[i]` is the original training
timestep at that index, which is what the network is told. A freshly made
schedule has `timesteps == arange(K)`; `respace` keeps a subset of them for fast
sampling (improved DDPM, Nichol & Dhariwal 2021).

Network outputs are read in one of four parameterizations:
  eps: the noise,  x0: the clean image,
  v:   sqrt(abar) * eps - sqrt(1 - abar) * x0   (Salimans & Ho 2022),
  edm: F in x0 = c_skip x_t + c_out F, the preconditioning of Karras et al. 2022 written
       for this variance-preserving chain (`edm_coefficients`): c_skip x_t is the best
       linear estimate of x0 for data of standard deviation sigma_data (the schedule's
       `sigma_data`, `diffusion.sigma_data`; `SIGMA_DATA` = 0.5 by default, and measured
       from the training targets when the config says 0), so the estimate tends to x_t as
       the noise vanishes and to sigma_data * F as it grows, and the network's target has
       unit scale at every noise level. Neither end has a floor: an eps network's x0 is
       noisy at high noise, an x0 network's error stays at low noise. c_skip sqrt(abar) is
       the Wiener gain sigma_data^2 / (sigma_data^2 + sigma^2), sigma^2 = (1 - abar) / abar:
       with the data's true spread, an untrained network already weighs x_t as the
       posterior mean of Gaussian data does.

Steppers (`steppers`) and the sampler (`sampler`) build on these; nothing here
knows about networks, denoisers or inpainting.
"""

import math

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.core.errors import InputError

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")
NOISE_LEVELS = ("uniform", "lognormal")  # how training draws t (`training_timesteps`)
LOGNORMAL_OFFSET, LOGNORMAL_STD = -0.5, 1.2  # log sigma ~ N(log sigma_data - 0.5, 1.2^2)
SIGMA_DATA = 0.5   # the data's standard deviation the edm preconditioning assumes ([-1, 1] images)
SPACINGS = ("uniform", "linspace", "karras")
KARRAS_RHO = 7.0   # the karras spacing's exponent (Karras et al. 2022, eq. 5)


@struct.dataclass
class Schedule:
  """The per-index constants of a diffusion chain."""
  betas: jax.Array           # (K,) float32 betas of this (possibly respaced) chain.
  alphas_cumprod: jax.Array  # (K,) float32.
  timesteps: jax.Array       # (K,) int32 original training timestep of each index.
  num_train_timesteps: int = struct.field(pytree_node=False)
  sigma_data: float = struct.field(pytree_node=False, default=SIGMA_DATA)  # edm's data std


def linear_betas(num_timesteps, beta_start, beta_end):
  """Betas spaced linearly from beta_start to beta_end (Ho et al. 2020)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps, beta_start=None, beta_end=None, s=0.008):
  """The cosine schedule of Nichol & Dhariwal (2021); beta_start/end are unused."""
  del beta_start, beta_end
  t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alpha_bar = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
  betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
  return np.clip(betas, 0.0, 0.999)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_schedule(name="linear", num_timesteps=1000, beta_start=1e-4,
                  beta_end=0.02, sigma_data=SIGMA_DATA):
  """Returns the full training schedule `name` with `num_timesteps` steps.

  The constants are computed in float64 on the host and stored as float32. `sigma_data`
  is the data's standard deviation the edm parameterization assumes.
  """
  if name not in SCHEDULES:
    raise InputError("diffusion.schedule",
                     f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
  if num_timesteps < 1:
    raise InputError("diffusion.num_timesteps",
                     f"must be at least 1, got {num_timesteps}")
  if not sigma_data > 0:
    raise InputError("diffusion.sigma_data", f"must be > 0 (or 0 in a training config: "
                     f"measured from the data), got {sigma_data!r}")
  betas = SCHEDULES[name](num_timesteps, beta_start, beta_end)
  alphas_cumprod = np.cumprod(1.0 - betas)
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      timesteps=jnp.arange(num_timesteps, dtype=jnp.int32),
      num_train_timesteps=num_timesteps, sigma_data=float(sigma_data))


def schedule_from_config(d):
  """The training schedule of a `config.diffusion` block (runs saved before
  `diffusion.sigma_data` existed assumed `SIGMA_DATA`)."""
  return make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end,
                       float(d.get("sigma_data", SIGMA_DATA)))


def respace(schedule, num_steps, spacing="uniform"):
  """Keeps `num_steps` indices of `schedule` (improved-DDPM respacing).

  The kept cumulative alphas are copied unchanged and the new betas are
  1 - abar_k / abar_{k-1} (with abar_{-1} = 1), so the respaced chain has the
  same marginals q(x_t | x_0) at the kept timesteps.

  Spacings (K is the length of `schedule`, n = num_steps):
    uniform:  indices 0, K//n, 2*K//n, ..., (n-1)*(K//n) ("leading" spacing).
      With DDIM this reproduces MONAI's / diffusers' DDIMScheduler with
      steps_offset=0 and set_alpha_to_one=True step for step: their `step`
      always goes from t to t - T//n and uses abar = 1 below t = 0. (MONAI 1.6's
      `set_timesteps` lists round(linspace(T-1, 0, n)) instead, but its `step`
      still jumps by T//n, so only this spacing is a consistent match.)
    linspace: indices round(linspace(0, K-1, n)), which includes K-1; this is
      improved-DDPM's "uniform" section spacing and the list MONAI 1.6's
      `set_timesteps` produces.
    karras:   the noise levels sigma = sqrt((1 - abar) / abar) of Karras et al. (2022,
      eq. 5, rho = `KARRAS_RHO`) from the chain's largest to its smallest, each taken at
      the index of the nearest log sigma, made distinct: most steps where the noise is
      small. It reaches index 0 (sigma about 0.01 for the linear schedule), where a
      uniform walk of 25 steps stops at index 40 (sigma 0.14): the levels where the fine
      detail of a low-variance target (an inpainting residual) stands above the noise.

  Must be called outside `jit` (the subset is chosen on the host).
  """
  size = schedule.betas.shape[0]
  if not 1 <= num_steps <= size:
    raise InputError("sampling.steps",
                     f"must be in [1, {size}], got {num_steps}")
  if spacing == "uniform":
    keep = np.arange(num_steps) * (size // num_steps)
  elif spacing == "linspace":
    keep = np.round(np.linspace(0, size - 1, num_steps)).astype(np.int64)
  elif spacing == "karras":
    keep = karras_indices(schedule.alphas_cumprod, num_steps)
  else:
    raise InputError("sampling.spacing",
                     f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
  alphas_cumprod = np.asarray(schedule.alphas_cumprod)[keep]
  prev = np.concatenate([[1.0], alphas_cumprod[:-1].astype(np.float64)])
  betas = 1.0 - alphas_cumprod.astype(np.float64) / prev
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      timesteps=jnp.asarray(np.asarray(schedule.timesteps)[keep], jnp.int32),
      num_train_timesteps=schedule.num_train_timesteps, sigma_data=schedule.sigma_data)


def karras_indices(alphas_cumprod, num_steps, rho=KARRAS_RHO):
  """(num_steps,) increasing distinct indices of the `karras` spacing (see `respace`)."""
  abar = np.asarray(alphas_cumprod, np.float64)
  size = abar.shape[0]
  log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))  # increases with the index
  if num_steps == 1:
    return np.asarray([size - 1])
  lo, hi = np.exp(log_sigma[0]) ** (1 / rho), np.exp(log_sigma[-1]) ** (1 / rho)
  wanted = np.log((lo + np.linspace(0.0, 1.0, num_steps) * (hi - lo)) ** rho)
  nearest = np.abs(log_sigma[None, :] - wanted[:, None]).argmin(axis=1)
  steps = np.arange(num_steps)
  keep = np.maximum.accumulate(nearest - steps) + steps  # strictly increasing
  return np.minimum(keep, size - num_steps + steps).astype(np.int64)


def equivalent_timesteps(chain_train, model_train):
  """(T,) int32: for each timestep of `chain_train`, the timestep of `model_train` at the
  same noise level (the nearest cumulative alpha).

  A sampler walks one chain and tells each network its timestep; a network trained with
  another schedule (say 2000 steps where the chain has 1000) must be told the timestep
  of its own schedule at which it saw that noise level, not the chain's number. Both are
  full training schedules (`make_schedule`); identical ones give `arange(T)`.
  """
  chain = np.asarray(chain_train.alphas_cumprod, np.float64)
  model = np.asarray(model_train.alphas_cumprod, np.float64)
  order = np.argsort(model)  # alphas_cumprod decreases with t; searchsorted needs ascending
  pos = np.clip(np.searchsorted(model[order], chain), 1, len(model) - 1)
  lo, hi = order[pos - 1], order[pos]
  nearest = np.where(np.abs(model[lo] - chain) <= np.abs(model[hi] - chain), lo, hi)
  return np.asarray(nearest, np.int32)


def _at(values, t, ndim):
  """values[t] reshaped to broadcast against an array of rank `ndim`.

  t is a scalar index or a (B,) vector of indices matching the leading axis.
  """
  v = values[t]
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def check_parameterization(parameterization):
  if parameterization not in PARAMETERIZATIONS:
    raise InputError(
        "diffusion.parameterization",
        f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def check_noise_levels(noise_levels):
  if noise_levels not in NOISE_LEVELS:
    raise InputError("diffusion.noise_levels", f"unknown noise levels {noise_levels!r}; "
                     f"expected one of {NOISE_LEVELS}")


def q_sample(schedule, x0, t, noise):
  """Draws x_t ~ q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  abar = _at(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def edm_coefficients(abar, sigma_data=SIGMA_DATA):
  """(c_skip, c_out) of x0 = c_skip x_t + c_out F at cumulative alpha `abar`.

  With a = sqrt(abar), s = sqrt(1 - abar) and n = sqrt(s^2 + a^2 sigma_data^2) (the std of
  x_t): c_skip = a sigma_data^2 / n^2, c_out = s sigma_data / n. These are Karras et al.'s
  c_skip / a and c_out for sigma = s / a, the same preconditioning on this chain's scale.
  """
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  n2 = s * s + a * a * sigma_data**2
  return a * sigma_data**2 / n2, s * sigma_data / jnp.sqrt(n2)


def predict_x0_eps(schedule, parameterization, x_t, t, model_out):
  """Converts a network output into the predicted (x0, eps) pair."""
  check_parameterization(parameterization)
  abar = _at(schedule.alphas_cumprod, t, x_t.ndim)
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if parameterization == "eps":
    return (x_t - s * model_out) / a, model_out
  if parameterization == "x0":
    return model_out, (x_t - a * model_out) / s
  if parameterization == "edm":
    c_skip, c_out = edm_coefficients(abar, schedule.sigma_data)
    x0 = c_skip * x_t + c_out * model_out
    return x0, (x_t - a * x0) / s
  return a * x_t - s * model_out, a * model_out + s * x_t  # v


def training_target(schedule, parameterization, x0, noise, t):
  """What the network should output for x_t = q_sample(schedule, x0, t, noise)."""
  check_parameterization(parameterization)
  if parameterization == "eps":
    return noise
  if parameterization == "x0":
    return x0
  abar = _at(schedule.alphas_cumprod, t, x0.ndim)
  if parameterization == "edm":
    c_skip, c_out = edm_coefficients(abar, schedule.sigma_data)
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise
    return (x0 - c_skip * x_t) / c_out
  return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0  # v


def diffusion_loss(schedule, parameterization, model_out, x0, noise, t, weights=None):
  """Mean squared error between `model_out` and the training target (float32).

  With `weights` (broadcasting against x0), the weighted mean sum(w e^2) / sum(w).
  """
  target = training_target(schedule, parameterization, x0, noise, t)
  sq = jnp.square(model_out.astype(jnp.float32) - target.astype(jnp.float32))
  if weights is None:
    return jnp.mean(sq)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), sq.shape)
  return jnp.sum(weights * sq) / jnp.maximum(jnp.sum(weights), 1e-12)


def training_timesteps(schedule, key, num, noise_levels="uniform"):
  """(num,) int32 chain indices of training examples.

    uniform    t ~ U{0, ..., K-1} (DDPM): with a linear schedule of 1000 steps, 4 % of
               the examples have sigma = sqrt((1 - abar) / abar) below 0.14 and most above 1
    lognormal  log sigma ~ N(log sigma_data - 0.5, 1.2^2), at the index of the nearest log
               sigma: EDM's training distribution (Karras et al. 2022; P_mean = -1.2 for
               sigma_data = 0.5) on this chain, so most examples lie where the data's own
               detail meets the noise (sigma from sigma_data / 10 to 3 sigma_data)
  """
  check_noise_levels(noise_levels)
  size = schedule.betas.shape[0]
  if noise_levels == "uniform":
    return jax.random.randint(key, (num,), 0, size)
  abar = schedule.alphas_cumprod.astype(jnp.float32)
  log_sigma = 0.5 * (jnp.log1p(-abar) - jnp.log(abar))  # increases with the index
  wanted = (math.log(schedule.sigma_data) + LOGNORMAL_OFFSET
            + LOGNORMAL_STD * jax.random.normal(key, (num,)))
  upper = jnp.clip(jnp.searchsorted(log_sigma, wanted), 1, size - 1)
  lower = upper - 1
  nearer = jnp.abs(log_sigma[lower] - wanted) <= jnp.abs(log_sigma[upper] - wanted)
  return jnp.where(nearer, lower, upper).astype(jnp.int32)


def conditional_denoising_loss(schedule, parameterization, model, x0, cond, key, weights=None,
                               noise_levels="uniform"):
  """The training loss of a conditional network `model(concat(x_t, cond), t)`.

  t per example from `training_timesteps` (`noise_levels`; uniform: t ~ U{0, ..., K-1}),
  noise ~ N(0, I), x_t = q_sample(x0, t, noise); the
  network is told `schedule.timesteps[t]` and its output is scored by `diffusion_loss`
  (weighted per voxel by `weights`, if given). x0 is (B, ..., 1) and cond (B, ..., C),
  channels last.
  """
  t_key, noise_key, _ = jax.random.split(key, 3)  # a 3-way split, as the first trainer drew
  t = training_timesteps(schedule, t_key, x0.shape[0], noise_levels)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  out = model(jnp.concatenate([x_t, cond], axis=-1), schedule.timesteps[t])
  return diffusion_loss(schedule, parameterization, out.astype(jnp.float32), x0, noise, t,
                        weights)
