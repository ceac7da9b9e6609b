"""Settings every inpainting config shares: the slice models' data keys and the tiny variant.

`get_base_config()` is `configs/diffusion.py`'s with what the inpainting slice models read
(`sciimg_jax/inpainting/slice_inputs.py`, `training_volumes.py`, `chain_space.py`): the
target t1n and its conditions (the voided image and the mask), the slices and random holes
they train on, the classical prior and the residual target, and the weight of the unknown
pixels in the loss.
"""

import ml_collections

from configs import diffusion

# Seconds-scale settings for tests: 4 mm embedded data, 32 px slices, a small U-Net.
TINY = {**diffusion.TINY, "data.image_size": (32, 32)}


def get_base_config():
  c = diffusion.get_base_config()
  c.data.slices = "mask"         # mask: slices that intersect the mask; brain: all brain slices
  # Random lesion-shaped holes added to training examples (input_pipeline.RandomLesionMasks):
  # probability per example, radii as fractions of the smaller image side, blobs per hole.
  # `families` (data.source = 'volumes'): the 3D shapes holes are drawn from, one at random
  # per hole (data_pipelines/mask_families.py: lesion | ellipsoid | box | blob).
  c.data.random_masks = ml_collections.ConfigDict(dict(
      probability=0.0, radius_fraction=(0.03, 0.12), max_blobs=3, families=("lesion",)))
  c.data.target = "t1n"
  c.data.conditions = ("t1n-voided", "mask")
  c.data.residual = False        # learn (target - prior) / residual_scale (needs the prior)
  c.data.residual_scale = 2.0
  # Where training slices come from (slices: the TFDS slice dataset; volumes: whole volumes,
  # needed for context and the prior; sciimg_jax/inpainting/training_volumes.py), and a
  # classical fill of the voided volume as one more channel.
  c.data.source = "slices"
  c.data.prior = ""              # '' | biharmonic | harmonic
  c.data.prior_margin = 4        # voxels around each hole's box that the fill sees
  c.data.prior_dropout = 0.0     # probability that a training example shows no prior
  c.data.loss_exclude = ""       # volumes: a mask key whose voxels weigh 0 in the loss
  c.data.image_size = (64, 64)   # slices are centre-padded/cropped to this
  c.train.loss_weight_in_mask = 1.0  # weight of unknown (mask) pixels in the loss
  return c
