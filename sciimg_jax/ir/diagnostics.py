"""Collapse diagnostics: how many directions a classifier's features, logits and gradients use.

One measure of dimension is used everywhere, the **effective rank** of Roy & Vetterli (2007,
"The effective rank: a measure of effective dimensionality", EUSIPCO): for a matrix X (N
samples x D dimensions), centred over samples, with singular values s_i,

  erank(X) = exp(H(p)),  p_i = s_i / sum_j s_j,  H(p) = -sum_i p_i log p_i  (nats).

It is 1 for a matrix of rank one, D for an isotropic one, and 0 for a matrix with no
variation. Beside it:

  PC1 share        lambda_1 / sum lambda_i (lambda_i = s_i^2): the variance share of the
                   first principal component (1.0 = one-dimensional).
  collapse index   ci(L) = (erank(Y_c) - erank(L_c)) / (erank(Y_c) - 1), clipped to [0, 1],
                   for a logit (or prediction) matrix L (N x K) of samples whose one-hot labels
                   are Y (N x K); the subscript c centres over samples and over classes
                   (`centre_logits`: softmax ignores a constant added to a sample's logits).
                   0 for the labels themselves (and anything at least as spread: a rotation or
                   permutation of the labels, random logits), 1 for a prediction of rank one
                   (or a constant one). For K classes of equal size, erank(Y_c) = K - 1
                   exactly, and random Gaussian logits give, before clipping,
                   ci = (K + 1) / (8 (N - 1)) on average to first order in 1/N (so 0.0003
                   for K = 4, N = 2000): the sampling spread of their singular values.
                   With unequal classes erank(Y_c) < K - 1 and random logits give ci < 0
                   before clipping, 0 after. Undefined (None) for two classes, where every
                   prediction is of rank one.

Logit diagnostics (`logit_summary`) are computed on the class-centred logits; features and
gradients are centred over samples only (`summary`, `effective_rank`).

A network that collapses onto a one-dimensional function of its input has logits (and
penultimate features) of effective rank near 1, a PC1 share near 1 and a collapse index near 1.
`gradient_matrix` gives, per sample, the gradient of the predicted class's logit with respect
to the input, summed over pixels: an (N, bands) matrix whose effective rank tells how many
spectral directions the model uses. `linear_probe_accuracy` fits a logistic regression on
training features and scores it on held-out ones (scikit-learn): what the features still hold.
`baselines.diagnose` gives the same diagnostics for a fitted scikit-learn model (the linear
reference of `spectra_job`).
"""

import jax
import jax.numpy as jnp
import numpy as np


def singular_values(x, centre_classes=False):
  """Singular values of `x` (N, ...) flattened per sample and centred over samples (and, with
  `centre_classes`, over the columns of each sample: `centre_logits`)."""
  x = np.asarray(x, np.float64)
  x = x.reshape(len(x), -1)
  scale = np.abs(x).max(initial=0.0)
  x = x - x.mean(axis=0, keepdims=True)
  if centre_classes:
    x = x - x.mean(axis=1, keepdims=True)
  s = np.linalg.svd(x, compute_uv=False)
  return np.where(s > 1e-10 * max(scale, 1e-300) * np.sqrt(x.size), s, 0.0)  # rounding: 0


def effective_rank(x, centre_classes=False):
  """Roy & Vetterli's effective rank of `x` (N, ...) centred over samples: exp of the Shannon
  entropy (nats) of the normalised singular values p_i = s_i / sum(s). 1 for rank one, D for
  an isotropic (N, D), 0 when `x` does not vary. The one definition of effective rank of the
  IR code (module docstring)."""
  s = singular_values(x, centre_classes)
  if s.sum() <= 0:
    return 0.0
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def pc1_share(x, centre_classes=False):
  lam = singular_values(x, centre_classes) ** 2
  return float(lam[0] / lam.sum()) if lam.sum() > 0 else 0.0


def summary(x, prefix):
  """{prefix_effective_rank, prefix_pc1_share} of `x` (features), centred over samples."""
  return {f"{prefix}_effective_rank": effective_rank(x), f"{prefix}_pc1_share": pc1_share(x)}


def one_hot(labels, num_classes):
  return np.eye(num_classes)[np.asarray(labels, int)]


def collapse_index(logits, labels, clip=True):
  """(erank(Y_c) - erank(L_c)) / (erank(Y_c) - 1), clipped to [0, 1] unless `clip` is False.

  `logits` (N, K), `labels` (N,) in 0..K-1; Y the one-hot labels; both class-centred
  (module docstring). None when erank(Y_c) is 1 (two classes): every prediction is then of
  rank one and the index says nothing.
  """
  logits = np.asarray(logits, np.float64)
  labels_rank = effective_rank(one_hot(labels, logits.shape[1]), centre_classes=True)
  if labels_rank - 1.0 < 1e-9:
    return None
  ci = (labels_rank - effective_rank(logits, centre_classes=True)) / (labels_rank - 1.0)
  return float(np.clip(ci, 0.0, 1.0)) if clip else float(ci)


def logit_summary(logits, labels):
  """{logits_effective_rank, logits_pc1_share, logits_collapse_index} of class-centred logits
  (N, K); the index is left out when it is undefined (two classes)."""
  out = {"logits_effective_rank": effective_rank(logits, centre_classes=True),
         "logits_pc1_share": pc1_share(logits, centre_classes=True)}
  ci = collapse_index(logits, labels)
  if ci is not None:
    out["logits_collapse_index"] = ci
  return out


def labels_reference(labels, num_classes):
  """The logit diagnostics of the one-hot labels themselves (reference (a))."""
  return logit_summary(one_hot(labels, num_classes), labels)


def gradient_matrix(logits_fn, x):
  """(N, channels): d logit_{argmax} / d input, summed over the pixels of each sample.

  `logits_fn` maps a batch (N, ..., channels) to (N, classes).
  """
  return pixel_sum(jax.jit(lambda x: top_logit_gradients(logits_fn, x))(jnp.asarray(x)))


def top_logit_gradients(logits_fn, x):
  """(N, ..., channels): d logit_{argmax} / d input of each sample of `x`; traceable (a caller
  that scores many parameter sets jits it once with the parameters as an argument)."""
  def top_logit(xi):
    logits = logits_fn(xi[None])[0]
    return logits[jnp.argmax(jax.lax.stop_gradient(logits))]

  return jax.vmap(jax.grad(top_logit))(x)


def pixel_sum(grads):
  """(N, channels): input gradients (N, ..., channels) summed over the pixels of each sample."""
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
