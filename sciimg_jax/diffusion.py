"""Gaussian diffusion: noise schedules, training targets and one shared sampler.

A `Schedule` holds the betas and cumulative alphas of a chain of K steps. Index i
in 0..K-1 addresses the chain; `schedule.timesteps[i]` is the original training
timestep at that index, which is what the network is told. A freshly made
schedule has `timesteps == arange(K)`; `respace` keeps a subset of them for fast
sampling (improved DDPM, Nichol & Dhariwal 2021).

Network outputs are read in one of three parameterizations:
  eps: the noise,  x0: the clean image,
  v:   sqrt(abar) * eps - sqrt(1 - abar) * x0   (Salimans & Ho 2022).

`sample` runs a stepper (DDPM ancestral or DDIM) from index `start_index` down
to 0 inside one `jax.lax.fori_loop`. Denoisers and inpainting plug in through
`model_fn` and `post_step_fn`; this module knows nothing about either.
"""

import math

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.errors import InputError

PARAMETERIZATIONS = ("eps", "x0", "v")


@struct.dataclass
class Schedule:
  """The per-index constants of a diffusion chain."""
  betas: jax.Array           # (K,) float32 betas of this (possibly respaced) chain.
  alphas_cumprod: jax.Array  # (K,) float32.
  timesteps: jax.Array       # (K,) int32 original training timestep of each index.
  num_train_timesteps: int = struct.field(pytree_node=False)


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
                  beta_end=0.02):
  """Returns the full training schedule `name` with `num_timesteps` steps.

  The constants are computed in float64 on the host and stored as float32.
  """
  if name not in SCHEDULES:
    raise InputError("diffusion.schedule",
                     f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
  if num_timesteps < 1:
    raise InputError("diffusion.num_timesteps",
                     f"must be at least 1, got {num_timesteps}")
  betas = SCHEDULES[name](num_timesteps, beta_start, beta_end)
  alphas_cumprod = np.cumprod(1.0 - betas)
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      timesteps=jnp.arange(num_timesteps, dtype=jnp.int32),
      num_train_timesteps=num_timesteps)


