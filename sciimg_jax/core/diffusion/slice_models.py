"""Trained 2D slice models, each queried in the terms of the chain that samples a volume.

A volume sampler walks one diffusion chain (a training schedule, respaced) on one set of
named condition channels. A `SliceModel` is a 2D network trained on its own: its slicing
axis, its condition channels, its training schedule and its parameterization. Its
`output` takes the chain's x_t slice, all of the chain's condition channels and the
chain's timestep, and

  * picks the channels the model was trained on, by name (`channels`), after adding the
    through-plane context of a 2.5D model (`with_context`, `slice_context`);
  * tells the model the timestep of its own schedule at the chain's noise level
    (`timesteps`, from `schedules.equivalent_timesteps`; None when the chain is the
    model's own schedule): a model trained with 2000 steps under a 1000-step chain is
    not told the chain's number;
  * with residual targets, shifts x_t into the model's target (`shift`): a model trained
    on (target - c_m) / 2 under a chain on (target - c) / 2 sees
    x_t + sqrt(abar_t) (c - c_m) / 2, the same noise on its own target;
  * returns its raw output (its own parameterization) or converts it to epsilon or x0.

`from_trained` builds one from a `trained_models.Trained` run; the method decides the
channel names, the chain and the shift.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

from sciimg_jax.core import slice_context
from sciimg_jax.core import trained_models
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError


@dataclasses.dataclass(eq=False)
class SliceModel:
  """A trained 2D (x_t, conditions, t) -> output network and what it was trained with."""
  name: str                           # e.g. 'axial'
  axis: int                           # slicing axis of (X, Y, Z) volumes (`volumes.AXES`)
  config: ml_collections.ConfigDict   # the training run's config
  trained: trained_models.Trained
  channels: np.ndarray                # the model's condition channels among the chain's
  timesteps: np.ndarray = None        # chain timestep -> the model's timestep; None: same
  chain: schedules.Schedule = None    # the chain's training schedule (for `shift`)
  shift: tuple = None                 # (chain condition index, model condition index)
  context: int = 0                    # k slices on each side (`slice_context`)
  context_of: tuple = ()              # the chain channels they are taken of
  context_fills: tuple = ()           # and their background values

  @property
  def params(self):
    return self.trained.params

  @property
  def parameterization(self):
    return self.config.diffusion.parameterization

  @property
  def image_size(self):
    return tuple(self.config.data.image_size)

  @property
  def feature_channels(self):
    """Width of the model's last decoder features (`output(..., features=True)`)."""
    return self.config.model.channels[0]

  def with_context(self, cond, xp=jnp, batch_dims=0):
    """The chain's condition volume(s) (..., X, Y, Z, C) with the model's context channels
    appended along its axis (unchanged without context): what `output`'s `cond` indexes."""
    return slice_context.expand(cond, self.axis + batch_dims, self.context, self.context_of,
                                self.context_fills, xp=xp)

  def output(self, params, x_t, cond, t, *, to=None, features=False):
    """The model's prediction for the chain's x_t (B, H, W, 1), cond (B, H, W, C'), t (B,).

    `cond` holds the chain's channels and, for a model with context, the context channels
    (slices of `with_context`).

    `to`: None for the model's own parameterization, or 'eps' / 'x0' (converted with the
    model's own schedule). With `features`, (B, H, W, 1 + feature_channels): the
    prediction, then the network's last decoder features (Diff-Ensembler's feature variant).
    """
    x = x_t
    if self.shift is not None:
      abar = self.chain.alphas_cumprod[jnp.asarray(t, jnp.int32)]
      abar = abar.reshape((-1,) + (1,) * (x_t.ndim - 1))
      ours, theirs = self.shift
      x = x_t + jnp.sqrt(abar) * (cond[..., ours:ours + 1] - cond[..., theirs:theirs + 1]) / 2
    t_model = t if self.timesteps is None else jnp.asarray(self.timesteps)[
        jnp.asarray(t, jnp.int32)]
    inputs = jnp.concatenate([x, cond[..., self.channels]], axis=-1)
    if features:  # positional: Network passes no keywords
      out, feats = self.trained.net(params, inputs, t_model, None, True)
    else:
      out = self.trained.net(params, inputs, t_model)
    out = out.astype(jnp.float32)
    if to is not None and to != self.parameterization:
      if to not in ("eps", "x0"):
        raise ValueError(f"SliceModel.output converts to 'eps' or 'x0', not {to!r}")
      own = schedules.schedule_from_config(self.config.diffusion)
      x0, eps = schedules.predict_x0_eps(own, self.parameterization, x, t_model, out)
      out = eps if to == "eps" else x0
    return jnp.concatenate([out, feats], axis=-1) if features else out


