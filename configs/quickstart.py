"""Quickstart: a small axial inpainting model on the embedded data, minutes on a laptop CPU.

Generates MNI152-derived subjects at 4 mm (train and held-out disjoint), trains a
small (x_t, voided, mask) -> epsilon U-Net on axial slices, and writes checkpoints,
metrics (JSONL + TensorBoard) and a PNG of inpainted held-out slices next to ground
truth into the workdir.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

from configs import base


def get_config(variant=""):
  c = base.get_base_config()
  c.data.synthetic.update(dict(num_train=24, num_eval=4, resolution_mm=4))
  c.data.axis = "axial"
  c.data.slices = "mask"
  c.data.image_size = (64, 64)
  c.data.batch_size = 8
  c.model.channels = (16, 32, 64)
  c.model.num_res_blocks = 1
  c.model.attention_levels = (False, False, True)
  c.model.num_head_channels = 16
  c.model.num_groups = 8
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99
  c.diffusion.sample_steps = 50
  c.train.num_steps = 600
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  c.train.sample_every = 600
  c.train.num_sample_images = 4
  return base.apply_variant(c, variant)
