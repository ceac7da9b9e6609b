"""A per-direction 2D model of Diff-Ensembler (job `ensembler_train`).

The network: (x_t, condition slice(s), position, brain mask) -> epsilon on slices along
`data.axis` (`sciimg_jax/ensembler/slice_inputs.py`). Variants: a task (`sr`,
`t1_to_flair`, `t1t2_to_flair`; default sr), an axis (`axial`, `coronal`, `sagittal`;
default axial), `regressor` (the L1 U-Net baseline), `segmenter` (the downstream tumour
segmenter on ground-truth FLAIR) and `tiny`.

  python main.py --config=configs/ensembler/slice_model.py:sr+coronal --workdir=runs/sr/coronal
  python main.py --config=configs/ensembler/slice_model.py:sr+coronal+tiny --workdir=/tmp/c
"""

from configs import base
from configs.ensembler import common

AXES = ("axial", "coronal", "sagittal")


def get_config(variant=""):
  c = common.get_base_config(common.task_of(variant))
  c.job = "ensembler_train"
  c.model.channels = (32, 64, 128)
  c.model.attention_levels = (False, False, True)
  c.train.num_steps = 20_000
  c.train.checkpoint_every = 2_000
  c.train.eval_every = 2_000
  variants = common.variants()
  variants.update({a: {"data.axis": a} for a in AXES})
  variants["regressor"] = {"train.objective": "regression"}
  variants["segmenter"] = {"train.objective": "segmentation", "data.target": "mask-unhealthy",
                           "data.conditions": ("t2f",), "data.residual": False}
  return base.apply_variant(c, variant, variants)
