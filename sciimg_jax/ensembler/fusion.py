"""Diff-Ensembler's 3D fusion network and the fused volume denoiser built from it.

The network is the project's U-Net in 3D (`model.spatial_dims = 3`). At every diffusion
step it sees, channels-last, (x_t, the ensemble's condition channels: the condition
volumes, the 3-channel voxel position in [-1, 1] and the brain mask, then eps_1..eps_n of
the n 2D models) and the timestep, and gives n channels: the weights w_1..w_{n-1} and the
residual r that `volume_denoisers.fuse` combines as sum_i (1/n + w_i) eps_i (last weight
1/n - sum w) + lambda r. The U-Net's output convolution is zero-initialised, so before
training the fused denoiser is exactly the average of the 2D models (TOSM), never one
model alone.

`fusion.variant` (`VARIANTS`):
  eps       the network above;
  features  the feature-level variant: the 2D models' last decoder features, stacked
            back into volumes along each model's axis and concatenated, enter the 3D
            U-Net's encoder through one zero-initialised convolution per level (stride
            2^level, to that level's size and input width), added where it starts.
            Zero-initialised, they change nothing before training either.

`fusion.space` (`SPACES`): `eps` (the released code) fuses the members' epsilons as above;
`x0` fuses the x0 each epsilon implies and adds the residual there (`fused_eps`), the
space of x0-parameterised members, where neither the inputs nor the residual are scaled
by the noise level. Both start as the average.

`load_fusion` restores a trained fusion for inference, checked against the 2D models it
was trained with (`members.json`, written by the training task, `fusion_task`).
"""

import json
import pathlib

import jax.numpy as jnp
from flax import nnx

from data_pipelines import volume_cases
from sciimg_jax.core import models
from sciimg_jax.core import trained_models
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.errors import InputError
from sciimg_jax.core.models.unet import Conv

VARIANTS = ("eps", "features")
SPACES = ("eps", "x0")  # where the network fuses and corrects: epsilons (released) or x0
MEMBERS_FILE = "members.json"


def signature(member):
  """What identifies a 2D model a fusion was trained with."""
  c = member.config
  return {"axis": c.data.axis, "step": member.trained.step, "target": c.data.target,
          "conditions": list(c.data.conditions), "residual": bool(c.data.get("residual")),
          "context": int(c.data.get("context", 0)),
          "model": c.model.to_dict(), "diffusion": c.diffusion.to_dict()}


def check_signatures(recorded, members, where):
  """Stops unless `members` are the 2D models `recorded` (from `members.json`)."""
  now = [signature(m) for m in members]
  if len(recorded) != len(now):
    raise InputError(where, f"the fusion was trained on {len(recorded)} 2D models, "
                     f"{len(now)} are configured")
  for i, (a, b) in enumerate(zip(recorded, now)):
    diff = sorted(k for k in a if a[k] != b.get(k))
    if diff:
      raise InputError(where, f"2D model {i + 1} ({b['axis']}) differs from the one the fusion "
                       f"was trained with in {', '.join(diff)} (trained with "
                       f"{ {k: a[k] for k in diff} })")


def in_channels(num_cond_channels, num_models):
  """x_t, the condition channels (conditions, position, mask), one epsilon per 2D model."""
  return 1 + num_cond_channels + num_models


