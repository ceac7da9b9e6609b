"""The one sampler: a reverse-diffusion walk under `jit`, plain or with RePaint loops.

`sample` runs a stepper (`steppers.STEPPERS`: DDPM ancestral or DDIM) from index
`start_index` of a (respaced) chain down to 0 inside one `jax.lax` loop. A
denoiser is any pure `model_fn(x_t, t) -> model_out` (a 2D network on a batch, or
a volume denoiser from `volume_denoisers`); whatever a method imposes after each
step (a known region, data consistency) plugs in as `post_step_fn`. With a
`Resampling`, the walk adds RePaint loops (`_repaint_walk`). This module knows
nothing about any method.

Random keys: the step at index i uses `fold_in(key, i)`; its post-step function
gets `fold_in(fold_in(key, i), POST_STEP_STREAM)`; loop r of anchor a uses
`fold_in(fold_in(fold_in(key, a), LOOP_STREAM), r)`, so adding loops leaves the
keys of the main pass unchanged.
"""

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion.steppers import MULTISTEP
from sciimg_jax.core.diffusion.steppers import STEPPERS
from sciimg_jax.core.errors import InputError

POST_STEP_STREAM = 1   # fold_in salt of the post-step function's key
SITTER_STREAM = 2      # fold_in salt of the noise shown for voxels sitting a loop out
LOOP_STREAM = 7919     # fold_in salt that separates RePaint loop keys from the main pass


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
  # Under `jax.vmap(..., axis_name=batch_axis_name)` (several samples at once): a loop is
  # skipped only when no voxel of any sample takes it. Without it, vmap would turn the
  # per-row branch into a select that runs every branch (two network calls a row).
  batch_axis_name: object = struct.field(pytree_node=False, default=None)


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


def band_eta(schedule, i, eta, eta_band):
  """The noise scale of the step at index i: `eta` inside the band of noise levels
  `eta_band` = (lo, hi) (every step for None), else 0."""
  if not eta_band:
    return eta
  abar = schedule.alphas_cumprod[i]
  sigma = jnp.sqrt((1.0 - abar) / abar)
  return jnp.where((sigma >= eta_band[0]) & (sigma <= eta_band[1]), eta, 0.0)


def check_stepper_loops(stepper, key="sampling.stepper"):
  """Stops unless `stepper` can run with RePaint loops (a multistep stepper cannot: a loop
  goes back up the chain, and its previous x0 estimate would belong to another level)."""
  if stepper in MULTISTEP:
    raise InputError(key, f"the multistep stepper {stepper!r} does not run with RePaint "
                     "loops; use ddim or ddpm, or pipeline.resampling.mode=none")


def sample(model_fn, schedule, x_init, key, *, parameterization="eps",
           stepper="ddim", eta=0.0, eta_band=None, start_index=None, stop_index=0,
           post_step_fn=None, clip_x0=None, resampling=None):
  """Runs the reverse chain from index `start_index` (default K-1) down to `stop_index`
  (default 0).

  Args:
    model_fn: (x_t, t_model) -> model_out, with t_model the int32 (batch,)
      training timestep `schedule.timesteps[i]` (for a volume, one entry per
      leading-axis slice, all equal).
    schedule: the (usually respaced) chain to walk.
    x_init: x at index `start_index`, e.g. standard normal noise.
    key: the step at index i uses `jax.random.fold_in(key, i)`.
    parameterization: how to read model_out: eps | x0 | v | edm.
    stepper: a key of STEPPERS (a multistep one, `MULTISTEP`, carries its previous x0
      estimate and runs without RePaint loops).
    eta: DDIM noise scale.
    eta_band: None (eta at every step), or (lo, hi): eta only at the steps whose noise
      level sigma = sqrt((1 - abar) / abar) (the chain's units) lies in [lo, hi], 0 at the
      others (EDM's S_tmin / S_tmax: fresh noise where the detail is made).
    start_index: the first index to denoise; may be traced unless `resampling`.
    stop_index: the last index to denoise; may be traced. Above 0 the walk stops part way
      (a rollout: x at index stop_index - 1, the input of the step at that index); with
      `resampling` it must be 0.
    post_step_fn: optional (x_prev, i, key_i) -> x_prev applied after each
      step to index i - 1 (e.g. known-region replacement). Its key is
      `fold_in(fold_in(key, i), POST_STEP_STREAM)`, independent of the noise the
      stepper drew, so it may draw fresh noise with it directly.
    clip_x0: None, or c to clip predicted x0 to [-c, c].
    resampling: None, or a `Resampling` (then `start_index` must be static).
      The main pass draws the same keys as without resampling; loop r of anchor
      a folds (a, r) into the keys.

  Returns:
    x at index stop_index - 1: the sample for the default 0.
  """
  if stepper not in STEPPERS:
    raise InputError("sampling.stepper",
                     f"unknown stepper {stepper!r}; expected one of {sorted(STEPPERS)}")
  schedules.check_parameterization(parameterization)
  step_fn = STEPPERS[stepper]
  if start_index is None:
    start_index = schedule.betas.shape[0] - 1

  def down(x, i, key_i):
    """x at index i -> x at index i - 1; also returns the x0 estimate."""
    t_model = jnp.full((x.shape[0],), schedule.timesteps[i], jnp.int32)
    model_out = model_fn(x, t_model)
    x_prev = step_fn(schedule, parameterization, x, i, model_out, key_i,
                     eta=band_eta(schedule, i, eta, eta_band), clip_x0=clip_x0)
    if post_step_fn is not None:
      x_prev = post_step_fn(x_prev, i, jax.random.fold_in(key_i, POST_STEP_STREAM))
    return x_prev, model_out

  looping = resampling is not None and resampling.max_loops
  if looping:
    check_stepper_loops(stepper)
    if not isinstance(stop_index, int) or stop_index != 0:
      raise ValueError("a walk with RePaint loops runs down to index 0 (stop_index=0)")
  num = start_index - stop_index + 1
  if stepper in MULTISTEP:
    return _multistep_walk(model_fn, schedule, parameterization, x_init, key, step_fn,
                           start_index, num, post_step_fn, clip_x0)
  if not looping:
    def body(n, x):
      i = start_index - n
      return down(x, i, jax.random.fold_in(key, i))[0]
    return jax.lax.fori_loop(0, num, body, x_init)
  return _repaint_walk(down, schedule, parameterization, x_init, key, int(start_index), resampling)