def schedule_from_config(d):
  """The training schedule of a `config.diffusion` block."""
  return make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)


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

  Must be called outside `jit` (the subset is chosen on the host).
  """
  size = schedule.betas.shape[0]
  if not 1 <= num_steps <= size:
    raise InputError("diffusion.sample_steps",
                     f"must be in [1, {size}], got {num_steps}")
  if spacing == "uniform":
    keep = np.arange(num_steps) * (size // num_steps)
  elif spacing == "linspace":
    keep = np.round(np.linspace(0, size - 1, num_steps)).astype(np.int64)
  else:
    raise InputError("diffusion.spacing",
                     f"unknown spacing {spacing!r}; expected 'uniform' or 'linspace'")
  alphas_cumprod = np.asarray(schedule.alphas_cumprod)[keep]
  prev = np.concatenate([[1.0], alphas_cumprod[:-1].astype(np.float64)])
  betas = 1.0 - alphas_cumprod.astype(np.float64) / prev
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      timesteps=jnp.asarray(np.asarray(schedule.timesteps)[keep], jnp.int32),
      num_train_timesteps=schedule.num_train_timesteps)


def _at(values, t, ndim):
  """values[t] reshaped to broadcast against an array of rank `ndim`.

  t is a scalar index or a (B,) vector of indices matching the leading axis.
  """
  v = values[t]
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _check_parameterization(parameterization):
  if parameterization not in PARAMETERIZATIONS:
    raise InputError(
        "diffusion.parameterization",
        f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def q_sample(schedule, x0, t, noise):
  """Draws x_t ~ q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  abar = _at(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def predict_x0_eps(schedule, parameterization, x_t, t, model_out):
  """Converts a network output into the predicted (x0, eps) pair."""
  _check_parameterization(parameterization)
  abar = _at(schedule.alphas_cumprod, t, x_t.ndim)
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if parameterization == "eps":
    return (x_t - s * model_out) / a, model_out
  if parameterization == "x0":
    return model_out, (x_t - a * model_out) / s
  return a * x_t - s * model_out, a * model_out + s * x_t  # v


def training_target(schedule, parameterization, x0, noise, t):
  """What the network should output for x_t = q_sample(schedule, x0, t, noise)."""
  _check_parameterization(parameterization)
  if parameterization == "eps":
    return noise
  if parameterization == "x0":
    return x0
  abar = _at(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0  # v


def diffusion_loss(schedule, parameterization, model_out, x0, noise, t):
  """Mean squared error between `model_out` and the training target (float32)."""
  target = training_target(schedule, parameterization, x0, noise, t)
  diff = model_out.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


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


@struct.dataclass
class Resampling:
  """RePaint resampling (Lugmayr et al. 2022), with loop counts that may vary per voxel.

  After the main step at every anchor index a (a % jump_length == 0 and
  a + jump_length - 1 <= start), the chain goes `jump_length` steps back up with
  q(x_m | x_{m-1}) and down again, up to `max_loops` times. `loops_fn(x0_hat, a)`
  returns how many of those loops each voxel takes part in (an int array that
  broadcasts against x; x0_hat is the model's x0 estimate of the anchor's main
  step); a voxel sitting a loop out keeps its value, and a loop in which no voxel
  takes part is skipped without evaluating the model. `loops_fn=None` means every
  voxel takes every loop (RePaint's fixed schedule).
  """
  jump_length: int = struct.field(pytree_node=False, default=1)
  max_loops: int = struct.field(pytree_node=False, default=0)
  loops_fn: object = struct.field(pytree_node=False, default=None)


def resampling_ops(start_index, resampling):
  """The walk as rows (index, is_down, loop): loop 0 is the main pass, 1.. the RePaint loops."""
  j, rows = resampling.jump_length, []
  for a in range(start_index, -1, -1):
    rows.append((a, 1, 0))
    if resampling.max_loops and a % j == 0 and a + j - 1 <= start_index:
      for r in range(1, resampling.max_loops + 1):
        rows += [(m, 0, r) for m in range(a, a + j)]            # up: level m-1 -> m
        rows += [(m, 1, r) for m in range(a + j - 1, a - 1, -1)]  # down: level m -> m-1
  return np.asarray(rows, np.int32)


def sample(model_fn, schedule, x_init, key, *, parameterization="eps",
           stepper="ddim", eta=0.0, start_index=None, post_step_fn=None,
           clip_x0=None, resampling=None):
  """Runs the reverse chain from index `start_index` (default K-1) down to 0.

  Args:
    model_fn: (x_t, t_model) -> model_out, with t_model the int32 (batch,)
      training timestep `schedule.timesteps[i]` (for a volume, one entry per
      leading-axis slice, all equal).
    schedule: the (usually respaced) chain to walk.
    x_init: x at index `start_index`, e.g. standard normal noise.
    key: the step at index i uses `jax.random.fold_in(key, i)`.
    parameterization: how to read model_out: eps | x0 | v.
    stepper: a key of STEPPERS.
    eta: DDIM noise scale.
    start_index: the first index to denoise; may be traced unless `resampling`.
    post_step_fn: optional (x_prev, i, key_i) -> x_prev applied after each
      step to index i - 1 (e.g. known-region replacement). Its key is
      `jax.random.fold_in(fold_in(key, i), 1)`, independent of the noise the
      stepper drew, so it may draw fresh noise with it directly.
    clip_x0: None, or c to clip predicted x0 to [-c, c].
    resampling: None, or a `Resampling` (then `start_index` must be static).
      The main pass draws the same keys as without resampling; loop r of anchor
      a folds (a, r) into the keys.

  Returns:
    x at index -1, i.e. the sample.
  """
  if stepper not in STEPPERS:
    raise InputError("diffusion.stepper",
                     f"unknown stepper {stepper!r}; expected one of {sorted(STEPPERS)}")
  _check_parameterization(parameterization)
  step_fn = STEPPERS[stepper]
  if start_index is None:
    start_index = schedule.betas.shape[0] - 1

  def down(x, i, key_i):
    """x at index i -> x at index i - 1; also returns the x0 estimate."""
    t_model = jnp.full((x.shape[0],), schedule.timesteps[i], jnp.int32)
    model_out = model_fn(x, t_model)
    x_prev = step_fn(schedule, parameterization, x, i, model_out, key_i,
                     eta=eta, clip_x0=clip_x0)
    if post_step_fn is not None:
      x_prev = post_step_fn(x_prev, i, jax.random.fold_in(key_i, 1))
    return x_prev, model_out

  if resampling is None or not resampling.max_loops:
    def body(n, x):
      i = start_index - n
      return down(x, i, jax.random.fold_in(key, i))[0]
    return jax.lax.fori_loop(0, start_index + 1, body, x_init)

  def up(x, m, key_m):
    """x at index m - 1 -> x at index m, by q(x_m | x_{m-1})."""
    beta = schedule.betas[m]
    return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key_m, x.shape, x.dtype)

  def noised(x0, level, key_n):
    """A sample of q(x_level | x0); x0 itself at level -1."""
    t = jnp.full((x0.shape[0],), jnp.maximum(level, 0), jnp.int32)
    return jnp.where(level >= 0, q_sample(schedule, x0, t, jax.random.normal(key_n, x0.shape, x0.dtype)), x0)

  def run(carry, op):
    x, loops, x0_hat = carry
    i, is_down, r = op[0], op[1], op[2]
    key_op = jax.random.fold_in(key, i)
    key_op = jnp.where(r > 0, jax.random.fold_in(jax.random.fold_in(key_op, 7919), r), key_op)

    def main_step(x, loops, x0_hat):
      x_prev, model_out = down(x, i, key_op)
      x0_hat, _ = predict_x0_eps(schedule, parameterization, x, i, model_out)
      if resampling.loops_fn is not None:
        loops = jnp.broadcast_to(resampling.loops_fn(x0_hat, i), x.shape).astype(jnp.int32)
      return x_prev, loops, x0_hat

    def loop_step(x, loops, x0_hat):
      # Voxels sitting this loop out keep their value, but the network sees them at
      # the walk's current level: a fresh q-sample of their x0 estimate.
      takes_part = loops >= r
      level = jnp.where(is_down == 1, i, i - 1)
      x_in = jnp.where(takes_part, x, noised(x0_hat, level, jax.random.fold_in(key_op, 2)))
      x_new = jax.lax.cond(is_down == 1, lambda: down(x_in, i, key_op)[0], lambda: up(x_in, i, key_op))
      return jnp.where(takes_part, x_new, x), loops, x0_hat

    def skip(x, loops, x0_hat):
      return x, loops, x0_hat

    branch = jnp.where(r == 0, 0, jnp.where(jnp.any(loops >= r), 1, 2))
    return jax.lax.switch(branch, (main_step, loop_step, skip), x, loops, x0_hat), None

  ops = jnp.asarray(resampling_ops(int(start_index), resampling))
  loops0 = jnp.full(x_init.shape, resampling.max_loops, jnp.int32)
  (x, _, _), _ = jax.lax.scan(run, (x_init, loops0, jnp.zeros_like(x_init)), ops)
  return x
