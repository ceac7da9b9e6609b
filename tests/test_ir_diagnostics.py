"""Collapse diagnostics return the known values on constructed features."""

import jax.numpy as jnp
import numpy as np
import pytest

from sciimg_jax.ir import diagnostics
from tolerances import float32_tolerance


def orthonormal_centred(n, d, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d))
  q, _ = np.linalg.qr(x - x.mean(0))
  return q  # centred columns, orthonormal: every singular value is 1


def test_rank_one_features():
  rng = np.random.default_rng(0)
  x = np.outer(rng.normal(size=200), rng.normal(size=12)) + 5.0  # a constant offset is centred away
  assert diagnostics.effective_rank(x) == pytest.approx(1.0, abs=1e-9)
  assert diagnostics.pc1_share(x) == pytest.approx(1.0, abs=1e-9)
  assert diagnostics.effective_rank(np.full((50, 4), 1e6)) == 0.0  # no variation, not noise


@pytest.mark.parametrize("d", [2, 5, 16])
def test_isotropic_features_have_full_rank(d):
  x = orthonormal_centred(300, d) * 7.0
  assert diagnostics.effective_rank(x) == pytest.approx(d, rel=1e-6)
  assert diagnostics.pc1_share(x) == pytest.approx(1.0 / d, rel=1e-6)


def test_a_known_spectrum():
  q = orthonormal_centred(100, 3, seed=1)
  x = q * np.array([3.0, 1.0, 0.0])  # singular values 3, 1, 0
  p = np.array([0.75, 0.25])
  assert diagnostics.effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
  assert diagnostics.effective_rank(x) != pytest.approx(100 / 82, rel=1e-3)  # not (sum l)^2/sum l^2
  assert diagnostics.pc1_share(x) == pytest.approx(0.9, rel=1e-6)
  s = diagnostics.summary(x, "features")
  assert s == {"features_effective_rank": diagnostics.effective_rank(x),
               "features_pc1_share": diagnostics.pc1_share(x)}


# --- the collapse index on constructed logits ------------------------------------------------