def from_trained(trained, chain_channels, *, own_channels=None, chain_config=None, name=None,
                 shift=None, context_fills=None):
  """A `SliceModel` of a trained run, on a chain with channels named `chain_channels`.

  Args:
    trained: a `trained_models.Trained` 2D diffusion model (config.data.axis names its axis).
    chain_channels: the names of the chain's condition channels, in order.
    own_channels: the names of the model's condition channels, in its input order
      (default `config.data.conditions`).
    chain_config: the chain's diffusion block, or None when the chain is the model's own
      schedule (no timestep mapping).
    name: default the model's axis.
    shift: (chain condition index, model condition index) of a residual shift, or None.
    context_fills: {chain channel name: background value} of the channels a model trained
      with `data.context` = k > 0 sees on its neighbour slices (`slice_context`).
  """
  config = trained.config
  own_channels = tuple(config.data.conditions) if own_channels is None else tuple(own_channels)
  names = list(chain_channels)
  k = int(config.data.get("context", 0))
  context_fills = dict(context_fills or {}) if k else {}
  missing = [c for c in context_fills if c not in names]
  if missing:
    raise InputError("data.conditions", f"the context channels {missing} are not among the "
                     f"chain's channels {tuple(names)}")
  names += slice_context.names(tuple(context_fills), k)
  missing = [c for c in own_channels if c not in names]
  if missing:
    raise InputError("data.conditions", f"the {name or config.data.axis} model takes "
                     f"{missing}, which the chain's channels {tuple(names)} lack")
  chain = timesteps = None
  if chain_config is not None:
    chain = schedules.schedule_from_config(chain_config)
    timesteps = schedules.equivalent_timesteps(chain, schedules.schedule_from_config(
        config.diffusion))
  return SliceModel(name=name or config.data.axis, axis=volumes.AXES[config.data.axis],
                    config=config, trained=trained,
                    channels=np.asarray([names.index(c) for c in own_channels]),
                    timesteps=timesteps, chain=chain, shift=shift, context=k,
                    context_of=tuple(chain_channels.index(c) for c in context_fills),
                    context_fills=tuple(context_fills.values()))


def along_axis(model, params, x_t, cond, t, *, to=None, features=False):
  """`model.output` on every slice along its axis of a batch of crops.

  x_t (B, X, Y, Z, 1), cond (B, X, Y, Z, C), t (B,) -> (B, X, Y, Z, 1), or with `features`
  (B, X, Y, Z, 1 + feature_channels).
  """
  a = model.axis + 1
  cond = model.with_context(cond, batch_dims=1)  # beyond the crop: background
  moved_x, moved_c = jnp.moveaxis(x_t, a, 1), jnp.moveaxis(cond, a, 1)
  b, s = moved_x.shape[:2]
  flat = lambda v: v.reshape((b * s,) + v.shape[2:])
  out = model.output(params, flat(moved_x), flat(moved_c), jnp.repeat(t, s), to=to,
                     features=features)
  return jnp.moveaxis(out.reshape(moved_x.shape[:-1] + out.shape[-1:]), 1, a)
