"""A map over the embedded data's prior: IR and RGB patch CNNs, the per-pixel MLP and PCA-LDA
at every point of a grid of two knobs of the prior, the other knobs fixed at a named setting
(the job: sciimg_jax/ir/prior_map.py).

  python main.py --config=configs/ir/prior_map.py --workdir=runs/prior_map
  python main.py --config=configs/ir/prior_map.py:tiny --workdir=/tmp/prior_map   # for tests
  python main.py --config=configs/ir/prior_map.py:remedies --workdir=runs/prior_map_remedies

`remedies`: the IR CNN with each robustness strategy or remedy of the IR study
(configs/ir/study.py, STRATEGIES), beside the IR and RGB CNNs, at the map's size, only at the
points where the map found IR below RGB (nuisance 3, overlap 0.55 and 0.7); each point also
writes `<point>/study.md`, the study's table (docs/ir_pathology.md, "Remedies where IR falls
below RGB").

The grid's knobs and values are `grid.x`, `grid.x_values`, `grid.y`, `grid.y_values` (knobs:
data_pipelines/synthetic_ir.py, PRIOR_KNOBS); `prior` holds the fixed knobs (the real-like
setting, matched to collagen.csv's measured statistics). `real_table` is measured beside the
named settings by the same code (read in place; '' = not measured; a missing file is said
and skipped). Sizes: smaller than the IR study's (`RUN_SIZE`): the 3 x 3 map, three networks
and two seeds a point, took 23 min on one CPU core (docs/ir_pathology.md, "When deep IR
models fall below RGB").
"""

import ml_collections

from configs import base
from configs.ir import classifier
from configs.ir import spectra
from configs.ir import study

# Every network of the map at this size (keys of the classifier config).
RUN_SIZE = {"data.synthetic.num_train": 6, "data.synthetic.num_test": 4,
            "data.synthetic.size": 64, "data.per_class": 24, "data.batch_size": 32,
            "train.num_steps": 200, "optim.warmup_steps": 20, "train.log_every": 50,
            "train.eval_every": 0, "train.checkpoint_every": 200, "train.progress_bar": False}


# The points of the map where IR fell below RGB, and what runs there (variant `remedies`).
REMEDY_POINTS = {"x_values": (3.0,), "y_values": (0.55, 0.7)}
REMEDY_ORDER = ("ir", "rgb") + tuple(f"ir-{s}" for s in study.STRATEGIES)


def get_config(variant=""):
  if variant not in ("", "tiny", "remedies"):
    raise ValueError(f"unknown config variant {variant!r}; known: tiny, remedies")
  remedies = variant == "remedies"
  if remedies:
    variant = ""
  c = ml_collections.ConfigDict()
  c.job = "ir_prior_map"
  c.seeds = (0, 1)
  c.order = REMEDY_ORDER if remedies else ("ir", "rgb", "pixel")
  c.runs = study.runs(c.order, variant)
  if not variant:
    for run in c.runs.values():
      base.set_keys(run, RUN_SIZE)
  c.baselines = ("pca_lda",)                # on the centre pixels' spectra of the same patches
  c.prior = ml_collections.ConfigDict(classifier.PRIORS["real_like"])   # the fixed knobs
  c.grid = ml_collections.ConfigDict(dict(
      x="nuisance", x_values=(0.0, 1.0, 3.0),   # none (real-like), the old default's, raw-like
      y="overlap", y_values=(0.0, 0.55, 0.7)))  # none, real-like, more
  # The statistics of each point and of the named settings (sciimg_jax/ir/prior_stats.py): a
  # table of `per_class` pixel spectra of each class from each of `num_images` training images.
  c.stats = ml_collections.ConfigDict(dict(num_images=4, per_class=40, size=96, folds=5))
  c.named = ("real_like", "raw_like", "default")
  c.real_table = spectra.COLLAGEN   # collagen.csv in the wheel under .whl/
  c.real_label_column = ""
  c.real_pip_package = "orange-spectroscopy"
  if variant:
    c.seeds = (0,)
    c.grid.x_values, c.grid.y_values = (0.0, 3.0), (0.0, 0.7)
    c.stats = ml_collections.ConfigDict(dict(num_images=1, per_class=12, size=48, folds=3))
    c.named = ("real_like",)
    c.real_table = ""
  if remedies:  # the map's fixed knobs and sizes; only its failing points, none measured again
    c.grid.x_values, c.grid.y_values = REMEDY_POINTS["x_values"], REMEDY_POINTS["y_values"]
    c.named, c.real_table = (), ""
  return c
