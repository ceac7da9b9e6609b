"""What an inpainting slice model's chain means: its channels, the prior and the residual.

Training (`training_volumes`, `slice_inputs`) and inference (`volume_inpainter`) both read
a model's `data` block through these, so the two agree on what the chain holds:

  channel_names   the condition channels, in order: `data.conditions`, the prior channel
                  (`PRIOR_CHANNEL`, with `data.prior`) and the through-plane context of
                  `data.context` slices on each side (`CONTEXT_FILLS`, `core.slice_context`);
  prior_volume    the classical prior: the `data.prior` fill (`classical.FILLS`) of the
                  voided volume inside the mask, the voided image elsewhere;
  to_residual, from_residual
                  with `data.residual` the chain holds (image - prior) / s, s being
                  `residual_scale(data)`; the image is s x + prior;
  chain_clip      `sampling.clip_x0` in the chain's units (a residual's range is 2 / s).
"""

import numpy as np

from sciimg_jax.core import slice_context
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import classical

CONTEXT_FILLS = {"t1n-voided": -1.0, "mask": 0.0}  # the channels a 2.5D model sees around it
PRIOR_CHANNEL = "prior"


def residual_scale(data):
  """s of the residual target (image - prior) / s: `data.residual_scale`, 2 if unset."""
  return float(data.get("residual_scale", 2.0))


def to_residual(image, prior, scale=2.0):
  """The residual target of `data.residual`: (image - prior) / scale."""
  return (image - prior) / scale


def from_residual(x, prior, scale=2.0):
  """The image of a residual `x`: scale x + prior (the inverse of `to_residual`)."""
  return scale * x + prior


def chain_clip(data, clip):
  """The x0 clip of a walk on this model's chain: `clip` (`sampling.clip_x0`, None = none) bounds
  a chain in [-1, 1]; a residual (image - prior) / s of images in [-1, 1] lies in
  [-2 / s, 2 / s], so the bound grows by 2 / s (unchanged for s = 2)."""
  if clip is None or not data.get("residual"):
    return clip
  return clip * 2.0 / residual_scale(data)


def channel_names(data):
  """The condition channels of a slice model of `data`: its conditions, the prior, context."""
  names = tuple(data.conditions)
  if data.get("prior"):
    names += (PRIOR_CHANNEL,)
  return names + slice_context.names(tuple(CONTEXT_FILLS), int(data.get("context", 0)))


def prior_volume(voided, mask, data, where="mask"):
  """The classical prior of a normalised volume: the `data.prior` fill inside the mask (one
  box per component, grown by `data.prior_margin`), `voided` elsewhere; `voided` without."""
  voided = np.asarray(voided, np.float32)
  if not data.get("prior") or not np.any(mask):
    return voided
  try:
    filled = classical.fill_components(voided, mask, classical.FILLS[data.prior],
                                       int(data.prior_margin))
  except InputError as e:
    raise InputError(where, f"the {data.prior} prior cannot be computed: {e.problem}") from e
  return np.where(mask > 0, filled, voided).astype(np.float32)
