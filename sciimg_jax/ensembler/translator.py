"""Whole-volume translation: every method is a configuration of the one sampler.

`VolumeTranslator(config, members, fusion)` samples a volume from its condition
channels (`volume_cases.channel_names`, on the `data.volume_shape` grid) with the
denoiser `METHODS[name]` builds:

  <axis>    one 2D model (a member's name: 'axial', 'coronal', 'sagittal') slice by slice
  average   the mean of every member's epsilon (TOSM / MADM)
  tpdm      the members alternating from step to step (TPDM)
  fused     Diff-Ensembler: the members' epsilons combined voxel by voxel by the trained
            3D fusion network at every step

all walking one respaced chain of the ensemble's training schedule (`diffusion`) with
`sampling.stepper`; each member is told its own timestep (`members.Member`). With
`sampling.data_consistency` and a pooled condition of the target (`'t2f:pool4'`), the
block means of every step's sample are set to the low-resolution input's
(`consistency.low_pass_replacement`), so the output average-pools to it exactly.
`sampling.num_samples = N` draws N samples in one jitted call (vmapped over N keys;
sample i uses `fold_in(key, i)`); their mean is the posterior mean.

Two deterministic baselines sit beside them (`BASELINES`): `cubic`, the low-resolution
input upsampled by cubic splines (`scipy.ndimage.zoom`, order 3), and `regressor`, a 2D
U-Net trained with L1 (`slice_task`, objective 'regression') applied slice by slice.
Volumes are slices chunked to `sampling.chunk_size` per network call (bounded memory),
each chunk split over the devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

from data_pipelines import volume_cases
from sciimg_jax.core import sharding
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.diffusion.steppers import STEPPERS
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from sciimg_jax.ensembler import fusion as fusion_lib

INIT_NOISE_STREAM = 1 << 30  # fold_in salt of the starting noise (off the step keys)
SAMPLES_AXIS = "samples"


def _combined(kind):
  def build(translator, params, cond):
    parts = [translator.member_denoiser(m, params, cond) for m in translator.members]
    if kind == "average":
      return volume_denoisers.average(parts)
    if kind == "tpdm":
      return volume_denoisers.alternate(parts, translator.chain.timesteps)
    if translator.fusion is None:
      raise InputError("translate.fusion", "method 'fused' needs a trained fusion workdir")
    f = translator.fusion.config.fusion
    features = f.get("variant", "eps") == "features"
    if features:
      parts = [translator.member_denoiser(m, params, cond, features=True)
               for m in translator.members]
    return fusion_lib.fused_denoiser(parts, translator.fusion.net, params["fusion"], cond,
                                     residual_scale=f.residual_scale, with_features=features)
  return build


METHODS = {"average": _combined("average"), "tpdm": _combined("tpdm"), "fused": _combined("fused")}
BASELINES = ("cubic", "regressor")


def pooled_condition(data):
  """(index, factor) of the condition that is the target average-pooled, or None."""
  for i, spec in enumerate(data.conditions):
    key, factor = volume_cases.parse_condition(spec)
    if key == data.target and factor > 1:
      return i, factor
  return None


def check_sampling(s):
  if s.stepper not in STEPPERS:
    raise InputError("sampling.stepper", f"unknown stepper {s.stepper!r}; known: "
                     f"{', '.join(STEPPERS)}")
  if not (isinstance(s.num_samples, int) and s.num_samples >= 1):
    raise InputError("sampling.num_samples", f"must be a whole number >= 1, got {s.num_samples!r}")
  if s.chunk_size < 1:
    raise InputError("sampling.chunk_size", f"must be >= 1, got {s.chunk_size!r}")


def to_image(data, x, cond):
  """A sample in the chain's space -> the target image in [-1, 1] (undoing the residual)."""
  return volume_cases.image_of(data, x, cond[..., 0])


