"""The IR-versus-RGB study: IR, RGB and per-pixel classifiers, and the IR classifier with each
robustness strategy or modality-aware remedy, over several seeds, with chemometric baselines.

  python main.py --config=configs/ir/study.py --workdir=runs/ir_study
  python main.py --config=configs/ir/study.py:tiny --workdir=/tmp/ir_study   # for tests
"""

import ml_collections

from configs import base
from configs.ir import classifier

# One strategy or remedy switched on in the IR classifier (sciimg_jax/ir/robustness.py).
STRATEGIES = {
    "mixup": {"train.robust.mixup_alpha": 0.4},
    "cutmix": {"train.robust.cutmix_alpha": 1.0},
    "noise": {"train.robust.noise_std": 0.3},
    "band_dropout": {"train.robust.band_dropout": 0.2},
    "label_smoothing": {"train.label_smoothing": 0.1},
    "weight_decay": {"optim.weight_decay": 0.05},
    "sam": {"train.robust.sam_rho": 0.05},
    "adversarial": {"train.robust.adversarial_eps": 0.1},
    "snv": {"data.spectral_transform": "snv"},
    "derivative": {"data.spectral_transform": "derivative"},
    "pca_whiten": {"data.spectral_transform": "pca_whiten"},
    "rank_reg": {"train.robust.rank_weight": 1.0},
}


def runs(names, variant=""):
  """{name: classifier config}: 'ir', 'rgb', 'pixel', or 'ir-<strategy>'."""
  out = ml_collections.ConfigDict()
  for name in names:
    model, _, strategy = name.partition("-")
    c = classifier.get_config("+".join(filter(None, (model, variant))))
    if strategy:
      base.set_keys(c, STRATEGIES[strategy])
    out[name] = c
  return out


ALL = ("ir", "rgb", "pixel") + tuple(f"ir-{s}" for s in STRATEGIES)


def get_config(variant=""):
  c = ml_collections.ConfigDict()
  c.job = "ir_study"
  c.seeds = (0, 1, 2)
  c.baselines = ("pca_lda", "logistic", "random_forest")
  c.baseline_modalities = ("ir", "rgb")   # on the centre pixel's spectrum, and on its colour
  if variant not in ("", "tiny"):
    raise ValueError(f"unknown config variant {variant!r}; known: tiny")
  c.order = ("ir", "rgb") if variant else ALL   # the table's rows, in this order
  c.runs = runs(c.order, variant)
  if variant:
    c.seeds = (0,)
  return c
