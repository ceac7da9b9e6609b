"""Super-resolution data consistency: the sample's average pool is the low-resolution input.

The low-resolution volume y is the target average-pooled by `factor` along every axis.
`low_pass_replacement` gives a `post_step_fn` for `sampler.sample` (the way
`known_region_replacement` serves inpainting): after the step to index i-1, the
factor^3-block means of x_{i-1} are replaced by those of a fresh sample of q(x_{i-1} | y),
sqrt(abar) y + sqrt(1 - abar) z / factor^1.5 (the block mean of white noise has that
standard deviation), and by y itself after the last step, so that
`avg_pool(sample, factor) == y` to float precision; the within-block detail is the model's.
"""

import jax
import jax.numpy as jnp

from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError


def check_factor(shape, factor, what="volume"):
  """Stops unless `factor` divides every axis of `shape`."""
  if factor < 1 or any(n % factor for n in shape):
    raise InputError(what, f"shape {tuple(shape)} is not divisible by the downsampling factor "
                     f"{factor} along every axis")


def avg_pool(x, factor):
  """(X, Y, Z) -> (X/f, Y/f, Z/f): means of factor^3 blocks."""
  X, Y, Z = x.shape
  f = factor
  return x.reshape(X // f, f, Y // f, f, Z // f, f).mean(axis=(1, 3, 5))


def upsample_nearest(y, factor):
  """(x, y, z) -> (f x, f y, f z): every voxel repeated over its block."""
  for axis in range(3):
    y = jnp.repeat(y, factor, axis=axis)
  return y


def project(x, y_low, factor):
  """x with its block means replaced by `y_low` (the detail within blocks is kept)."""
  return x + upsample_nearest(y_low - avg_pool(x, factor), factor)


def low_pass_replacement(schedule, y_low, factor):
  """post_step_fn(x_prev, i, key): block means of x_{i-1} from q(x_{i-1} | y_low) (module doc)."""

  def post_step(x_prev, i, key):
    prev = jnp.maximum(i - 1, 0)
    t = jnp.full((y_low.shape[0],), prev, jnp.int32)
    noise = jax.random.normal(key, y_low.shape, y_low.dtype) / factor ** 1.5
    noisy = schedules.q_sample(schedule, y_low, t, noise)
    return project(x_prev, jnp.where(i > 0, noisy, y_low), factor)

  return post_step
