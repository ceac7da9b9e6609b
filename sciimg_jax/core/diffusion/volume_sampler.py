"""The one volume sampler over trained 2D slice models.

`VolumeSampler(models, ...)` holds the trained `slice_models.SliceModel`s of a method
and builds, for any method name, a volume denoiser `(x_t, t) -> output` on a case's
condition channels (X, Y, Z, C):

  <model name>  that 2D model slice by slice along its axis (`volume_denoisers.slicewise`)
  average       the mean of every model's output (TOSM / MADM)
  tpdm          the models alternating from one step to the next (TPDM)
  <registered>  any combinator a method adds (`combinators`), e.g. Diff-Ensembler's `fused`

Each model's output is read in the sampler's `parameterization` (`SliceModel.output`):
a method whose models share the chain's schedule and parameterization combines their raw
outputs; Diff-Ensembler combines epsilons.

The method writes the walk (`walk(params, case, key) -> volume`: its stages, its known
region or data consistency around `sampler.sample`); `run` draws `num_samples` samples
of it in one jitted call (vmapped over keys `fold_in(key, i)` on the axis
`SAMPLES_AXIS`, so every network call takes the slices of all samples), compiled ahead
of the call once per method and case shapes. Slices are cut into chunks of
`chunk_size // num_samples` slices a network call (bounded memory), each chunk split
over the mesh's devices; `restricted_slices` lists, per model, only the slices that
meet a dilated mask, in an array of the axis' length, so that every case of one volume
shape shares one compiled sampler, which runs only the chunks those slices fill.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.core import sharding
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.errors import InputError

INIT_NOISE_STREAM = 1 << 30  # fold_in salt of a walk's starting noise (off the step keys)
SAMPLES_AXIS = "samples"     # the vmapped axis of `num_samples` samples


def _average(sampler, params, cond, chain, slices):
  return volume_denoisers.average(sampler.model_denoisers(params, cond, slices))


def _tpdm(sampler, params, cond, chain, slices):
  return volume_denoisers.alternate(sampler.model_denoisers(params, cond, slices),
                                    chain.timesteps)


# name -> build(sampler, params, cond, chain, slices) -> denoiser; methods add their own.
COMBINATORS = {"average": _average, "tpdm": _tpdm}


def initial_noise(key, shape):
  """A walk's starting noise, drawn off the step keys (`INIT_NOISE_STREAM`)."""
  return jax.random.normal(jax.random.fold_in(key, INIT_NOISE_STREAM), shape)


class VolumeSampler:
  """Denoisers over whole volumes from trained 2D models, and N samples in one jitted call."""

  def __init__(self, models, *, parameterization, mesh=None, chunk_size=32, num_samples=1,
               combinators=None, where="sampling"):
    self.models = {m.name: m for m in models}
    if len(self.models) != len(models):
      raise InputError(where, f"two slice models share a name: {[m.name for m in models]}")
    self.combinators = {**COMBINATORS, **(combinators or {})}
    self.parameterization = parameterization
    self.mesh = mesh or sharding.local_mesh()
    self.devices = self.mesh.devices.size
    self.num_samples = num_samples
    # A network call takes `chunk_size` slices in all, N samples x chunk_size // N each;
    # chunks are multiples of the device count (each splits over the mesh).
    self.chunk_size = max(chunk_size // num_samples, 1)
    self.where = where
    self._compiled = {}

  @property
  def methods(self):
    """Every method name: the models' names, then the combinators'."""
    return list(self.models) + list(self.combinators)

  def check_method(self, method, key="method", extra=()):
    """Stops unless `method` is a model's name, a combinator or one of `extra`."""
    known = self.methods + list(extra)
    if method not in known:
      raise InputError(key, f"unknown method {method!r}; known: {', '.join(known)}")

  def params(self):
    return {name: m.params for name, m in self.models.items()}

  def model_denoiser(self, name, params, cond, slices=None, features=False):
    """Model `name` slice by slice over the volume: (x_t, t) -> (X, Y, Z), or with
    `features` (X, Y, Z, 1 + F): the output and the model's decoder features.

    `slices` is None (every slice) or {model name: slice indices} (`restricted_slices`).
    A 2.5D model's context channels are added to `cond` here, once per case.
    """
    model = self.models[name]
    apply = lambda x, c, t: model.output(params[name], x, c, t, to=self.parameterization,
                                         features=features)
    return volume_denoisers.slicewise(
        apply, model.with_context(cond), model.axis, None if slices is None else slices[name],
        chunk_size=self.chunk_size, mesh=self.mesh, multiple=self.devices,
        channels=1 + model.feature_channels if features else None)

  def model_denoisers(self, params, cond, slices=None, features=False):
    return [self.model_denoiser(name, params, cond, slices, features) for name in self.models]

  def denoiser(self, method, params, cond, chain, slices=None):
    """The volume denoiser of `method` on the case's channels `cond` (X, Y, Z, C), for a
    walk on `chain` (its timesteps drive `tpdm`)."""
    self.check_method(method, self.where)
    if method in self.models:
      return self.model_denoiser(method, params, cond, slices)
    return self.combinators[method](self, params, cond, chain, slices)

  def restricted_slices(self, mask, dilation):
    """{model name: the slices along its axis that meet the dilated mask}
    (`volume_denoisers.restricted_slices`: one shape for every mask)."""
    return {name: volume_denoisers.restricted_slices(mask, model.axis, dilation=dilation)
            for name, model in self.models.items()}

  def keys(self, key):
    """The samples' keys: sample i uses `fold_in(key, i)` (sample 0 is the one-sample run)."""
    return jnp.stack([jax.random.fold_in(key, i) for i in range(self.num_samples)])

  def compile(self, name, walk, params, case):
    """`walk(params, case, key)` vmapped over the samples' keys, jitted and compiled for
    the shapes of `case` (once per `name` and shapes)."""
    shapes = jax.tree_util.tree_map(
        lambda a: (np.shape(a), str(getattr(a, "dtype", type(a).__name__))), case)
    cache_key = (name, jax.tree_util.tree_structure(case), str(shapes))
    if cache_key not in self._compiled:
      run = jax.jit(jax.vmap(walk, in_axes=(None, None, 0), axis_name=SAMPLES_AXIS))
      self._compiled[cache_key] = run.lower(params, case, self.keys(jax.random.key(0))).compile()
    return self._compiled[cache_key]

  def run(self, name, walk, params, case, key):
    """(N, ...) samples of `walk` on `case`, as a host array."""
    compiled = self.compile(name, walk, params, case)
    return np.asarray(jax.device_get(compiled(params, case, self.keys(key))))
