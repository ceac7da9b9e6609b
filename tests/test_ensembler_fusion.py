"""Diff-Ensembler's 3D fusion network."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sciimg_jax.core import models
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.ensembler import fusion

SHAPE = (8, 8, 8)
TINY_NET = ml_collections.ConfigDict(dict(
    name="unet", channels=(4, 8), num_res_blocks=1, attention_levels=(False, False),
    num_head_channels=4, num_groups=2))


def affine_denoisers(n):
  """n different denoisers of x_t (deterministic from n)."""
  rng = np.random.default_rng(n)
  coefs = [(rng.normal(), rng.normal(size=SHAPE).astype(np.float32)) for _ in range(n)]
  return [lambda x, t, a=a, b=b: a * x + b for a, b in coefs]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_untrained_fusion_is_exactly_the_average(n):
  rng = np.random.default_rng(100 + n)
  conditions = jnp.asarray(rng.normal(size=SHAPE + (2,)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=SHAPE) > 0.3, jnp.float32)
  position = jnp.asarray(volumes.position_embedding(SHAPE))
  cond = jnp.concatenate([conditions, position, mask[..., None]], axis=-1)
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=6, num_models=n,
                                      rngs=nnx.Rngs(n))
  net, params = models.Network.split(module)
  denoisers = affine_denoisers(n)
  fused = fusion.fused_denoiser(denoisers, net, params, cond, residual_scale=0.7)
  x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
  t = jnp.full((SHAPE[0],), 17, jnp.int32)
  mean = jax.jit(volume_denoisers.average(denoisers))(x, t)
  np.testing.assert_array_equal(jax.jit(fused)(x, t), mean)  # bit for bit, not close
  assert np.std(np.asarray(mean)) > 0.1


def test_trained_weights_change_the_fused_epsilon():
  """Once its output layer is non-zero the network's weights and residual act."""
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=2,
                                      rngs=nnx.Rngs(0))
  net, params = models.Network.split(module)
  params = jax.tree.map(lambda p: p + 0.05, params)
  cond = jnp.zeros(SHAPE + (5,))
  denoisers = affine_denoisers(2)
  x = jnp.ones(SHAPE)
  t = jnp.zeros((SHAPE[0],), jnp.int32)
  out = fusion.fused_denoiser(denoisers, net, params, cond)(x, t)
  mean = volume_denoisers.average(denoisers)(x, t)
  assert float(jnp.abs(out - mean).mean()) > 1e-3


def test_fusion_needs_two_models():
  with pytest.raises(ValueError, match="at least 2 models"):
    fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=1, rngs=nnx.Rngs(0))


def feature_denoisers(n, width=3):
  """n denoisers giving (eps, decoder features) volumes, as the feature variant's members."""
  rng = np.random.default_rng(50 + n)
  feats = [jnp.asarray(rng.normal(size=SHAPE + (width,)), jnp.float32) for _ in range(n)]
  return [lambda x, t, d=d, f=f: jnp.concatenate([d(x, t)[..., None], f], -1)
          for d, f in zip(affine_denoisers(n), feats)]


@pytest.mark.parametrize("n", [2, 3])
def test_untrained_feature_variant_is_exactly_the_average(n):
  cond = jnp.asarray(np.random.default_rng(n).normal(size=SHAPE + (5,)), jnp.float32)
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=n,
                                      rngs=nnx.Rngs(n), feature_channels=3 * n)
  assert isinstance(module, fusion.FeatureFusion)
  net, params = models.Network.split(module)
  fused = fusion.fused_denoiser(feature_denoisers(n), net, params, cond, with_features=True)
  x = jnp.asarray(np.random.default_rng(9).normal(size=SHAPE), jnp.float32)
  t = jnp.full((SHAPE[0],), 5, jnp.int32)
  mean = jax.jit(volume_denoisers.average(affine_denoisers(n)))(x, t)
  np.testing.assert_array_equal(jax.jit(fused)(x, t), mean)


def test_features_reach_the_fused_epsilon_once_trained():
  """Through the zero-initialised strided convolutions at every encoder level."""
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=2,
                                      rngs=nnx.Rngs(0), feature_channels=6)
  net, params = models.Network.split(module)
  params = jax.tree.map(lambda p: p + 0.05, params)
  cond, x, t = jnp.zeros(SHAPE + (5,)), jnp.ones(SHAPE), jnp.zeros((SHAPE[0],), jnp.int32)
  a = fusion.fused_denoiser(feature_denoisers(2), net, params, cond, with_features=True)(x, t)
  other = [lambda x, t, d=d: d(x, t).at[..., 1:].multiply(-1.0) for d in feature_denoisers(2)]
  b = fusion.fused_denoiser(other, net, params, cond, with_features=True)(x, t)
  assert float(jnp.abs(a - b).mean()) > 1e-3
  adapters = [a.kernel[...].shape for a in module.adapters]
  assert adapters == [(3, 3, 3, 6, 4), (3, 3, 3, 6, 4)] and module.adapters[1].stride == (2, 2, 2)
