"""Per-spectrum classifiers (MLP, 1D CNN) and chemometric baselines on a table of spectra,
cross-validated in stratified folds (the job: sciimg_jax/ir/spectra_job.py).

  python main.py --config=configs/ir/spectra.py --workdir=runs/spectra --config.data.table=FILE
  python main.py --config=configs/ir/spectra.py:collagen --workdir=runs/collagen
  ...:tiny   small models, a few steps, for tests

A table is a CSV (one spectrum a row, wavenumbers as column names, a `label` column or
`data.label_column`), Orange's .tab/.csv (three header rows; the label is the column
flagged `class`) or .npz (arrays X, y, wavenumbers); see data_pipelines/ir_formats.py.
"""

import ml_collections

from configs import base
from configs.ir import classifier

# collagen.csv of orange-spectroscopy (GPL-3: read in place from the wheel, never copied into
# this repository): 731 FTIR spectra of four tissue components, 234 bands, 1801-902 cm^-1.
# The wheel is fetched once with `pip download --no-deps orange-spectroscopy -d .whl`
# (.whl/ is ignored by git); the `*` matches its version.
COLLAGEN = ".whl/orange_spectroscopy-*.whl/orangecontrib/spectroscopy/datasets/collagen.csv"


def get_config(variant=""):
  c = base.get_base_config()
  c.job = "ir_spectra"
  c.data.table = ""               # the table of spectra; a path may run through a .whl or .zip
  c.data.test_table = ""          # '' = cross-validation of `table`; else train on it, score this
  c.data.label_column = ""        # '' = Orange's `class` column, else `label` (CSV) or `y` (.npz)
  c.data.pip_package = ""         # the package whose wheel holds `table` (said when it is missing)
  c.data.folds = 5                # stratified folds, drawn from `seed`, saved as folds.csv
  c.data.per_class = 0            # 0 = every spectrum; N = at most N training spectra of each
                                  # class in each fold (subsampling; said in the log)
  c.data.batch_size = 64
  c.data.spectral_transform = "none"  # for every run; a run `<model>-<transform>` sets its own
  c.data.pca_components = 30

  # The networks a run names (registry names of sciimg_jax/ir/classifiers.py and arguments).
  c.models = ml_collections.ConfigDict(dict(
      mlp=ml_collections.ConfigDict(dict(name="spectral_pixel", spectral_widths=(128, 64))),
      cnn=ml_collections.ConfigDict(dict(name="spectral_cnn", widths=(16, 32, 64),
                                         kernel_size=7, features=64, num_groups=8))))
  # `<model>` or `<model>-<spectral transform>` (snv, derivative, pca_whiten): the table's rows.
  c.runs = ("mlp", "cnn")
  c.baselines = ("pca_lda", "logistic", "random_forest")
  # Reference (c) of the diagnostics: every run trained once more on permuted training labels
  # (rows `<run>-shuffled`). It doubles the networks' training time; False switches it off.
  c.shuffled_reference = True

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4
  c.optim.ema_decay = 0.99
  # Training length in epochs of each fold's training spectra: the steps are
  # ceil(num_epochs x the largest fold's training spectra / data.batch_size), the same for every
  # fold (595 for collagen's 585; 49 for 48). num_steps > 0 instead gives the steps themselves
  # (then num_epochs=0). A short run's warmup and EMA are capped (spectra_job.schedule).
  c.train.num_epochs = 65
  c.train.num_steps = 0
  c.train.log_every = 100
  c.train.eval_every = 0          # the held-out fold is scored once, at the end
  # No checkpoints: a fold trains in seconds, and a finished fold (final_metrics.json) is reused.
  c.train.label_smoothing = 0.0
  c.train.robust = classifier.robustness_off()
  return base.apply_variant(c, variant, VARIANTS)


VARIANTS = {
    "collagen": {"data.table": COLLAGEN, "data.pip_package": "orange-spectroscopy",
                 "runs": ("mlp", "cnn", "mlp-snv", "cnn-snv", "mlp-pca_whiten")},
    "tiny": {"data.folds": 3, "data.batch_size": 8,
             "models.mlp.spectral_widths": (16, 8), "models.cnn.widths": (4, 8),
             "models.cnn.features": 8, "models.cnn.num_groups": 4,
             "train.num_epochs": 4, "train.log_every": 3, "optim.warmup_steps": 1,
             "train.progress_bar": False, "shuffled_reference": False},
}
