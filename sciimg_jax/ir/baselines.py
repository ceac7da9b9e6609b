"""Chemometric baselines on pixel spectra (scikit-learn): what a spectroscopist tries first.

Each is fitted on the centre-pixel spectra of the training patches and scored on the
held-out patches' centre pixels, with the same metrics as the networks:

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


def centre_spectra(x):
  """(N, bands): the centre pixels of patches (N, p, p, bands)."""
  p = x.shape[1] // 2
  return np.asarray(x[:, p, p])


def evaluate(name, train_x, train_y, test_x, test_y, *, n_components=20, seed=0):
  """Fits baseline `name` on the training patches' centre spectra; its held-out scores."""
  model = make(name, n_components=min(n_components, train_x.shape[-1], len(train_x)), seed=seed)
  model.fit(centre_spectra(train_x), train_y)
  return diagnostics.classification_scores(test_y, model.predict(centre_spectra(test_x)))
