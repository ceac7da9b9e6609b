"""The trained 2D diffusion models an ensemble fuses, each queried in the ensemble's terms.

An ensemble walks one diffusion chain (its `diffusion` config) on one set of channels
(`volume_cases.channel_names` of its `data` config). A `Member` is a 2D model trained on
its own: its own slicing axis, conditions, training schedule and parameterization. Its
`eps_2d` takes the ensemble's x_t slice, all of the ensemble's condition channels and the
chain's timestep, and

  * picks the channels the model was trained on, by name;
  * tells the model the timestep of its own schedule at the chain's noise level
    (`schedules.equivalent_timesteps`: a model trained with 2000 steps under a
    1000-step chain is not told the chain's number, the released code's fault);
  * with residual targets, shifts x_t into the model's target: a model trained on
    (target - c_m) / 2 under a chain on (target - c) / 2 sees
    x_t + sqrt(abar_t) (c - c_m) / 2, the same noise on its own target;
  * returns epsilon, whatever the model's parameterization.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import volume_cases
from sciimg_jax.core import trained_models
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError


@dataclasses.dataclass(eq=False)
class Member:
  name: str                      # e.g. 'axial'
  axis: int
  config: ml_collections.ConfigDict
  trained: trained_models.Trained
  channels: np.ndarray           # the model's cond channels among the ensemble's
  timesteps: np.ndarray          # chain timestep -> the model's timestep
  chain: schedules.Schedule      # the ensemble's training chain
  shift: tuple = None            # (ensemble condition index, model condition index) or None

  @property
  def params(self):
    return self.trained.params

  @property
  def feature_channels(self):
    """Width of the model's last decoder features (`eps_2d(..., features=True)`)."""
    return self.config.model.channels[0]

  def eps_2d(self, params, x_t, cond, t, features=False):
    """epsilon (B, H, W, 1) for the ensemble's x_t (B, H, W, 1), cond (B, H, W, C) and the
    chain's timesteps t (B,); with `features`, (B, H, W, 1 + feature_channels): epsilon
    and the network's last decoder features (Diff-Ensembler's feature variant)."""
    t = jnp.asarray(t, jnp.int32)
    x = x_t
    own_cond = cond[..., self.channels]
    if self.shift is not None:
      abar = self.chain.alphas_cumprod[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
      ours, theirs = self.shift
      x = x_t + jnp.sqrt(abar) * (cond[..., ours:ours + 1] - cond[..., theirs:theirs + 1]) / 2
    t_model = jnp.asarray(self.timesteps)[t]
    inputs = jnp.concatenate([x, own_cond], axis=-1)
    if features:  # positional: Network passes no keywords
      out, feats = self.trained.net(params, inputs, t_model, None, True)
    else:
      out = self.trained.net(params, inputs, t_model)
    out = out.astype(jnp.float32)
    d = self.config.diffusion
    if d.parameterization != "eps":
      own = schedules.schedule_from_config(d)
      out = schedules.predict_x0_eps(own, d.parameterization, x, t_model, out)[1]
    return jnp.concatenate([out, feats], axis=-1) if features else out


def check_member(config, data, where):
  """Stops unless the run's `config` can join an ensemble on `data` (names `where`)."""
  m = config.data
  if config.train.get("objective", "diffusion") != "diffusion":
    raise InputError(where, f"holds a {config.train.objective} model, not a diffusion model")
  if m.target != data.target:
    raise InputError(where, f"its model learns {m.target!r}; the ensemble learns {data.target!r}")
  if bool(m.get("residual")) != bool(data.get("residual")):
    raise InputError(where, f"its model has data.residual={bool(m.get('residual'))}, the "
                     f"ensemble {bool(data.get('residual'))}: both must learn the same target")
  missing = [c for c in m.conditions if c not in data.conditions]
  if missing:
    raise InputError(where, f"its model is conditioned on {missing}, which the ensemble's "
                     f"data.conditions {tuple(data.conditions)} lack")
  if tuple(m.volume_shape) != tuple(data.volume_shape):
    raise InputError(where, f"its model was trained on volumes of {tuple(m.volume_shape)}, "
                     f"the ensemble uses {tuple(data.volume_shape)} (positions would differ)")


def make_member(trained, data, chain_config, name=None):
  """A `Member` of an ensemble on `data` whose chain is `chain_config` (a diffusion block)."""
  config = trained.config
  names = list(volume_cases.channel_names(data))
  channels = np.asarray(volume_cases.channel_indices(data, config.data))
  chain = schedules.schedule_from_config(chain_config)
  own = schedules.schedule_from_config(config.diffusion)
  shift = None
  if data.get("residual") and config.data.conditions[0] != data.conditions[0]:
    shift = (0, names.index(config.data.conditions[0]))
  return Member(name=name or config.data.axis, axis=volumes.AXES[config.data.axis],
                config=config, trained=trained, channels=channels,
                timesteps=schedules.equivalent_timesteps(chain, own), chain=chain, shift=shift)


def load_members(workdirs, data, chain_config, mesh):
  """The trained 2D models of `workdirs` as members of an ensemble on `data`."""
  members = []
  for workdir in workdirs:
    trained = trained_models.load(workdir, mesh, check=lambda c, w=workdir: check_member(c, data, w),
                                  hint="train a 2D model there first (configs/ensembler/)")
    members.append(make_member(trained, data, chain_config))
  names = [m.name for m in members]
  if len(set(names)) != len(names):  # two models of one axis: tell them apart by position
    for i, m in enumerate(members):
      m.name = f"{m.name}{i}"
  return members


def along_axis(member, params, x_t, cond, t, features=False):
  """`member.eps_2d` on every slice along its axis of a batch of crops.

  x_t (B, X, Y, Z, 1), cond (B, X, Y, Z, C), t (B,) -> eps (B, X, Y, Z, 1), or with
  `features` (B, X, Y, Z, 1 + feature_channels).
  """
  a = member.axis + 1
  moved_x, moved_c = jnp.moveaxis(x_t, a, 1), jnp.moveaxis(cond, a, 1)
  b, s = moved_x.shape[:2]
  flat = lambda v: v.reshape((b * s,) + v.shape[2:])
  out = member.eps_2d(params, flat(moved_x), flat(moved_c), jnp.repeat(t, s), features)
  return jnp.moveaxis(out.reshape(moved_x.shape[:-1] + out.shape[-1:]), 1, a)
