"""IR and RGB patch classifiers on the embedded paired data (or a user's folders of regions).

  python main.py --config=configs/ir/classifier.py:ir --workdir=runs/ir        # spectral-spatial
  python main.py --config=configs/ir/classifier.py:rgb --workdir=runs/rgb      # same trunk, RGB
  python main.py --config=configs/ir/classifier.py:pixel --workdir=runs/pixel  # per-pixel spectra
  ...:tiny, ...:rgb+tiny   a few steps on a small dataset, for tests
  ...:ir+real_like, ...:rgb+raw_like   the embedded data with a named prior (PRIORS below);
                           one knob: --config.data.synthetic.prior.noise=0.001

Real data: --config.data.train_dir=DIR [--config.data.test_dir=DIR] (folders of regions, see
data_pipelines/ir_tfds.py) and --config.data.classes='("a","b",...)'.
"""

import ml_collections

from configs import base

# The classes of the embedded data (data_pipelines/synthetic_ir.py; a test keeps them equal).
EMBEDDED_CLASSES = ("epithelium", "stroma", "lumen", "blood", "necrosis")

# The named settings of the embedded data's prior (synthetic_ir.PRIORS; a test keeps them
# equal): the knobs `data.synthetic.prior.*`, set together by the variants of the same names.
PRIORS = {
    "default": dict(nuisance=1.0, overlap=0.0, noise=0.004, band_correlation=0.0,
                    intensity_contrast=1.0),
    "real_like": dict(nuisance=0.0, overlap=0.55, noise=0.0005, band_correlation=0.9,
                      intensity_contrast=0.0),
    "raw_like": dict(nuisance=3.0, overlap=0.55, noise=0.004, band_correlation=0.9,
                     intensity_contrast=1.0),
}


def get_config(variant=""):
  c = base.get_base_config()
  c.job = "ir_train"
  c.data.train_dir = ""           # '' = the embedded paired data
  c.data.test_dir = ""            # '' with train_dir: a spatial block split of train_dir
  c.data.synthetic = ml_collections.ConfigDict(dict(num_train=8, num_test=4, size=96, seed=0))
  # The knobs of the generator's prior (data_pipelines/synthetic_ir.py, PRIOR_KNOBS): the
  # default reproduces the embedded data of before; variants `real_like`, `raw_like`.
  c.data.synthetic.prior = ml_collections.ConfigDict(PRIORS["default"])
  c.data.classes = EMBEDDED_CLASSES
  c.data.modality = "ir"          # ir | rgb
  c.data.patch_size = 12
  c.data.per_class = 32           # patches of each class per region
  c.data.block = 32               # spatial split blocks (pixels), without test_dir
  c.data.test_fraction = 0.25
  c.data.patch_seed = 0           # which patches are drawn (`seed` is the training's)
  c.data.batch_size = 64
  c.data.cache_dir = ""           # '' = <workdir>/data
  c.data.spectral_transform = "none"  # none | snv | derivative | pca_whiten (IR only)
  c.data.pca_components = 30

  c.model = ml_collections.ConfigDict(dict(
      name="spectral_spatial", spectral_widths=(64, 16), trunk_widths=(32, 64), features=64,
      num_groups=8))

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4
  c.optim.ema_decay = 0.99
  c.train.num_steps = 300         # about 4 epochs of the embedded training patches
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.label_smoothing = 0.0
  c.train.robust = robustness_off()
  return base.apply_variant(c, variant, VARIANTS)


def robustness_off():
  """The `train.robust` block: every robustness strategy (sciimg_jax/ir/robustness.py) off."""
  return ml_collections.ConfigDict(dict(
      mixup_alpha=0.0, cutmix_alpha=0.0, noise_std=0.0, band_dropout=0.0, sam_rho=0.0,
      adversarial_eps=0.0, adversarial_mix=0.5, rank_weight=0.0))


VARIANTS = {
    "ir": {},
    "rgb": {"data.modality": "rgb", "model": ml_collections.ConfigDict(dict(
        name="spatial", trunk_widths=(32, 64), features=64, num_groups=8))},
    "pixel": {"model": ml_collections.ConfigDict(dict(name="spectral_pixel",
                                                      spectral_widths=(128, 64)))},
    **{name: {"data.synthetic.prior": ml_collections.ConfigDict(knobs)}
       for name, knobs in PRIORS.items() if name != "default"},
    "tiny": {"data.synthetic.num_train": 2, "data.synthetic.num_test": 1,
             "data.synthetic.size": 48, "data.patch_size": 8, "data.per_class": 8,
             "data.batch_size": 8, "train.num_steps": 6, "train.log_every": 2,
             "train.eval_every": 3, "train.checkpoint_every": 3, "optim.warmup_steps": 1,
             "train.progress_bar": False},
}
