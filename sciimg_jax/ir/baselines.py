"""Chemometric baselines on pixel spectra (scikit-learn): what a spectroscopist tries first.

Each is fitted on the centre-pixel spectra of the training patches and scored on the
held-out patches' centre pixels, with the same metrics as the networks, and the same
collapse diagnostics (`diagnose`): those of its logits (the decision function; a random
forest's class probabilities), and, for the linear models, of the features its linear head
reads (the standardised spectra for `logistic`, their principal components for `pca_lda`) and
of its input gradient (the predicted class's weights, over the standardised bands). Logistic
regression is the linear reference of the networks' diagnostics in `spectra_job`.

  pca_lda        standardise, PCA to `n_components`, linear discriminant analysis
  logistic       standardise, multinomial logistic regression
  random_forest  a random forest on the raw spectra
"""

import numpy as np

from sciimg_jax.ir import diagnostics


def make(name, *, n_components=20, seed=0):
  """The scikit-learn estimator of a baseline name."""
  from sklearn.decomposition import PCA  # noqa: PLC0415
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: PLC0415
  from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
  builders = {
      "pca_lda": lambda: make_pipeline(StandardScaler(), PCA(n_components, random_state=seed),
                                       LinearDiscriminantAnalysis()),
      "logistic": lambda: make_pipeline(StandardScaler(),
                                        LogisticRegression(max_iter=3000, random_state=seed)),
      "random_forest": lambda: RandomForestClassifier(200, random_state=seed, n_jobs=1),
  }
  if name not in builders:
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(builders)}")
  return builders[name]()


NAMES = ("pca_lda", "logistic", "random_forest")
LINEAR = ("pca_lda", "logistic")  # standardise, then linear maps: features and gradients too


def centre_spectra(x):
  """(N, bands): the centre pixels of patches (N, p, p, bands)."""
  p = x.shape[1] // 2
  return np.asarray(x[:, p, p])


def logits(model, x):
  """(N, classes): the decision function of `model` (a random forest's class probabilities);
  for two classes (a single column) [0, d], the logits it stands for."""
  out = model.decision_function(x) if hasattr(model, "decision_function") else (
      model.predict_proba(x))
  out = np.asarray(out, np.float64)
  return np.stack([np.zeros_like(out), out], 1) if out.ndim == 1 else out


def diagnose(name, model, x, y):
  """The collapse diagnostics of fitted baseline `name` on spectra `x` (N, bands), labels `y`.

  Logits for every baseline; for the linear ones (`LINEAR`: a StandardScaler, then linear
  maps) also the features its last step reads and the input gradient of the predicted
  class's logit with respect to the standardised spectrum, as the networks' (whose inputs
  are standardised the same way). The gradient of an affine map is exact from its values
  at 0 and at each unit vector.
  """
  out_logits = logits(model, x)
  out = diagnostics.logit_summary(out_logits, np.searchsorted(model.classes_, y))
  if name in LINEAR:
    out.update(diagnostics.summary(model[:-1].transform(x), "features"))
    head, bands = model[1:], x.shape[1]
    jacobian = logits(head, np.eye(bands)) - logits(head, np.zeros((1, bands)))  # (bands, K)
    grads = jacobian[:, out_logits.argmax(1)].T
    out["gradient_effective_rank"] = diagnostics.effective_rank(grads)
  return out


def evaluate(name, train_x, train_y, test_x, test_y, *, n_components=20, seed=0):
  """Fits baseline `name` on the training patches' centre spectra; its held-out scores and
  diagnostics (`diagnose`)."""
  model = make(name, n_components=min(n_components, train_x.shape[-1], len(train_x)), seed=seed)
  model.fit(centre_spectra(train_x), train_y)
  x = centre_spectra(test_x)
  return {**diagnostics.classification_scores(test_y, model.predict(x)),
          **diagnose(name, model, x, test_y)}
