"""Defaults the diffusion methods share (inpainting, Diff-Ensembler): slice models of volumes.

`get_base_config()` is `configs/base.py`'s with the blocks their jobs read: `data` (where
the BraTS-layout volumes are and how slices are cut), `model` (the U-Net; its input
channels are the slice task's to derive), `diffusion` (the chain) and `sampling` (how a
job walks it). `configs/inpainting/common.py` and `configs/ensembler/common.py` add each
method's own keys.
"""

import ml_collections

from configs import base


def get_base_config():
  c = base.get_base_config()

  # Data: a BraTS-layout folder, or '' for the embedded MNI152-derived data.
  c.data.root = ""
  c.data.eval_root = ""          # held-out cases when `root` has no train/ and eval/ subfolders
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=24, num_eval=4, resolution_mm=4, seed=0))
  c.data.axis = "axial"          # axial | coronal | sagittal
  # Slice models: the k slices on each side of chosen condition channels (2.5D;
  # sciimg_jax/core/slice_context.py).
  c.data.context = 0
  c.data.num_workers = 0         # grain worker processes; 0 = in-process
  c.data.cache_dir = ""          # where prepared data is written; '' = <workdir>/data

  # Network: a registry name and its keyword arguments. `in_channels` is not set here: the
  # slice task derives it from the channels the method names (x_t first for diffusion).
  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.spatial_dims = 2
  c.model.out_channels = 1
  c.model.channels = (32, 64, 128)
  c.model.num_res_blocks = 2
  c.model.attention_levels = (False, False, True)
  c.model.num_head_channels = 32
  c.model.num_groups = 8
  c.model.dropout = 0.0
  c.model.remat = False          # recompute each block's activations in the backward pass

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"   # linear | cosine
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.parameterization = "eps"  # eps | x0 | v | edm (schedules.edm_coefficients)
  # edm: the data's standard deviation of the preconditioning; 0 = measured from the training
  # targets (in the loss's voxels) before the first step and saved with the run's config.
  c.diffusion.sigma_data = 0.5
  # How training draws the noise level: uniform (t ~ U{0..T-1}) | lognormal (EDM's log-normal
  # over sigma around sigma_data: most examples where the data's detail meets the noise).
  c.diffusion.noise_levels = "uniform"

  # How every job samples (and a training job's evaluation): see
  # sciimg_jax/core/diffusion/sampling_config.py.
  c.sampling = sampling_block()

  c.train.num_sample_images = 4      # held-out examples the evaluation predicts and draws
  return c


# Seconds-scale settings for tests: 4 mm embedded data, a small U-Net, a short walk.
TINY = {
    **base.TINY,
    "data.synthetic.num_train": 3, "data.synthetic.num_eval": 2,
    "data.synthetic.resolution_mm": 4, "data.batch_size": 4,
    "model.channels": (8, 16), "model.num_res_blocks": 1, "model.attention_levels": (False, True),
    "model.num_head_channels": 8, "model.num_groups": 4,
    "sampling.steps": 4, "train.num_sample_images": 4,
}


def sampling_block(**overrides):
  """The `sampling` block with its defaults (and `overrides`)."""
  s = ml_collections.ConfigDict(dict(
      steps=50,
      stepper="ddim",            # ddim | ddpm | dpm++2m (DPM-Solver++ 2M; no RePaint loops)
      eta=0.0,                   # DDIM noise scale
      eta_band=(),               # (lo, hi): eta only where the noise level sigma is in [lo, hi]
      spacing="uniform",         # uniform: 0, T/n, 2T/n, ... | linspace: round(linspace(0, T-1, n))
                                 # | karras: rho-7 noise levels, most steps at low noise
      clip_x0=1.0,               # clip predicted x0 to [-c, c] at every step; 0 = no clipping
      num_samples=1,             # N > 1: N samples in one jitted call; their mean is the result
      chunk_size=32,             # most slices per 2D network call, all samples together
  ))
  s.update(overrides)
  return s
