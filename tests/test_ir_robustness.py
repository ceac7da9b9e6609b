"""Robustness strategies and spectral remedies: the identities each one must satisfy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.ir import classifier as ir_config
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import robustness
from tolerances import float32_tolerance, max_abs


def test_mixup_is_a_convex_combination_of_inputs_and_labels():
  x = jnp.arange(6, dtype=jnp.float32).reshape(6, 1, 1, 1) * jnp.ones((6, 2, 2, 3))
  t = jax.nn.one_hot(jnp.arange(6) % 3, 3)
  mx, mt = robustness.mixup(jax.random.key(0), x, t, 0.4)
  # float32, terms >= 0 (relative): 1 - lam, the sum of lam and it (x 1 and + 0 are exact)
  np.testing.assert_allclose(mt.sum(-1), 1.0, rtol=float32_tolerance(1.0, 2))
  lam_perm = jax.random.split(jax.random.key(0))
  lam = jax.random.beta(lam_perm[0], 0.4, 0.4)
  perm = jax.random.permutation(lam_perm[1], 6)
  # 1 - lam, two products and the sum, in mixup and here; terms >= 0 (relative)
  np.testing.assert_allclose(mx, lam * x + (1 - lam) * x[perm], rtol=float32_tolerance(1.0, 2 * 4))


def test_cutmix_labels_follow_the_pasted_area():
  x = jnp.arange(8, dtype=jnp.float32).reshape(8, 1, 1, 1) * jnp.ones((8, 10, 10, 2))
  t = jax.nn.one_hot(jnp.arange(8), 8)
  for seed in range(5):
    mx, mt = robustness.cutmix(jax.random.key(seed), x, t, 1.0)
    for i in range(8):
      own = float(jnp.mean(mx[i] == i))
      # the weight: the area's quotient and 1 - area; the mean: an exact count / 200
      assert float(mt[i, i]) == pytest.approx(own, abs=float32_tolerance(1.0, 3))  # = weight of i
      np.testing.assert_allclose(mt[i].sum(), 1.0, rtol=float32_tolerance(1.0, 3))  # + their sum


def test_band_dropout_zeroes_whole_bands():
  x = jnp.ones((64, 3, 3, 20))
  y = robustness.band_dropout(jax.random.key(0), x, 0.3)
  per_band = y.reshape(64, 9, 20)
  assert jnp.all((per_band == 0).all(1) | (per_band == 1).all(1))
  # not rounding: 1280 Bernoulli(0.3) draws, standard error 0.013 (0.05: ~4 of them)
  assert abs(float((per_band[:, 0] == 0).mean()) - 0.3) < 0.05


def test_off_diagonal_correlation():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(200, 4)) - 0)
  q = q - q.mean(0)
  q, _ = np.linalg.qr(q)
  # float32: a correlation is within (2 n + 5) eps of exact (a dot product of n terms, the
  # normalisation of its two columns: n / 2 + 2 each). The result sums the d^2 squares and
  # subtracts the sum of the d diagonal ones (sums <= d), over d (d - 1).
  d, n = 4, 200
  corr_ops = 2 * n + 5
  sums = float32_tolerance(d, d * d + d) / (d * (d - 1))
  # orthogonal columns: correlations 0, so squares <= (corr_ops eps)^2; diagonals cancel
  assert float(robustness.off_diagonal_correlation(jnp.asarray(q))) < (
      sums + float32_tolerance(1.0, corr_ops) ** 2)
  same = np.repeat(rng.normal(size=(200, 1)), 4, axis=1)
  # equal columns: every correlation is v / (v + 1e-5) (the function's eps), its square within
  # 2 corr_ops eps; (d^2 + d) / (d (d - 1)) of that after the difference
  v = same[:, 0].var()
  tol = float32_tolerance(1.0, (d * d + d) / (d * (d - 1)) * 2 * corr_ops) + sums
  assert float(robustness.off_diagonal_correlation(jnp.asarray(same))) == pytest.approx(
      (v / (v + 1e-5)) ** 2, abs=tol)


def test_spectral_transforms():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 40)).astype(np.float32) * 3 + 2
  s = robustness.snv(x)
  # float32: a row's mean and std (a mean, then a sum of squares) sum 40 terms, in snv and here
  # (4 x 40), on values <= |x| / std in standardised units, + a few elementwise ops
  tol = float32_tolerance(max_abs(x) / x.std(-1).min(), 4 * 40 + 8)
  np.testing.assert_allclose(s.mean(-1), 0, atol=tol)
  np.testing.assert_allclose(s.std(-1), 1, rtol=0, atol=tol)
  line = np.tile(np.arange(40, dtype=np.float32) * 0.5 + 1, (3, 1))
  # float32 (exact line values): the centre filters 9 samples <= |line|; the edges fit a quadratic
  # to 9 of them by least squares, ~9 roundings a coefficient times the condition number of the
  # scaled 9 x 3 Vandermonde system (14)
  np.testing.assert_allclose(robustness.derivative(line), 0.5, rtol=0,
                             atol=float32_tolerance(max_abs(line), 9 * 15))
  mixed = rng.normal(size=(500, 10)) @ rng.normal(size=(10, 40))
  whitener = robustness.PcaWhitener(mixed, 6)
  white = whitener(mixed)
  # fitted in float64, applied in float32: x - mean, then a product of fan-in 40 with the
  # float32 projection: each whitened value within err; a covariance entry moves by 2 |w| err
  err = float32_tolerance(max_abs(mixed - whitener.mean) * max_abs(whitener.projection), 40 + 2)
  np.testing.assert_allclose(np.cov(white.T), np.eye(6), atol=2 * max_abs(white) * err)


@pytest.fixture(scope="module")
def task(tmp_path_factory, data_cache):
  c = ir_config.get_config("tiny")
  c.data.cache_dir = str(data_cache / "ir")
  return classifier_task.PatchClassifierTask(c, tmp_path_factory.mktemp("robust"))


def loss_and_grad(task, params, graphdef, rest, batch, **robust):
  task.config.train.robust.update(robust)
  try:
    f = lambda p: task.loss(nnx.merge(graphdef, p, rest), batch, jax.random.key(0), None)[0]
    return jax.value_and_grad(f)(params)
  finally:
    task.config.train.robust.update({k: 0.0 for k in robust})


def untrained(task):
  """(graphdef, params, rest, batch of 16 training patches) of a fresh model."""
  graphdef, params, rest = nnx.split(task.create_model(nnx.Rngs(0), jnp.float32), nnx.Param, ...)
  x, y = task.arrays("train", limit=16)
  return graphdef, params, rest, {"x": jnp.asarray(x), "label": jnp.asarray(y)}


def test_sam_gradient_is_the_gradient_at_the_perturbed_weights(task):
  graphdef, params, rest, batch = untrained(task)
  _, g = loss_and_grad(task, params, graphdef, rest, batch)
  norm = float(jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g))))
  perturbed = jax.tree.map(lambda p, gi: p + 0.05 * gi / norm, params, g)
  _, expect = loss_and_grad(task, perturbed, graphdef, rest, batch)
  _, sam = loss_and_grad(task, params, graphdef, rest, batch, sam_rho=0.05)
  # The same float32 gradient on both sides, at weights equal up to the rounding of rho g / |g|:
  # an entry accumulates the forward's fan-ins and the backward's sum over the batch's pixels;
  # two sides. (The step rho itself moves the gradients by ~1e-2, 100x this.)
  fan_ins = sum(int(np.prod(p.shape[:-1])) for p in jax.tree.leaves(params) if p.ndim > 1)
  ops = 2 * (fan_ins + batch["x"][..., 0].size)
  for a, b in zip(jax.tree.leaves(sam), jax.tree.leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=0, atol=float32_tolerance(max_abs(b), ops))


def test_adversarial_examples_raise_the_loss(task):
  graphdef, params, rest, batch = untrained(task)
  clean, _ = loss_and_grad(task, params, graphdef, rest, batch)
  adv, _ = loss_and_grad(task, params, graphdef, rest, batch, adversarial_eps=0.1,
                         adversarial_mix=0.0)
  assert float(adv) > float(clean)
