"""Inpainting with a diffusion sampler: the known region is re-imposed at every step.

`known_region_replacement` gives a `post_step_fn` for `sampler.sample`: after the
step to index i-1, voxels outside the mask are replaced by a fresh sample of
q(x_{i-1} | x0_known) (RePaint, Lugmayr et al. 2022), and by x0_known itself after
the last step.
"""

import jax
import jax.numpy as jnp

from sciimg_jax.core.diffusion import schedules

# The condition channels of the inpainting slice models (in any order): the voided image and
# the mask of the unknown region.
CONDITIONS = ("t1n-voided", "mask")


def known_region_replacement(schedule, known, mask):
  """post_step_fn(x_prev, i, key) that fixes the region where `mask` == 0 to `known`."""

  def post_step(x_prev, i, key):
    prev = jnp.maximum(i - 1, 0)
    t = jnp.full((known.shape[0],), prev, jnp.int32)
    noisy_known = schedules.q_sample(schedule, known, t, jax.random.normal(key, known.shape, known.dtype))
    known_prev = jnp.where(i > 0, noisy_known, known)
    return mask * x_prev + (1.0 - mask) * known_prev

  return post_step
