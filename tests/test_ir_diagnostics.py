"""Collapse diagnostics return the known values on constructed features."""

import jax.numpy as jnp
import numpy as np
import pytest

from sciimg_jax.ir import diagnostics


def orthonormal_centred(n, d, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d))
  q, _ = np.linalg.qr(x - x.mean(0))
  return q  # centred columns, orthonormal: every singular value is 1


def test_rank_one_features():
  rng = np.random.default_rng(0)
  x = np.outer(rng.normal(size=200), rng.normal(size=12)) + 5.0  # a constant offset is centred away
  assert diagnostics.effective_rank(x) == pytest.approx(1.0, abs=1e-6)
  assert diagnostics.participation_ratio(x) == pytest.approx(1.0, abs=1e-6)
  assert diagnostics.pc1_share(x) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("d", [2, 5, 16])
def test_isotropic_features_have_full_rank(d):
  x = orthonormal_centred(300, d) * 7.0
  assert diagnostics.effective_rank(x) == pytest.approx(d, rel=1e-6)
  assert diagnostics.participation_ratio(x) == pytest.approx(d, rel=1e-6)
  assert diagnostics.pc1_share(x) == pytest.approx(1.0 / d, rel=1e-6)


def test_a_known_spectrum():
  q = orthonormal_centred(100, 3, seed=1)
  x = q * np.array([3.0, 1.0, 0.0])  # singular values 3, 1, 0
  p = np.array([0.75, 0.25])
  assert diagnostics.effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
  assert diagnostics.participation_ratio(x) == pytest.approx(100 / 82, rel=1e-6)
  assert diagnostics.pc1_share(x) == pytest.approx(0.9, rel=1e-6)
  s = diagnostics.summary(x, "logits")
  assert set(s) == {"logits_effective_rank", "logits_participation_ratio", "logits_pc1_share"}


def test_gradient_matrix_of_a_linear_model():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(6, 3)).astype(np.float32)
  x = rng.normal(size=(10, 4, 4, 6)).astype(np.float32)
  logits_fn = lambda batch: jnp.einsum("nhwc,ck->nk", batch, w)
  g = diagnostics.gradient_matrix(logits_fn, x)
  top = np.argmax(np.einsum("nhwc,ck->nk", x, w), -1)
  np.testing.assert_allclose(g, 16 * w[:, top].T, rtol=1e-5)


def test_linear_probe_on_separable_and_on_random_features():
  rng = np.random.default_rng(3)
  y = rng.integers(0, 3, 300)
  x = np.eye(3)[y] * 4 + rng.normal(size=(300, 3)) * 0.3
  assert diagnostics.linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) == 1.0
  noise = rng.normal(size=(300, 3))
  assert diagnostics.linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.6


def test_classification_scores_against_hand_counts():
  y = np.array([0, 0, 0, 1, 1, 2])
  pred = np.array([0, 0, 1, 1, 1, 0])
  s = diagnostics.classification_scores(y, pred)
  assert s["accuracy"] == pytest.approx(4 / 6)
  assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
  f1 = [2 * (2 / 3) * (2 / 3) / (4 / 3), 2 * (2 / 3) * 1 / (5 / 3), 0.0]  # per class
  assert s["macro_f1"] == pytest.approx(np.mean(f1))


@pytest.mark.parametrize("name", ["pca_lda", "logistic", "random_forest"])
def test_baselines_separate_distinct_spectra(name):
  from sciimg_jax.ir import baselines  # noqa: PLC0415
  rng = np.random.default_rng(4)
  means = rng.normal(size=(3, 30)) * 2
  def patches(n):
    y = rng.integers(0, 3, n)
    x = means[y][:, None, None, :] + rng.normal(size=(n, 5, 5, 30)) * 0.5
    x[:, 0, 0] = 100.0  # only the centre pixel counts
    return x, y
  (tx, ty), (vx, vy) = patches(150), patches(60)
  s = baselines.evaluate(name, tx, ty, vx, vy, n_components=5)
  assert s["accuracy"] > 0.95 and s["macro_f1"] > 0.95
