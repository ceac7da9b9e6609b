"""The trained 2D diffusion models an ensemble fuses, as slice models of the ensemble's chain.

An ensemble walks one diffusion chain (its `diffusion` config) on one set of channels
(`volume_cases.channel_names` of its `data` config). Each member is a core
`slice_models.SliceModel` trained on its own: its own slicing axis, conditions,
training schedule and parameterization. `make_member` sets what it needs to be queried in
the ensemble's terms: its channels by name, the timestep of its own schedule at the
chain's noise level (`schedules.equivalent_timesteps`: a model trained with 2000 steps
under a 1000-step chain is not told the chain's number, the released code's fault),
and, with residual targets on another condition, the shift of x_t into its own target.
The volume sampler reads every member as epsilon, whatever its parameterization.
"""

from data_pipelines import volume_cases
from sciimg_jax.core import trained_models
from sciimg_jax.core.diffusion import slice_models
from sciimg_jax.core.errors import InputError


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
  """The `SliceModel` of a member of an ensemble on `data` whose chain is `chain_config`."""
  config = trained.config
  names = list(volume_cases.channel_names(data))
  shift = None
  if data.get("residual") and config.data.conditions[0] != data.conditions[0]:
    shift = (0, names.index(config.data.conditions[0]))
  return slice_models.from_trained(trained, names,
                                   own_channels=volume_cases.slice_channel_names(config.data),
                                   chain_config=chain_config, name=name, shift=shift,
                                   context_fills=volume_cases.context_fills(config.data))


def load_members(workdirs, data, chain_config, mesh):
  """The trained 2D models of `workdirs` as members of an ensemble on `data`."""
  members = []
  for workdir in workdirs:
    trained = trained_models.load(workdir, mesh, check=lambda c, w=workdir: check_member(c, data, w),
                                  hint="train a 2D model there first (configs/ensembler/)")
    members.append(make_member(trained, data, chain_config))
  contexts = {w: int(m.config.data.get("context", 0)) for w, m in zip(workdirs, members)}
  if len(set(contexts.values())) > 1:
    raise InputError(workdirs[0], "the 2D models were trained with different through-plane "
                     "contexts (data.context): " + ", ".join(f"{w}: {k}" for w, k in
                                                             contexts.items()) +
                     "; an ensemble's members see the same slab, retrain them with one width")
  names = [m.name for m in members]
  if len(set(names)) != len(names):  # two models of one axis: tell them apart by position
    for i, m in enumerate(members):
      m.name = f"{m.name}{i}"
  return members
