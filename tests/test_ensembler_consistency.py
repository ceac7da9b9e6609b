"""Diff-Ensembler's super-resolution data consistency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from tolerances import float32_tolerance, max_abs


def test_avg_pool_and_projection():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 12, 4)).astype(np.float32)
  pooled = np.asarray(consistency.avg_pool(jnp.asarray(x), 4))
  block = x[4:8, 8:12, 0:4]   # a float32 mean of 64 terms: within 64 eps mean|term| of float64's
  np.testing.assert_allclose(pooled[1, 2, 0], block.mean(dtype=np.float64), rtol=0,
                             atol=float32_tolerance(np.abs(block).mean(), 64))
  y = rng.normal(size=pooled.shape).astype(np.float32)
  projected = consistency.project(jnp.asarray(x), jnp.asarray(y), 4)
  # two float32 4^3 block means (avg_pool(x) inside project, avg_pool here) + 3 elementwise ops
  tol = float32_tolerance(max_abs(x, y, projected), 2 * 64 + 3)
  np.testing.assert_allclose(consistency.avg_pool(projected, 4), y, atol=tol)
  detail = lambda v: np.asarray(v) - np.asarray(consistency.upsample_nearest(
      consistency.avg_pool(jnp.asarray(v), 4), 4))
  np.testing.assert_allclose(detail(projected), detail(x), atol=tol)  # only block means move


def test_sampled_volume_pools_to_the_low_resolution_input():
  """Whatever the denoiser says, the final sample's 4^3 block means are the input's."""
  schedule = schedules.respace(schedules.make_schedule("linear", 1000), 8)
  rng = np.random.default_rng(1)
  target = rng.normal(size=(16, 16, 8)).astype(np.float32)
  y = consistency.avg_pool(jnp.asarray(target), 4)
  model_fn = lambda x, t: jnp.sin(3.0 * x)   # any denoiser
  run = jax.jit(lambda key: sampler.sample(
      model_fn, schedule, jax.random.normal(key, target.shape), key,
      post_step_fn=consistency.low_pass_replacement(schedule, y, 4)))
  out = run(jax.random.key(0))
  # two float32 4^3 block means (in the last projection, and here), each within 64 eps times the
  # block's mean |voxel| (the last step moves block means by ~1e-2 only), + 3 elementwise ops
  tol = float32_tolerance(np.max(consistency.avg_pool(jnp.abs(out), 4)), 2 * 64 + 3)
  np.testing.assert_allclose(consistency.avg_pool(out, 4), y, atol=tol)
  assert np.abs(np.asarray(out) - np.asarray(consistency.upsample_nearest(y, 4))).mean() > 0.05


def test_factor_that_does_not_divide_the_shape_is_refused():
  consistency.check_factor((16, 16, 8), 4)
  with pytest.raises(InputError, match=r"shape \(16, 18, 8\) is not divisible by the "
                                       r"downsampling factor 4"):
    consistency.check_factor((16, 18, 8), 4)
