"""Defaults shared by every job; each job file starts from `get_base_config()`.

Variants (`configs/<job>.py:<variant>` on the command line) are data: a dict of
dotted config keys and their values, applied by `apply_variant`.
"""

import ml_collections


def get_base_config():
  c = ml_collections.ConfigDict()
  c.job = ""                     # set by each job file (a key of sciimg_jax.jobs.JOBS)
  c.seed = 0

  # Data: a BraTS-layout folder, or '' for the embedded MNI152-derived data.
  c.data = ml_collections.ConfigDict()
  c.data.root = ""
  c.data.eval_root = ""          # held-out cases when `root` has no train/ and eval/ subfolders
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=24, num_eval=4, resolution_mm=4, seed=0))
  c.data.axis = "axial"          # axial | coronal | sagittal
  c.data.slices = "mask"         # mask: slices that intersect the mask; brain: all brain slices
  # Random lesion-shaped holes added to training examples (input_pipeline.RandomLesionMasks):
  # probability per example, radii as fractions of the smaller image side, blobs per hole.
  # `families` (data.source = 'volumes'): the 3D shapes holes are drawn from, one at random
  # per hole (data_pipelines/mask_families.py: lesion | ellipsoid | box | blob).
  c.data.random_masks = ml_collections.ConfigDict(dict(
      probability=0.0, radius_fraction=(0.03, 0.12), max_blobs=3, families=("lesion",)))
  c.data.target = "t1n"
  c.data.conditions = ("t1n-voided", "mask")
  # Slice models: the k slices on each side of chosen condition channels (2.5D;
  # sciimg_jax/core/slice_context.py).
  c.data.context = 0
  c.data.residual = False        # learn the target minus a reference (the method's), halved
  c.data.residual_scale = 2.0    # inpainting: the residual target is (target - prior) / this
  # Inpainting slice models (sciimg_jax/inpainting/training_volumes.py): where training
  # slices come from (slices: the TFDS slice dataset; volumes: whole volumes, needed for
  # context and the prior), and a classical fill of the voided volume as one more channel.
  c.data.source = "slices"
  c.data.prior = ""              # '' | biharmonic | harmonic
  c.data.prior_margin = 4        # voxels around each hole's box that the fill sees
  c.data.prior_dropout = 0.0     # probability that a training example shows no prior
  c.data.loss_exclude = ""       # volumes: a mask key whose voxels weigh 0 in the loss
  c.data.image_size = (64, 64)   # slices are centre-padded/cropped to this
  c.data.batch_size = 16
  c.data.num_workers = 0         # grain worker processes; 0 = in-process
  c.data.cache_dir = ""          # where TFDS writes prepared slices; '' = <workdir>/data

  # Network: a registry name and its keyword arguments.
  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.spatial_dims = 2
  c.model.in_channels = 3        # x_t + len(data.conditions)
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

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 500
  c.optim.end_lr_factor = 0.01
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip_norm = 1.0
  c.optim.ema_decay = 0.999
  # Gradient accumulation: each step splits its batch into this many micro-batches, takes
  # their gradients one after another (a lax.scan in trainer.make_train_step) and makes one
  # update with their mean; less activation memory, the same update as the whole batch.
  c.optim.accumulate_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100_000
  c.train.loss_weight_in_mask = 1.0  # slice diffusion: weight of unknown (mask) pixels in the loss
  c.train.compute_dtype = "auto"     # auto: bfloat16 on GPU/TPU, float32 on CPU
  c.train.log_every = 100
  c.train.checkpoint_every = 5_000
  c.train.max_checkpoints = 3
  c.train.eval_every = 10_000        # the task's evaluation (sample figures); 0 = never
  c.train.num_sample_images = 4
  c.train.progress_bar = True
  return c


# Seconds-scale settings for tests: 4 mm embedded data, 32 px slices, a small U-Net.
TINY = {
    "data.synthetic.num_train": 3, "data.synthetic.num_eval": 2,
    "data.synthetic.resolution_mm": 4,
    "data.image_size": (32, 32), "data.batch_size": 4,
    "model.channels": (8, 16), "model.num_res_blocks": 1, "model.attention_levels": (False, True),
    "model.num_head_channels": 8, "model.num_groups": 4,
    "sampling.steps": 4,
    "optim.warmup_steps": 2,
    "train.num_steps": 4, "train.compute_dtype": "float32", "train.log_every": 2,
    "train.checkpoint_every": 2, "train.eval_every": 4, "train.num_sample_images": 4,
    "train.progress_bar": False,
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


def set_keys(c, values, prefix=""):
  """Sets `c[prefix + key] = value` for the dotted keys of `values`; returns c."""
  for dotted, value in values.items():
    *path, last = (prefix + dotted).split(".")
    node = c
    for name in path:
      node = node[name]
    if last not in node:
      raise KeyError(f"variant sets unknown config key {prefix + dotted!r}")
    node[last] = value
  return c


def apply_variant(c, variant, variants):
  """Applies `variants[variant]` (dotted keys -> values) to `c`; '' applies nothing.

  'a+b' applies variant a, then b.
  """
  for name in filter(None, variant.split("+")):
    if name not in variants:
      raise ValueError(f"unknown config variant {name!r}; known: {', '.join(variants)}")
    set_keys(c, variants[name])
  return c
