"""Whole-volume translation: every method is a configuration of the one sampler.

`VolumeTranslator(config, members, fusion)` samples a volume from its condition
channels (`volume_cases.channel_names`, on the `data.volume_shape` grid) with the
denoiser the core volume sampler builds for a method:

  <axis>    one 2D model (a member's name: 'axial', 'coronal', 'sagittal') slice by slice
  average   the mean of every member's epsilon (TOSM / MADM)
  tpdm      the members alternating from step to step (TPDM)
  fused     Diff-Ensembler: the members' epsilons combined voxel by voxel by the trained
            3D fusion network at every step
  3d_only   the released code's baseline: a 3D diffusion model alone (`volume_model`)

all walking one respaced chain of the ensemble's training schedule (`diffusion`) with
`sampling.stepper`, built by the core `volume_sampler.VolumeSampler` (which this module
gives the combinator `fused`); each member is told its own timestep and read as epsilon
(`slice_models.SliceModel`). With
`sampling.data_consistency` and a pooled condition of the target (`'t2f:pool4'`), the
block means of every step's sample are set to the low-resolution input's
(`consistency.low_pass_replacement`), so the output average-pools to it exactly.
`sampling.num_samples = N` draws N samples in one jitted call (vmapped over N keys;
sample i uses `fold_in(key, i)`); their mean is the posterior mean.

Two deterministic baselines sit beside them (`BASELINES`): `cubic`, the low-resolution
input upsampled by cubic splines (`scipy.ndimage.zoom`, order 3), and `regressor`, a 2D
U-Net trained with L1 (`core.slice_task`, objective 'regression') applied slice by slice.
Volumes are slices chunked to `sampling.chunk_size` per network call, all samples
together (bounded memory), each chunk split over the devices. `check_method` stops on a
method that is unknown or lacks what it needs (a fusion, a regressor, a pooled condition)
before any case is read.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

from data_pipelines import volume_cases
from sciimg_jax.core import slice_context
from sciimg_jax.core import slice_task
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import sampling_config
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.diffusion import volume_sampler
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from sciimg_jax.ensembler import fusion as fusion_lib
from sciimg_jax.ensembler import volume_model as volume_model_lib


def pooled_condition(data):
  """(index, factor) of the condition that is the target average-pooled, or None."""
  for i, spec in enumerate(data.conditions):
    key, factor = volume_cases.parse_condition(spec)
    if key == data.target and factor > 1:
      return i, factor
  return None


def low_resolution(data, pool, cond):
  """The data-consistency target in the chain's space, (X/f, Y/f, Z/f), of a volume's
  condition channels cond (X, Y, Z, C); `pool` is `pooled_condition(data)`."""
  i, f = pool
  low = consistency.avg_pool(cond[..., i], f)
  if data.get("residual"):
    low = (low - consistency.avg_pool(cond[..., 0], f)) / 2.0
  return low


def to_image(data, x, cond):
  """A sample in the chain's space -> the target image in [-1, 1] (undoing the residual)."""
  return volume_cases.image_of(data, x, cond[..., 0])


class VolumeTranslator:
  """Samples target volumes from condition channels with any method of the volume sampler."""

  def __init__(self, config, members, fusion=None, mesh=None, regressor=None,
               volume_model=None):
    sampling_config.check(config.sampling)
    self.config, self.members, self.fusion = config, list(members), fusion
    self.regressor, self.volume_model = regressor, volume_model
    self.data, s = config.data, config.sampling
    self.sampler = volume_sampler.VolumeSampler(
        self.members, parameterization="eps", mesh=mesh, chunk_size=s.chunk_size,
        num_samples=s.num_samples,
        combinators={"fused": self._fused, volume_model_lib.NAME: self._volume_only},
        where="evaluate.methods")
    self.mesh = self.sampler.mesh
    self.chain = schedules.respace(schedules.schedule_from_config(config.diffusion), s.steps,
                                   s.spacing)
    self.walk = sampling_config.stage(s)
    self.pool = pooled_condition(self.data) if s.data_consistency else None
    self.names = self.sampler.methods

  def _fused(self, sampler_, params, cond, chain, slices):
    _needs_fusion(self)
    f = self.fusion.config.fusion
    features = fusion_lib.uses_features(self.fusion.config)
    parts = sampler_.model_denoisers(params, cond, slices, features=features)
    return fusion_lib.fused_denoiser(parts, self.fusion.net, params["fusion"], cond,
                                     residual_scale=f.residual_scale, with_features=features,
                                     chain=fusion_lib.space_chain(self.fusion.config))

  def _volume_only(self, sampler_, params, cond, chain, slices):
    _needs_volume_model(self)
    return volume_model_lib.denoiser(self.volume_model, params[volume_model_lib.NAME], cond)

  def params(self):
    p = self.sampler.params()
    if self.fusion is not None:
      p["fusion"] = self.fusion.params
    if self.volume_model is not None:
      p[volume_model_lib.NAME] = self.volume_model.params
    return p

  def check_method(self, method):
    """Stops unless `method` is a member's name, a combinator or a baseline, and has what it
    needs (`REQUIREMENTS`)."""
    self.sampler.check_method(method, "evaluate.methods", extra=BASELINES)
    if method in REQUIREMENTS:
      REQUIREMENTS[method](self)

  def denoiser(self, method, params, cond):
    return self.sampler.denoiser(method, params, cond, self.chain)

  def low_resolution(self, cond):
    """The data-consistency target in the chain's space, (X/f, Y/f, Z/f)."""
    return low_resolution(self.data, self.pool, cond)

  def _walk(self, method):
    def sample(params, cond, key):
      x_init = volume_sampler.initial_noise(key, cond.shape[:3])
      post = None
      if self.pool is not None:
        post = consistency.low_pass_replacement(self.chain, self.low_resolution(cond),
                                                self.pool[1])
      x = sampler.sample(self.denoiser(method, params, cond), self.chain, x_init, key,
                         parameterization="eps", **self.walk.step_args,
                         clip_x0=self.walk.clip, post_step_fn=post)
      return to_image(self.data, x, cond)
    return sample

  def _check_sampler_method(self, method):
    if method not in self.names:
      self.check_method(method)  # a baseline is not compiled: the message names them all
      raise InputError("evaluate.methods", f"{method!r} is a baseline, not a sampler")

  def compile(self, method, cond):
    """Compiles `method` for volumes shaped like `cond` (ahead of the call, so that timing a
    call measures sampling, not compilation)."""
    self._check_sampler_method(method)
    return self.sampler.compile(method, self._walk(method), self.params(), jnp.asarray(cond))

  def __call__(self, method, cond, key):
    """(N, X, Y, Z) samples of the target in [-1, 1] for cond (X, Y, Z, C)."""
    self._check_sampler_method(method)
    return self.sampler.run(method, self._walk(method), self.params(), jnp.asarray(cond), key)

  def image(self, method, cond, key):
    """The result of `method` (a sampler's posterior mean, or a baseline's image) in [-1, 1]."""
    if method in BASELINES:
      return BASELINES[method](self, cond)
    return self(method, cond, key).mean(axis=0)