class VolumeTranslator:
  """Samples target volumes from condition channels with any method of `METHODS`."""

  def __init__(self, config, members, fusion=None, mesh=None):
    check_sampling(config.sampling)
    self.config, self.members, self.fusion = config, list(members), fusion
    self.data, s = config.data, config.sampling
    self.mesh = mesh or sharding.make_mesh()
    self.devices = self.mesh.devices.size
    self.chain = schedules.respace(schedules.schedule_from_config(config.diffusion), s.steps,
                                   s.spacing)
    self.pool = pooled_condition(self.data) if s.data_consistency else None
    self.names = [m.name for m in self.members] + list(METHODS)
    self._runs = {}

  def params(self):
    p = {m.name: m.params for m in self.members}
    if self.fusion is not None:
      p["fusion"] = self.fusion.params
    return p

  def member_denoiser(self, member, params, cond, features=False):
    """`member` slice by slice over the volume: (x_t, t) -> eps (X, Y, Z), or with
    `features` (X, Y, Z, 1 + F): epsilon and its decoder features."""
    apply = lambda x, c, t: member.eps_2d(params[member.name], x, c, t, features)
    return volume_denoisers.slicewise(
        apply, cond, member.axis, chunk_size=self.config.sampling.chunk_size, mesh=self.mesh,
        multiple=self.devices, channels=1 + member.feature_channels if features else None)

  def check_method(self, method):
    """Stops unless `method` is a member's name, a key of METHODS or a baseline."""
    known = self.names + list(BASELINES)
    if method not in known:
      raise InputError("translate.methods", f"unknown method {method!r}; known: "
                       f"{', '.join(known)}")

  def denoiser(self, method, params, cond):
    self.check_method(method)
    if method in METHODS:
      return METHODS[method](self, params, cond)
    member = next(m for m in self.members if m.name == method)
    return self.member_denoiser(member, params, cond)

  def low_resolution(self, cond):
    """The data-consistency target in the chain's space, (X/f, Y/f, Z/f)."""
    i, f = self.pool
    low = consistency.avg_pool(cond[..., i], f)
    if self.data.get("residual"):
      low = (low - consistency.avg_pool(cond[..., 0], f)) / 2.0
    return low

  def _sample(self, method, params, cond, key):
    s = self.config.sampling
    shape = cond.shape[:3]
    x_init = jax.random.normal(jax.random.fold_in(key, INIT_NOISE_STREAM), shape)
    post = None
    if self.pool is not None:
      post = consistency.low_pass_replacement(self.chain, self.low_resolution(cond), self.pool[1])
    x = sampler.sample(self.denoiser(method, params, cond), self.chain, x_init, key,
                       parameterization="eps", stepper=s.stepper, eta=s.eta,
                       clip_x0=s.clip_x0 or None, post_step_fn=post)
    return to_image(self.data, x, cond)

  def _keys(self, key):
    return jnp.stack([jax.random.fold_in(key, i) for i in range(self.config.sampling.num_samples)])

  def compile(self, method, cond):
    """Compiles `method` for volumes shaped like `cond` (ahead of the call, so that timing a
    call measures sampling, not compilation)."""
    if method not in self.names:
      self.check_method(method)  # a baseline is not compiled: the message names them all
      raise InputError("translate.methods", f"{method!r} is a baseline, not a sampler")
    if method not in self._runs:
      run = lambda params, cond, keys: jax.vmap(
          lambda k: self._sample(method, params, cond, k), axis_name=SAMPLES_AXIS)(keys)
      self._runs[method] = jax.jit(run).lower(
          self.params(), jnp.asarray(cond), self._keys(jax.random.key(0))).compile()
    return self._runs[method]

  def __call__(self, method, cond, key):
    """(N, X, Y, Z) samples of the target in [-1, 1] for cond (X, Y, Z, C)."""
    run = self.compile(method, cond)
    return np.asarray(jax.device_get(run(self.params(), jnp.asarray(cond), self._keys(key))))


def cubic_upsampling(data, cond):
  """The low-resolution condition upsampled by cubic splines (order 3, block-aligned), [-1, 1]
  target image."""
  pool = pooled_condition(data)
  if pool is None:
    raise InputError("translate.methods", "'cubic' needs a pooled condition of the target "
                     f"(e.g. '{data.target}:pool4'); data.conditions are {tuple(data.conditions)}")
  i, f = pool
  low = np.asarray(consistency.avg_pool(jnp.asarray(cond[..., i]), f))
  # grid_mode: each low-resolution value stands for its block (as the pooling made it),
  # not for a point at the block's corner; without it the result shifts by up to 1.5 voxels
  # (18.1 against 20.6 dB on a held-out embedded subject).
  return ndi.zoom(low, f, order=3, mode="nearest", grid_mode=True).astype(np.float32)


def slicewise_network(trained, data, cond, chunk_size, mesh):
  """A deterministic 2D network (t = 0, objective 'regression' or 'segmentation') applied to
  every slice along its axis of the volume with `data`'s channels `cond` (X, Y, Z, C).

  Returns the regressor's target image in [-1, 1] or the segmenter's probability.
  """
  config = trained.config
  channels = volume_cases.channel_indices(data, config.data, what=config.data.axis + " network")
  own = jnp.asarray(cond)[..., channels]

  def apply(x, c, t):
    out = trained.net(trained.params, c, jnp.zeros_like(t)).astype(jnp.float32)
    return jax.nn.sigmoid(out) if config.train.objective == "segmentation" else out

  denoise = volume_denoisers.slicewise(apply, own, volumes.AXES[config.data.axis],
                                       chunk_size=chunk_size, mesh=mesh,
                                       multiple=mesh.devices.size)
  out = np.asarray(jax.jit(denoise)(jnp.zeros(cond.shape[:3]), jnp.zeros((), jnp.int32)))
  return volume_cases.image_of(config.data, out, np.asarray(own[..., 0]))
