"""Collapse diagnostics: how many directions a classifier's features, logits and gradients use.

For a matrix X (N samples x D dimensions), centred over samples, with singular values s_i
and covariance eigenvalues lambda_i = s_i^2 / N:

  effective rank (Roy & Vetterli 2007)  exp(H(p)),  p_i = s_i / sum_j s_j,  H the Shannon
                                        entropy (nats). 1 for rank one; D for an isotropic X.
  participation ratio                   (sum lambda_i)^2 / sum lambda_i^2. 1 for rank one;
                                        D for an isotropic X.
  PC1 share                             lambda_1 / sum lambda_i: the variance share of the
                                        first principal component (1.0 = one-dimensional).

A network that collapses onto a one-dimensional function of its input has logits (and
penultimate features) of effective rank near 1 and a PC1 share near 1. `gradient_matrix`
gives, per sample, the gradient of the predicted class's logit with respect to the input,
summed over pixels: an (N, bands) matrix whose effective rank tells how many spectral
directions the model uses. `linear_probe_accuracy` fits a logistic regression on training
features and scores it on held-out ones (scikit-learn): what the features still hold.
"""

import jax
import jax.numpy as jnp
import numpy as np


def singular_values(x):
  """Singular values of `x` (N, ...) flattened per sample and centred over samples."""
  x = np.asarray(x, np.float64)
  x = x.reshape(len(x), -1)
  x = x - x.mean(axis=0, keepdims=True)
  return np.linalg.svd(x, compute_uv=False)


def effective_rank(x, eps=1e-12):
  s = singular_values(x)
  if s.sum() <= eps:
    return 0.0
  p = s / s.sum()
  p = p[p > eps]
  return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(x, eps=1e-12):
  lam = singular_values(x) ** 2
  return float(lam.sum() ** 2 / lam.dot(lam)) if lam.sum() > eps else 0.0


def pc1_share(x, eps=1e-12):
  lam = singular_values(x) ** 2
  return float(lam[0] / lam.sum()) if lam.sum() > eps else 0.0


def summary(x, prefix):
  """{prefix_effective_rank, prefix_participation_ratio, prefix_pc1_share} of `x`."""
  return {f"{prefix}_effective_rank": effective_rank(x),
          f"{prefix}_participation_ratio": participation_ratio(x),
          f"{prefix}_pc1_share": pc1_share(x)}


def gradient_matrix(logits_fn, x):
  """(N, channels): d logit_{argmax} / d input, summed over the pixels of each sample.

  `logits_fn` maps a batch (N, ..., channels) to (N, classes).
  """
  def top_logit(xi):
    logits = logits_fn(xi[None])[0]
    return logits[jnp.argmax(jax.lax.stop_gradient(logits))]

  grads = jax.jit(jax.vmap(jax.grad(top_logit)))(jnp.asarray(x))
  return np.asarray(grads.reshape(grads.shape[0], -1, grads.shape[-1]).sum(axis=1))


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, seed=0):
  """Held-out accuracy of a logistic regression on standardised features."""
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
  probe.fit(np.asarray(train_features).reshape(len(train_features), -1), train_labels)
  return float(probe.score(np.asarray(test_features).reshape(len(test_features), -1), test_labels))


def classification_scores(y_true, y_pred):
  """Accuracy, balanced accuracy (mean per-class recall) and macro F1 (scikit-learn)."""
  from sklearn import metrics  # noqa: PLC0415
  return {"accuracy": float(metrics.accuracy_score(y_true, y_pred)),
          "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
          "macro_f1": float(metrics.f1_score(y_true, y_pred, average="macro"))}
