"""The `3D_only` baseline of Diff-Ensembler: one 3D conditional diffusion model (job
`ensembler_volume`, `sciimg_jax/ensembler/volume_model.py`).

A 3D U-Net of the fusion network's size (`configs/ensembler/fusion.py`, whose settings
it takes) sees (x_t, conditions, position, mask) on random 3D crops (`fusion.crop_size`;
() = whole volumes) and is sampled by the one volume sampler as the method `3d_only`.
Variants: a task (default sr) and `tiny`.

  python main.py --config=configs/ensembler/volume_model.py:sr --workdir=runs/sr/3d_only
"""

from configs.ensembler import fusion


def get_config(variant=""):
  c = fusion.get_config(variant)
  c.job = "ensembler_volume"
  c.model.spatial_dims = 3  # x_t and the condition channels in, the target out
  c.train.num_sample_images = 4
  return c
