"""The statistics of a table of spectra: the same code on a real table and on the generator's.

`measure(spectra, labels, wavenumbers)` reads a table (N spectra x bands, a class label each)
on the bands inside `window` (900-1805 cm^-1 by default: the fingerprint region both the real
collagen.csv, 902-1801, and the generator, 900-1800, cover), sorted by wavenumber:

  pc1_mean_cos          |cos| between the first principal component of the spectra (centred
                        over spectra) and the mean spectrum (not centred): near 1 when PC1
                        is a change of intensity (thickness), lower when it is chemistry
  pc1_share             the variance share of that PC1
  mean_direction_share  the share of the total variance along the mean spectrum's direction:
                        the intensity (thickness-like) nuisance, whatever PC it falls on
  between_class_share   sum_k n_k |mu_k - mu|^2 / sum_i |x_i - mu|^2: the share of the
                        variance between the class means
  min_band_correlation  the most negative Pearson correlation between two bands over spectra
  noise_sigma           the white-noise sigma from differences of neighbouring bands: per
                        spectrum, the 6th-order difference (binomial weights 1, -6, 15, -20,
                        15, -6, 1 over seven neighbouring bands; it removes what is smooth at
                        the scale of a few bands, and white noise of sigma gives it the std
                        sigma sqrt(924)), its MAD over bands x 1.482602 / sqrt(924); then the
                        median over spectra. (The 2nd-order difference of DER_SNR, Stoehr et
                        al. 2008, still reads the curvature of 7-15 cm^-1 wide bands at 4
                        cm^-1 sampling: 0.0019 on noise-free generated spectra; the 6th-order
                        one 0.00002, and it finds the generator's sigma within 4 %.)
  median_range          the median over spectra of max - min
  snr                   median_range / noise_sigma
  separability          the held-out accuracy of the best linear model per spectrum: the
                        larger of `separability_logistic` (standardise, logistic regression)
                        and `separability_pca_lda` (standardise, PCA to 20, LDA), each
                        stratified `folds`-fold cross-validated (scikit-learn, from `seed`)

`table_rows(named)` lays several tables' statistics side by side (one row a statistic).
"""

import numpy as np

from sciimg_jax.core import reports

WINDOW = (900.0, 1805.0)
STATS = (("pc1_mean_cos", "what PC1 is: cos(PC1, mean spectrum)", ".2f"),
         ("pc1_share", "PC1 variance share", ".2f"),
         ("mean_direction_share", "variance share along the mean spectrum", ".2f"),
         ("between_class_share", "share of variance between classes", ".2f"),
         ("min_band_correlation", "most negative band correlation", ".2f"),
         ("snr", "SNR (median range / noise sigma)", ".0f"),
         ("separability", "per-spectrum separability (best linear model, 5-fold CV)", ".3f"),
         ("n_spectra", "spectra", "d"), ("n_bands", "bands in the window", "d"))


def in_window(spectra, wavenumbers, window=WINDOW):
  """(spectra (N, B'), wavenumbers (B',)) of the bands in `window`, by increasing wavenumber."""
  wn = np.asarray(wavenumbers, np.float64)
  keep = np.flatnonzero((wn >= window[0]) & (wn <= window[1]))
  keep = keep[np.argsort(wn[keep])]
  return np.asarray(spectra, np.float64)[:, keep], wn[keep]


ORDER = 6  # the order of the differences of neighbouring bands that `noise_sigma` reads


def noise_sigma(spectra, order=ORDER):
  """The median over spectra of the noise sigma (module docstring); needs > `order` bands.

  The `order`-th difference of neighbouring bands, sum_k (-1)^k C(order, k) f_(i+k), has the
  standard deviation sigma sqrt(C(2 order, order)) for white noise; the MAD over bands
  (x 1.482602, robust to the few bands where the signal still shows) gives it per spectrum.
  """
  from scipy.special import comb  # noqa: PLC0415
  x = np.asarray(spectra, np.float64)
  c = np.array([(-1) ** k * comb(order, k) for k in range(order + 1)])
  d = np.stack([x[:, k:x.shape[1] - order + k] for k in range(order + 1)], -1) @ c
  mad = np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1)
  return float(np.median(1.482602 * mad / np.sqrt((c ** 2).sum())))


def pc1_mean_cos(x):
  centred = x - x.mean(0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  mean = x.mean(0)
  cos = abs(vt[0] @ mean) / max(np.linalg.norm(mean), 1e-300)
  return float(cos), float(s[0] ** 2 / max((s ** 2).sum(), 1e-300))


def mean_direction_share(x):
  mean = x.mean(0)
  u = mean / max(np.linalg.norm(mean), 1e-300)
  centred = x - mean
  return float(((centred @ u) ** 2).sum() / max((centred ** 2).sum(), 1e-300))


def between_class_share(x, labels):
  mu = x.mean(0)
  total = ((x - mu) ** 2).sum()
  between = sum((labels == c).sum() * ((x[labels == c].mean(0) - mu) ** 2).sum()
                for c in np.unique(labels))
  return float(between / max(total, 1e-300))


def min_band_correlation(x):
  sd = x.std(0)
  x = x[:, sd > 0]
  return float(np.corrcoef(x, rowvar=False).min())


def separability(x, labels, folds=5, seed=0):
  """{'logistic': acc, 'pca_lda': acc}: stratified k-fold CV accuracy of the two linear models."""
  from sklearn.decomposition import PCA  # noqa: PLC0415
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: PLC0415
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
  from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
  cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
  k = min(20, x.shape[1], int(len(x) * (folds - 1) / folds) - 1)
  models = {"logistic": make_pipeline(StandardScaler(),
                                      LogisticRegression(max_iter=3000, random_state=seed)),
            "pca_lda": make_pipeline(StandardScaler(), PCA(k, random_state=seed),
                                     LinearDiscriminantAnalysis())}
  return {name: float(cross_val_score(m, x, labels, cv=cv).mean()) for name, m in models.items()}


def measure(spectra, labels, wavenumbers, *, window=WINDOW, folds=5, seed=0):
  """The statistics of the module docstring of a table of spectra (N, bands) with labels (N,)."""
  x, wn = in_window(spectra, wavenumbers, window)
  if x.shape[1] < 5:
    raise ValueError(f"{x.shape[1]} bands in the window {window}: need at least 5")
  labels = np.asarray(labels)
  cos, share = pc1_mean_cos(x)
  sigma = noise_sigma(x)
  spread = float(np.median(x.max(1) - x.min(1)))
  sep = separability(x, labels, folds, seed)
  return {"n_spectra": int(len(x)), "n_bands": int(x.shape[1]),
          "window": [float(wn[0]), float(wn[-1])],
          "pc1_mean_cos": cos, "pc1_share": share, "mean_direction_share": mean_direction_share(x),
          "between_class_share": between_class_share(x, labels),
          "min_band_correlation": min_band_correlation(x),
          "noise_sigma": sigma, "median_range": spread,
          "snr": spread / sigma if sigma > 0 else float("inf"),
          "separability": max(sep.values()),
          **{f"separability_{k}": v for k, v in sep.items()}}


def table_rows(named):
  """{name: statistics} -> (rows, columns) for `reports.format_markdown`: a row a statistic."""
  names = list(named)
  columns = (reports.Column("", "stat"),) + tuple(reports.Column(n, n) for n in names)
  rows = []
  for key, title, fmt in STATS:
    row = {"stat": title}
    for n in names:
      v = named[n].get(key)
      row[n] = None if v is None else format(v, fmt)
    rows.append(row)
  return rows, columns
