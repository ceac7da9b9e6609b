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
from tolerances import float32_tolerance

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


def _chain():
  from sciimg_jax.core.diffusion import schedules
  return schedules.schedule_from_config(ml_collections.ConfigDict(dict(
      schedule="linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02)))


@pytest.mark.parametrize("t", [5, 500, 990])
def test_untrained_x0_space_fusion_is_the_average(t):
  """fusion.space='x0': the members' epsilons go to x0 and the fused x0 back to epsilon;
  with a zero output layer that is the average, to the rounding of the two conversions."""
  n, chain = 3, _chain()
  rng = np.random.default_rng(t)
  cond = jnp.asarray(rng.normal(size=SHAPE + (5,)), jnp.float32)
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=n,
                                      rngs=nnx.Rngs(1))
  net, params = models.Network.split(module)
  denoisers = affine_denoisers(n)
  x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
  tt = jnp.full((SHAPE[0],), t, jnp.int32)
  got = jax.jit(fusion.fused_denoiser(denoisers, net, params, cond, chain=chain))(x, tt)
  mean = volume_denoisers.average(denoisers)(x, tt)
  s = np.sqrt(1 - float(chain.alphas_cumprod[t]))
  big = float(jnp.max(jnp.abs(x))) + max(float(jnp.max(jnp.abs(d(x, tt)))) for d in denoisers)
  # x0_i = (x - s eps_i) / a: 3 roundings of values up to big / a, then their mean (n);
  # back, (x - a x0) / s turns those errors times a / s and adds 3 roundings of values up to
  # big / s; the average itself rounds n terms
  tol = float32_tolerance(big / s, 6 + 2 * n)
  np.testing.assert_allclose(np.asarray(got), np.asarray(mean), rtol=0, atol=tol)


def test_x0_space_fusion_fuses_and_corrects_the_members_x0():
  """Once trained, fused x0 = mean(x0_i) + sum_i<n w_i (x0_i - x0_n) + lambda r, with the
  network's weights and residual computed from (x_t, cond, x0_1..x0_n): checked against
  that formula, and unlike the eps-space fusion of the same network."""
  from sciimg_jax.core.diffusion import schedules
  chain, lam = _chain(), 0.7
  module = fusion.create_fusion_model(TINY_NET, num_cond_channels=5, num_models=2,
                                      rngs=nnx.Rngs(0))
  net, params = models.Network.split(module)
  params = jax.tree.map(lambda p: p + 0.05, params)
  rng = np.random.default_rng(3)
  cond = jnp.asarray(rng.normal(size=(1,) + SHAPE + (5,)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(1,) + SHAPE), jnp.float32)
  eps = [jnp.asarray(rng.normal(size=(1,) + SHAPE), jnp.float32) for _ in range(2)]
  t = jnp.array([300], jnp.int32)
  got = np.asarray(fusion.fused_eps(net, params, x, cond, eps, t, lam, chain=chain))
  abar = float(chain.alphas_cumprod[300])
  a, s = np.sqrt(abar), np.sqrt(1 - abar)
  x0s = [schedules.predict_x0_eps(chain, "eps", x, t, e)[0] for e in eps]  # its inputs
  big = float(jnp.max(jnp.abs(x))) + max(float(jnp.max(jnp.abs(e))) for e in eps)
  for x0, e in zip(x0s, eps):  # the conversion: 3 roundings of values up to big / a
    np.testing.assert_allclose(np.asarray(x0), (np.asarray(x) - s * np.asarray(e)) / a,
                               rtol=0, atol=float32_tolerance(big / a, 3))
  inputs = jnp.concatenate([x[..., None], cond, jnp.stack(x0s, -1)], -1)
  out = np.asarray(net(params, inputs, t), np.float64)
  x0s = [np.asarray(v, np.float64) for v in x0s]
  fused_x0 = (x0s[0] + x0s[1]) / 2 + out[..., 0] * (x0s[0] - x0s[1]) + lam * out[..., 1]
  expected = (np.asarray(x, np.float64) - a * fused_x0) / s
  # the fused x0: ~6 roundings of values up to m; back to epsilon they count a / s times,
  # with 3 more roundings of values up to (|x| + a m) / s
  m = float(np.max(np.abs(x0s))) * (1 + 2 * np.max(np.abs(out[..., 0]))) + lam * np.max(
      np.abs(out[..., 1]))
  tol = float32_tolerance((float(jnp.max(jnp.abs(x))) + a * m) / s, 9)
  np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
  assert float(np.max(np.abs(out[..., 1]))) * lam * a / s > 100 * tol  # the residual acts
  in_eps = np.asarray(fusion.fused_eps(net, params, x, cond, eps, t, lam))
  assert float(np.max(np.abs(in_eps - got))) > 100 * tol


def test_fusion_space_is_checked():
  from configs.ensembler import fusion as fusion_configs
  from sciimg_jax.core.errors import InputError
  c = fusion_configs.get_config("sr+tiny")
  assert fusion.space_chain(c) is None  # eps, as released
  c.fusion.space = "x0"
  assert fusion.space_chain(c).alphas_cumprod.shape == (c.diffusion.num_timesteps,)
  c.fusion.space = "v"
  with pytest.raises(InputError, match="fusion.space: is 'v'; use one of eps, x0"):
    fusion.space_chain(c)


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


def _loss_task(loss_on, min_snr_gamma=0.0):
  """A fusion task without members or data: `member_eps` gives fixed epsilons."""
  from sciimg_jax.ensembler import fusion_task
  task = fusion_task.FusionTask.__new__(fusion_task.FusionTask)
  task.config = ml_collections.ConfigDict(dict(fusion=dict(
      residual_scale=1.0, l1_weight=0.0, l2_weight=1.0, loss_on=loss_on,
      min_snr_gamma=min_snr_gamma, variant="eps")))
  task.chain = _chain()
  eps = [jax.random.normal(jax.random.key(i), (3, 8, 8, 8)) for i in range(2)]
  task.member_eps = lambda frozen, x_t, cond, t: (eps, None)
  task.rollout_fraction, task.space_chain = 0.0, None
  return task, eps


def test_the_x0_loss_is_the_fused_x0s_squared_error():
  """fusion.loss_on='x0': L2 of (x_t - sqrt(1 - abar) eps_fused) / sqrt(abar) - x0, checked
  against that formula with the untrained fusion (fused = the average)."""
  from sciimg_jax.core.diffusion import schedules
  task, eps = _loss_task("x0")
  net = fusion.create_fusion_model(TINY_NET, num_cond_channels=2, num_models=2, rngs=nnx.Rngs(0))
  x0 = jax.random.uniform(jax.random.key(7), (3, 8, 8, 8, 1), minval=-1, maxval=1)
  batch = {"target": x0, "cond": jnp.zeros((3, 8, 8, 8, 2))}
  key = jax.random.key(11)
  loss, aux = nnx.jit(task.loss)(net, batch, key, None)
  t_key, noise_key = jax.random.split(key)  # as the loss draws them
  t = jax.random.randint(t_key, (3,), 0, 1000)
  noise = jax.random.normal(noise_key, x0.shape)
  x_t = schedules.q_sample(task.chain, x0, t, noise)[..., 0]
  abar = task.chain.alphas_cumprod[t].reshape(-1, 1, 1, 1)
  x0_hat = (x_t - jnp.sqrt(1 - abar) * (eps[0] + eps[1]) / 2) / jnp.sqrt(abar)
  expected = jnp.mean(jnp.square(x0_hat - x0[..., 0]))
  # each x0 error: ~8 operations per side on values <= (|x_t| + |eps|) / sqrt(abar); its
  # square moves by 2 |err| that much; the mean adds 3 x 8^3 terms of at most max err^2
  err = float(jnp.max(jnp.abs(x0_hat - x0[..., 0])))
  scale = float(jnp.max(1 / jnp.sqrt(abar)) * (jnp.max(jnp.abs(x_t)) + 4))
  tol = 2 * err * float32_tolerance(scale, 2 * 8) + float32_tolerance(err ** 2, 2 * 3 * 8 ** 3)
  np.testing.assert_allclose(float(aux["l2"]), float(expected), rtol=0, atol=tol)
  eps_task, _ = _loss_task("eps")
  assert not np.isclose(float(nnx.jit(eps_task.loss)(net, batch, key, None)[1]["l2"]),
                        float(expected))


def test_fusion_loss_settings_are_checked():
  from configs.ensembler import fusion as fusion_configs
  from sciimg_jax.core.errors import InputError
  from sciimg_jax.ensembler import fusion_task
  c = fusion_configs.get_config("sr+tiny")
  c.fusion.members = ("a", "b")
  c.fusion.loss_on = "v"
  with pytest.raises(InputError, match="fusion.loss_on: is 'v'"):
    fusion_task.check_config(c)
  c.fusion.loss_on, c.fusion.min_snr_gamma = "x0", 1.0
  with pytest.raises(InputError, match="fusion.min_snr_gamma: weights an epsilon loss"):
    fusion_task.check_config(c)


def _rollout_task(steps=6, clip=1.0):
  """A loss task whose members' average is a fixed affine map of x_t (no data, no members)."""
  from sciimg_jax.core.diffusion import sampling_config
  from sciimg_jax.core.diffusion import schedules
  task, eps = _loss_task("x0")
  task.config.sampling = ml_collections.ConfigDict(dict(
      steps=steps, spacing="uniform", stepper="ddim", eta=0.0, eta_band=(), clip_x0=clip,
      data_consistency=False))
  task.walk = sampling_config.stage(task.config.sampling)
  task.walk_chain = schedules.respace(task.chain, steps, "uniform")
  task.pool, task.rollout_fraction = None, 1.0
  task.average_eps = lambda frozen, x, cond, t: 0.3 * x + 0.001 * t.reshape(-1, 1, 1, 1, 1)
  return task


def test_a_rollout_is_the_average_walk_stopped_at_a_visited_step():
  """`FusionTask.rollout`: DDIM steps of the members' average from noise at index K-1 down to
  index k + 1 (k drawn from its key), checked against the steps taken one by one."""
  from sciimg_jax.core.diffusion import steppers
  task = _rollout_task()
  x0 = jnp.zeros((2, 4, 4, 4, 1))
  chain = task.walk_chain
  seen = set()
  for seed in range(6):
    key = jax.random.key(seed)
    x_k, t = jax.jit(lambda k: task.rollout(None, x0, None, k))(key)
    k_key, noise_key, walk_key = jax.random.split(key, 3)
    k = int(jax.random.randint(k_key, (), 0, 6))
    x = jax.random.normal(noise_key, x0.shape)
    for i in range(5, k, -1):
      ti = jnp.full((2,), chain.timesteps[i], jnp.int32)
      x = steppers.ddim_step(chain, "eps", x, i, task.average_eps(None, x, None, ti),
                             jax.random.fold_in(walk_key, i), clip_x0=1.0)
    # 5 steps of ~10 elementwise operations on values up to |x| / sqrt(abar) <= 1 / 0.01
    np.testing.assert_allclose(x_k, x, rtol=0, atol=float32_tolerance(100 * 4, 5 * 10))
    np.testing.assert_array_equal(t, np.full(2, chain.timesteps[k]))
    seen.add(k)
  assert len(seen) > 2  # the seeds reach several steps


def test_a_rollout_batch_trains_on_the_epsilon_its_x_t_implies():
  """With rollout_fraction=1 the x0 loss scores the fused x0 at the rollout's x_k against
  the true x0; with 0 the batch is the q(x_t | x0) one, as before the key existed."""
  from sciimg_jax.ensembler import fusion_task
  task = _rollout_task()
  net = fusion.create_fusion_model(TINY_NET, num_cond_channels=2, num_models=2, rngs=nnx.Rngs(0))
  x0 = jax.random.uniform(jax.random.key(7), (3, 8, 8, 8, 1), minval=-1, maxval=1)
  batch = {"target": x0, "cond": jnp.zeros((3, 8, 8, 8, 2))}
  key = jax.random.key(11)
  loss, aux = nnx.jit(task.loss)(net, batch, key, None)
  assert float(aux["rollout"]) == 1.0
  _, roll_key = jax.random.split(jax.random.fold_in(key, fusion_task.ROLLOUT_STREAM))
  x_k, t = task.rollout(None, x0, None, roll_key)
  abar = task.chain.alphas_cumprod[t].reshape(-1, 1, 1, 1)
  eps = task.member_eps(None, None, None, None)[0]  # the fixed members' epsilons
  x0_hat = (x_k[..., 0] - jnp.sqrt(1 - abar) * (eps[0] + eps[1]) / 2) / jnp.sqrt(abar)
  expected = jnp.mean(jnp.square(x0_hat - x0[..., 0]))
  err = float(jnp.max(jnp.abs(x0_hat - x0[..., 0])))
  scale = float(jnp.max(1 / jnp.sqrt(abar)) * (jnp.max(jnp.abs(x_k)) + 4))
  # the x0 error by two routes (via the implied epsilon, and directly): 2 x 16 operations
  # of values up to `scale`, squared and averaged over 3 x 8^3 terms
  tol = 2 * err * float32_tolerance(scale, 2 * 16) + float32_tolerance(err ** 2, 2 * 3 * 8 ** 3)
  np.testing.assert_allclose(float(aux["l2"]), float(expected), rtol=0, atol=tol)
  task.rollout_fraction = 0.0
  plain, _ = _loss_task("x0")
  np.testing.assert_array_equal(nnx.jit(task.loss)(net, batch, key, None)[1]["l2"],
                                nnx.jit(plain.loss)(net, batch, key, None)[1]["l2"])


@pytest.mark.parametrize("ratio,members,message", [
    (1.5, ("a", "b"), "fusion.rollout_fraction: is 1.5; the share"),
    (-0.1, ("a", "b"), "fusion.rollout_fraction: is -0.1; the share"),
    (0.5, (), "fusion.rollout_fraction: rolls out the trained 2D models' own walk"),
])
def test_rollout_settings_are_checked(ratio, members, message):
  from configs.ensembler import fusion as fusion_configs
  from sciimg_jax.core.errors import InputError
  from sciimg_jax.ensembler import fusion_task
  c = fusion_configs.get_config("sr+tiny")
  c.fusion.members, c.fusion.rollout_fraction = members, ratio
  with pytest.raises(InputError, match=message):
    fusion_task.check_config(c)
