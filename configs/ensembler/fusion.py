"""Diff-Ensembler's 3D fusion network over trained 2D models (job `ensembler_fusion`).

The 2D models are frozen; only the 3D U-Net trains, on random 3D crops, with
5 L1 + 150 L2 on epsilon (`sciimg_jax/ensembler/fusion_task.py`). Variants: a task
(default sr) and `tiny`.

  python main.py --config=configs/ensembler/fusion.py:sr --workdir=runs/sr/fusion \
      --config.fusion.members='("runs/sr/axial","runs/sr/coronal","runs/sr/sagittal")'
"""

from configs import base
from configs.ensembler import common


def get_config(variant=""):
  c = common.get_base_config(common.task_of(variant))
  c.job = "ensembler_fusion"
  c.model.channels = (16, 32, 64)
  c.model.attention_levels = (False, False, False)
  c.model.num_head_channels = 16
  c.data.batch_size = 4
  c.train.num_steps = 5_000
  c.train.checkpoint_every = 1_000
  c.train.eval_every = 1_000
  return base.apply_variant(c, variant, common.variants())