class FeatureFusion(nnx.Module):
  """The fusion U-Net with the 2D models' decoder features injected into its encoder."""

  def __init__(self, unet, feature_channels, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.unet = unet
    widths = (unet.channels[0],) + tuple(unet.channels[:-1])  # where each level starts
    self.adapters = nnx.List([
        Conv(3, feature_channels, width, stride=2 ** level, zero_init=True, dtype=dtype,
             rngs=rngs) for level, width in enumerate(widths)])

  def __call__(self, x, t, features):
    return self.unet(x, t, [adapter(features) for adapter in self.adapters])


def create_fusion_model(model_config, *, num_cond_channels, num_models, rngs, dtype=jnp.float32,
                        feature_channels=0):
  """The 3D U-Net of `model_config` with the fusion's input and output channels; with
  `feature_channels` > 0, the feature variant (`FeatureFusion`) taking that many."""
  if num_models < 2:
    raise ValueError(f"fusion needs at least 2 models, got {num_models}")
  unet = models.create_model(model_config, rngs=rngs, dtype=dtype, spatial_dims=3,
                             in_channels=in_channels(num_cond_channels, num_models),
                             out_channels=num_models)
  if not feature_channels:
    return unet
  return FeatureFusion(unet, feature_channels, dtype=dtype, rngs=rngs)


def network_inputs(x_t, cond, eps):
  """(..., C) channels-last input of the fusion network; x_t (...), cond (..., C), eps (..., n)."""
  return jnp.concatenate([x_t[..., None], cond, eps], axis=-1)


def fused_eps(net, params, x_t, cond, eps, t, residual_scale=1.0, features=None, chain=None):
  """The fused epsilon of a batch: x_t (B, ...), cond (B, ..., C), eps n arrays (B, ...),
  t (B,) training timesteps, and for the feature variant `features` (B, ..., F).

  With `chain`, the training schedule (`fusion.space = 'x0'`), the network sees the members'
  x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) in place of their epsilons, its weights
  and residual act on those, and the fused x0 is returned as the epsilon it implies. The
  weights sum to one, so they fuse the same volume in either space; the residual and the
  network's inputs keep the scale of the image at every noise level instead of growing as
  sqrt((1 - abar) / abar) (about 60 at the top of the chain) when turned into x0.

  `net(params, x, t)` is a `models.Network`; with `params=None`, `net` is the module itself
  (`net(x, t)`, inside the trainer's loss).
  """
  if chain is not None:
    eps = [schedules.predict_x0_eps(chain, "eps", x_t, t, e)[0] for e in eps]
  x = network_inputs(x_t, cond, jnp.stack(eps, -1))
  inputs = (x, t) if features is None else (x, t, features)
  out = (net(*inputs) if params is None else net(params, *inputs)).astype(jnp.float32)
  fused = volume_denoisers.fuse(eps, out[..., :-1], out[..., -1], residual_scale)
  return fused if chain is None else schedules.predict_x0_eps(chain, "x0", x_t, t, fused)[1]


def fused_denoiser(denoisers, net, params, cond, *, residual_scale=1.0, with_features=False,
                   chain=None):
  """The per-step fused volume denoiser of a whole volume (X, Y, Z).

  Args:
    denoisers: the n volume denoisers of the 2D models (x_t, t) -> eps (X, Y, Z); with
      `with_features`, (x_t, t) -> (X, Y, Z, 1 + F_i): epsilon, then features.
    net: a `models.Network` of the fusion U-Net; `params` its parameters.
    cond: (X, Y, Z, C) the ensemble's condition channels (conditions, position, mask).
    chain: the training schedule for a fusion in x0 space (`fused_eps`), else None.
  """
  def denoise(x_t, t):
    outs = [d(x_t, t) for d in denoisers]
    eps = [(o[..., 0] if with_features else o)[None] for o in outs]
    features = (jnp.concatenate([o[..., 1:] for o in outs], axis=-1)[None] if with_features
                else None)
    t = jnp.ravel(jnp.asarray(t))[:1]
    return fused_eps(net, params, x_t[None], cond[None], eps, t, residual_scale, features,
                     chain)[0]
  return denoise


def space_chain(config):
  """The training schedule `fused_eps` needs for `fusion.space = 'x0'`, else None."""
  space = config.fusion.get("space", "eps")
  if space not in SPACES:
    raise InputError("fusion.space", f"is {space!r}; use one of {', '.join(SPACES)}")
  return schedules.schedule_from_config(config.diffusion) if space == "x0" else None


def uses_features(config):
  return config.fusion.get("variant", "eps") == "features"


def create_model(config, rngs, dtype, members):
  """The fusion U-Net for `config` over `members` (its channels follow from `data`, the
  number of members and, for the feature variant, their feature widths)."""
  feature_channels = sum(m.feature_channels for m in members) if uses_features(config) else 0
  return create_fusion_model(
      config.model, num_cond_channels=len(volume_cases.channel_names(config.data)),
      num_models=len(members), rngs=rngs, dtype=dtype, feature_channels=feature_channels)


def load_fusion(workdir, members, data, mesh):
  """The trained fusion network of `workdir`, checked against the configured `members`."""
  def check(config):
    record = pathlib.Path(workdir) / MEMBERS_FILE
    if not record.is_file():
      raise InputError(workdir, f"has no {MEMBERS_FILE}: not a fusion training run")
    check_signatures(json.loads(record.read_text()), members, record)
    if list(volume_cases.channel_names(config.data)) != list(volume_cases.channel_names(data)):
      raise InputError(workdir, f"the fusion sees channels "
                       f"{volume_cases.channel_names(config.data)}, the configured data "
                       f"{volume_cases.channel_names(data)}")

  return trained_models.load(workdir, mesh, check=check,
                             create=lambda c, rngs, dtype: create_model(c, rngs, dtype, members),
                             hint="train the fusion there first (configs/ensembler/fusion.py)")