def cubic_upsampling(data, cond):
  """The low-resolution condition upsampled by cubic splines (order 3, block-aligned), [-1, 1]
  target image."""
  pool = pooled_condition(data)
  if pool is None:
    raise InputError("evaluate.methods", "'cubic' needs a pooled condition of the target "
                     f"(e.g. '{data.target}:pool4'); data.conditions are {tuple(data.conditions)}")
  i, f = pool
  low = np.asarray(consistency.avg_pool(jnp.asarray(cond[..., i]), f))
  # grid_mode: each low-resolution value stands for its block (as the pooling made it),
  # not for a point at the block's corner; without it the result shifts by up to 1.5 voxels
  # (18.1 against 20.6 dB on a held-out embedded subject).
  return ndi.zoom(low, f, order=3, mode="nearest", grid_mode=True).astype(np.float32)


def _needs_fusion(translator):
  if translator.fusion is None:
    raise InputError("evaluate.fusion", "method 'fused' needs a trained fusion workdir")


def _needs_volume_model(translator):
  if translator.volume_model is None:
    raise InputError("evaluate.volume_model", f"method {volume_model_lib.NAME!r} needs a "
                     "trained 3D model workdir (configs/ensembler/volume_model.py)")


def _needs_regressor(translator):
  if translator.regressor is None:
    raise InputError("evaluate.regressor", "method 'regressor' needs a trained regressor workdir")


def _needs_pooled_condition(translator):
  if pooled_condition(translator.data) is None:
    data = translator.data
    raise InputError("evaluate.methods", "'cubic' needs a pooled condition of the target "
                     f"(e.g. '{data.target}:pool4'); data.conditions are {tuple(data.conditions)}")


def _cubic(translator, cond):
  return cubic_upsampling(translator.data, cond)


def _regressor(translator, cond):
  _needs_regressor(translator)
  return slicewise_network(translator.regressor, translator.data, cond,
                           translator.config.sampling.chunk_size, translator.mesh)


# The deterministic baselines: name -> (translator, cond) -> image in [-1, 1].
BASELINES = {"cubic": _cubic, "regressor": _regressor}
# What a method needs beyond the members: name -> check(translator), raising InputError.
REQUIREMENTS = {"fused": _needs_fusion, "regressor": _needs_regressor,
                "cubic": _needs_pooled_condition, volume_model_lib.NAME: _needs_volume_model}


def slicewise_network(trained, data, cond, chunk_size, mesh):
  """A deterministic 2D network (t = 0, objective 'regression' or 'segmentation') applied to
  every slice along its axis of the volume with `data`'s channels `cond` (X, Y, Z, C).

  Returns the regressor's target image in [-1, 1] or the segmenter's probability.
  """
  config = trained.config
  channels = volume_cases.channel_indices(data, config.data, what=config.data.axis + " network")
  own = jnp.asarray(cond)[..., channels]
  axis, k = volumes.AXES[config.data.axis], int(config.data.get("context", 0))
  with_context = slice_context.expand(own, axis, k, range(len(config.data.conditions)),
                                      list(volume_cases.context_fills(config.data).values()),
                                      xp=jnp)

  predict = slice_task.objective_of(config).predictor(config, trained.net, None)
  apply = lambda x, c, t: predict(trained.params, c, None)

  denoise = volume_denoisers.slicewise(apply, with_context, axis,
                                       chunk_size=chunk_size, mesh=mesh,
                                       multiple=mesh.devices.size)
  out = np.asarray(jax.jit(denoise)(jnp.zeros(cond.shape[:3]), jnp.zeros((), jnp.int32)))
  return volume_cases.image_of(config.data, out, np.asarray(own[..., 0]))