def balanced(k, n):
  return np.repeat(np.arange(k), n // k)


def sum_zero_basis(k):
  """(k, k-1) orthonormal columns orthogonal to the all-ones vector."""
  q, _ = np.linalg.qr(np.eye(k) - 1.0 / k)
  return q[:, :k - 1]


@pytest.mark.parametrize("k", [3, 4, 6])
def test_balanced_labels_have_effective_rank_k_minus_one_and_index_zero(k):
  y = balanced(k, 60 * k)
  labels = diagnostics.one_hot(y, k)
  assert diagnostics.effective_rank(labels, centre_classes=True) == pytest.approx(k - 1, rel=1e-9)
  assert diagnostics.collapse_index(labels, y, clip=False) == pytest.approx(0.0, abs=1e-9)
  assert diagnostics.labels_reference(y, k)["logits_collapse_index"] == pytest.approx(0, abs=1e-9)


def test_the_index_is_zero_on_the_labels_up_to_what_softmax_and_naming_ignore():
  rng = np.random.default_rng(5)
  y = rng.integers(0, 5, 400)  # unequal classes: erank(Y_c) < 4
  labels = diagnostics.one_hot(y, 5)
  assert diagnostics.effective_rank(labels, centre_classes=True) < 4 - 1e-3
  q = sum_zero_basis(5)
  rotation = q @ np.linalg.qr(rng.normal(size=(4, 4)))[0] @ q.T + np.ones((5, 5)) / 5
  for same in (labels, 7.0 * labels - 3.0,                    # scale, constant offset
               labels + rng.normal(size=(400, 1)),            # a per-sample offset (softmax)
               labels + rng.normal(size=(1, 5)),              # a per-class offset (centred away)
               labels[:, ::-1],                               # the classes renamed
               labels @ rotation):                            # a rotation fixing the ones vector
    assert diagnostics.collapse_index(same, y, clip=False) == pytest.approx(0.0, abs=1e-9)
  assert diagnostics.collapse_index(labels @ rng.normal(size=(5, 5)), y) > 0.01  # not any map


def test_a_stretching_map_of_the_labels_gives_the_index_of_its_singular_values():
  # Not invariant to every invertible map: stretching one direction of the labels reads as
  # partial collapse, by exactly the effective rank of the stretched singular values.
  k, y = 4, balanced(4, 400)
  q = sum_zero_basis(k)
  a = np.array([4.0, 1.0, 0.5])
  logits = diagnostics.one_hot(y, k) @ q @ np.diag(a) @ q.T  # invertible on the labels' span
  p = a / a.sum()
  expect = (3 - np.exp(-(p * np.log(p)).sum())) / (3 - 1)
  assert diagnostics.collapse_index(logits, y) == pytest.approx(expect, rel=1e-9)
  assert 0.2 < expect < 0.5


def test_rank_one_and_constant_predictions_give_one():
  rng = np.random.default_rng(6)
  y = rng.integers(0, 4, 300)
  rank_one = np.outer(rng.normal(size=300), [2.0, -1.0, 0.5, 3.0]) + rng.normal(size=(1, 4))
  assert diagnostics.collapse_index(rank_one, y, clip=False) == pytest.approx(1.0, abs=1e-9)
  # A rank-one map of the labels: one class against the rest.
  assert diagnostics.collapse_index(diagnostics.one_hot(y, 4) * [1, 0, 0, 0], y,
                                    clip=False) == pytest.approx(1.0, abs=1e-9)
  # Constant logits, or rank one along the ones vector (a per-sample offset only): erank 0,
  # above 1 before clipping, 1 after.
  for constant in (np.tile([1.0, 2.0, 3.0, 4.0], (300, 1)),
                   rng.normal(size=(300, 1)) + np.zeros(4)):
    assert diagnostics.collapse_index(constant, y, clip=False) > 1
    assert diagnostics.collapse_index(constant, y) == 1.0


@pytest.mark.parametrize("k,n", [(3, 600), (4, 2000), (8, 800)])
def test_random_logits_give_the_documented_index(k, n):
  # Balanced labels: erank(Y_c) = k - 1. Gaussian logits, class-centred, are isotropic in
  # k - 1 dimensions; their singular values spread by sampling, and to first order in 1/n
  # E[ci] = (k + 1) / (8 (n - 1)) (diagnostics' docstring). 400 draws: the mean within four
  # standard errors, measured from the draws.
  y, rng = balanced(k, n), np.random.default_rng(k)
  ci = np.array([diagnostics.collapse_index(rng.normal(size=(n, k)), y, clip=False)
                 for _ in range(400)])
  expect = (k + 1) / (8 * (n - 1))
  assert abs(ci.mean() - expect) < 4 * ci.std(ddof=1) / np.sqrt(len(ci))
  assert ci.min() > -1e-12  # never more spread than balanced labels
  # Unequal classes: random logits are more spread than the labels, negative before clipping.
  y = np.repeat(np.arange(k), np.arange(1, k + 1) * (n // (k * (k + 1) // 2)))
  raw = diagnostics.collapse_index(rng.normal(size=(len(y), k)), y, clip=False)
  assert raw < 0 and diagnostics.collapse_index(rng.normal(size=(len(y), k)), y) == 0.0


def test_two_classes_have_no_index():
  y = np.array([0, 1] * 20)
  assert diagnostics.collapse_index(np.random.default_rng(0).normal(size=(40, 2)), y) is None
  assert "logits_collapse_index" not in diagnostics.labels_reference(y, 2)


def test_gradient_matrix_of_a_linear_model():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(6, 3)).astype(np.float32)
  x = rng.normal(size=(10, 4, 4, 6)).astype(np.float32)
  logits_fn = lambda batch: jnp.einsum("nhwc,ck->nk", batch, w)
  g = diagnostics.gradient_matrix(logits_fn, x)
  top = np.argmax(np.einsum("nhwc,ck->nk", x, w), -1)
  # each pixel's gradient is w[:, top] exactly; float32 sums 16 of them (one sign: relative)
  np.testing.assert_allclose(g, 16 * w[:, top].T, rtol=float32_tolerance(1.0, 16))


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
  assert 0 <= s["logits_collapse_index"] <= 1 and 1 <= s["logits_effective_rank"] <= 2 + 1e-9
  assert ("gradient_effective_rank" in s) == (name in baselines.LINEAR)


def test_a_linear_baselines_gradient_is_its_weights_over_standardised_bands():
  from sciimg_jax.ir import baselines  # noqa: PLC0415
  rng = np.random.default_rng(7)
  y = rng.integers(0, 3, 200)
  x = rng.normal(size=(3, 8))[y] * 3 + rng.normal(size=(200, 8)) * rng.uniform(0.5, 5, 8)
  model = baselines.make("logistic").fit(x, y)
  logits = baselines.logits(model, x)
  np.testing.assert_allclose(logits, model.decision_function(x))
  coef = model[-1].coef_  # (3, 8), on standardised bands
  expect = diagnostics.effective_rank(coef[logits.argmax(1)])
  out = baselines.diagnose("logistic", model, x, y)
  assert out["gradient_effective_rank"] == pytest.approx(expect, rel=1e-6)
  assert out["features_effective_rank"] == pytest.approx(
      diagnostics.effective_rank((x - x.mean(0)) / x.std(0)), rel=1e-9)
  assert out["logits_collapse_index"] == diagnostics.collapse_index(logits, y)