def _multistep_walk(model_fn, schedule, parameterization, x_init, key, step_fn, start_index,
                    num, post_step_fn, clip_x0):
  """The plain walk of a multistep stepper: the loop carries the previous x0 estimate."""
  def body(n, carry):
    x, prev_x0 = carry
    i = start_index - n
    key_i = jax.random.fold_in(key, i)
    model_out = model_fn(x, jnp.full((x.shape[0],), schedule.timesteps[i], jnp.int32))
    x_prev, x0 = step_fn(schedule, parameterization, x, i, model_out, key_i, clip_x0=clip_x0,
                         prev_x0=prev_x0, has_prev=n > 0)  # no estimate before the first step
    if post_step_fn is not None:
      x_prev = post_step_fn(x_prev, i, jax.random.fold_in(key_i, POST_STEP_STREAM))
    return x_prev, x0

  return jax.lax.fori_loop(0, num, body, (x_init, jnp.zeros_like(x_init)))[0]


def _repaint_walk(down, schedule, parameterization, x_init, key, start_index, resampling):
  """The walk of `sample` with RePaint loops: one `lax.scan` over `resampling_ops` rows.

  `down(x, i, key_i) -> (x_{i-1}, model_out)` is the plain walk's step. Each row is
  a main step (loop 0: it also sets the per-voxel loop counts), a loop step up or
  down, or a skipped loop that no voxel takes (no network call).
  """

  def up(x, m, key_m):
    """x at index m - 1 -> x at index m, by q(x_m | x_{m-1})."""
    beta = schedule.betas[m]
    return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key_m, x.shape, x.dtype)

  def noised(x0, level, key_n):
    """A sample of q(x_level | x0); x0 itself at level -1."""
    t = jnp.full((x0.shape[0],), jnp.maximum(level, 0), jnp.int32)
    return jnp.where(level >= 0, schedules.q_sample(schedule, x0, t, jax.random.normal(key_n, x0.shape, x0.dtype)), x0)

  def run(carry, op):
    x, loops, x0_hat = carry
    i, is_down, r = op[0], op[1], op[2]
    key_op = jax.random.fold_in(key, i)
    key_op = jnp.where(r > 0, jax.random.fold_in(jax.random.fold_in(key_op, LOOP_STREAM), r), key_op)

    def main_step(x, loops, x0_hat):
      x_prev, model_out = down(x, i, key_op)
      x0_hat, _ = schedules.predict_x0_eps(schedule, parameterization, x, i, model_out)
      if resampling.loops_fn is not None:
        loops = jnp.broadcast_to(resampling.loops_fn(x0_hat, i), x.shape).astype(jnp.int32)
      return x_prev, loops, x0_hat

    def loop_step(x, loops, x0_hat):
      # Voxels sitting this loop out keep their value, but the network sees them at
      # the walk's current level: a fresh q-sample of their x0 estimate.
      takes_part = loops >= r
      level = jnp.where(is_down == 1, i, i - 1)
      x_in = jnp.where(takes_part, x, noised(x0_hat, level, jax.random.fold_in(key_op, SITTER_STREAM)))
      x_new = jax.lax.cond(is_down == 1, lambda: down(x_in, i, key_op)[0], lambda: up(x_in, i, key_op))
      return jnp.where(takes_part, x_new, x), loops, x0_hat

    def skip(x, loops, x0_hat):
      return x, loops, x0_hat

    if resampling.loops_fn is None:  # every voxel takes every loop: nothing to skip
      taken = jnp.bool_(True)
    else:
      taken = jnp.any(loops >= r)
      if resampling.batch_axis_name is not None:
        taken = jax.lax.psum(taken.astype(jnp.int32), resampling.batch_axis_name) > 0
    branch = jnp.where(r == 0, 0, jnp.where(taken, 1, 2))
    return jax.lax.switch(branch, (main_step, loop_step, skip), x, loops, x0_hat), None

  ops = jnp.asarray(resampling_ops(start_index, resampling))
  loops0 = jnp.full(x_init.shape, resampling.max_loops, jnp.int32)
  (x, _, _), _ = jax.lax.scan(run, (x_init, loops0, jnp.zeros_like(x_init)), ops)
  return x
