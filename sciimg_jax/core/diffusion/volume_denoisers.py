"""Volume denoisers: pure functions `(x_t, t) -> epsilon` over a whole volume.

They are built by composition, inside the traced function that samples, from 2D
networks applied slice by slice along an axis, and combined by averaging or by
alternating from step to step (TPDM). `sampler.sample` runs them; a method's known region
or data consistency wraps the sampler, not the denoiser. Fusing several
denoisers with a learned 3D network (Diff-Ensembler) is one more combinator of
the same shape.

Volumes are (X, Y, Z) arrays in RAS voxel order. A slice along `axis` is
`np.take(volume, k, axis)` with the axes of `volumes.AXES`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

from sciimg_jax.core import sharding


def _ceil_div(a, b):
  return -(-a // b)


def chunk_layout(num_slices, chunk_size, quantum=1, multiple=1):
  """(number of chunks, slices per chunk) for `num_slices` slices, at most `chunk_size` a chunk.

  The slices are padded to L = a multiple of `quantum` (so that cases with a few more or
  fewer slices share one compiled sampler), and L is cut into equal chunks: the largest
  divisor of L that is at most `chunk_size` and a multiple of `multiple` (the device
  count, so every chunk splits over the mesh). `quantum` must be a multiple of `multiple`.
  19 slices with quantum 8: L = 24, one chunk of 24 for chunk_size 32 (not 32 slices),
  three of 8 for chunk_size 8.
  """
  if quantum % multiple:
    raise ValueError(f"quantum {quantum} is not a multiple of {multiple}")
  total = max(_ceil_div(num_slices, quantum) * quantum, quantum)
  per = max(d for d in range(multiple, min(chunk_size, total) + 1, multiple) if total % d == 0)\
      if chunk_size >= multiple else multiple
  return total // per, per


def active_slices(mask, axis, *, dilation=1, quantum=1):
  """Indices of the slices along `axis` that meet the mask dilated by `dilation` voxels.

  The list is padded (repeating its last entry) to a multiple of `quantum`, so that
  `slicewise` cuts it into equal chunks (`chunk_layout`).
  Returns an int32 array; empty if the mask is empty.
  """
  mask = np.asarray(mask) > 0
  if dilation:
    mask = ndi.binary_dilation(mask, iterations=dilation)
  other = tuple(a for a in range(3) if a != axis)
  idx = np.flatnonzero(mask.any(axis=other)).astype(np.int32)
  if len(idx) % quantum:
    idx = np.concatenate([idx, np.full(quantum - len(idx) % quantum, idx[-1], np.int32)])
  return idx


def slicewise(apply_2d, cond, axis, slices=None, *, chunk_size=16, mesh=None, multiple=1):
  """A volume denoiser from a 2D network applied to the slices along `axis`.

  Args:
    apply_2d: (x (B, H, W, 1), cond (B, H, W, C), t (B,)) -> eps (B, H, W, 1).
    cond: (X, Y, Z, C) conditioning volumes, in the network's channel order.
    axis: 0, 1 or 2 (see `sciimg_jax.core.volumes.AXES`).
    slices: int array of the slice indices to evaluate (from `active_slices`), or
      None for every slice. The epsilon of
      the other slices is 0: the caller must fix their content (known-region
      replacement does, for slices without any unknown voxel).
    chunk_size: the most slices per network call; the slices are cut into equal
      chunks (`chunk_layout`), evaluated one after another in `lax.map`, which
      bounds memory.
    mesh: if given, each chunk is split over the mesh's 'data' axis.
    multiple: chunk sizes are multiples of this (the mesh's device count); the
      number of slices must be one too.

  Returns:
    denoise(x_t (X, Y, Z), t) -> eps (X, Y, Z); t is the training timestep, a
    scalar or a vector of equal entries.
  """
  n = cond.shape[axis]
  if slices is None:  # every slice: ceil(n / chunk_size) chunks, as equal as the devices allow
    k = _ceil_div(n, max(chunk_size, multiple))
    per = _ceil_div(_ceil_div(n, k), multiple) * multiple
    slices = np.concatenate([np.arange(n, dtype=np.int32), np.full(k * per - n, n - 1, np.int32)])
  num_chunks, chunk_size = chunk_layout(slices.shape[0], chunk_size, multiple, multiple)
  cond_slices = jnp.moveaxis(cond, axis, 0)[slices]                 # (A, H, W, C)
  cond_chunks = cond_slices.reshape((num_chunks, chunk_size) + cond_slices.shape[1:])
  constrain = ((lambda a: jax.lax.with_sharding_constraint(a, sharding.batch_sharded(mesh)))
               if mesh is not None else (lambda a: a))

  def denoise(x_t, t):
    t_batch = jnp.full((chunk_size,), jnp.ravel(t)[0], jnp.int32)
    moved = jnp.moveaxis(x_t, axis, 0)                                # (S, H, W)
    x_chunks = moved[slices].reshape((num_chunks, chunk_size) + moved.shape[1:] + (1,))

    def one_chunk(args):
      x, c = args
      return apply_2d(constrain(x), constrain(c), t_batch)[..., 0]

    eps = jax.lax.map(one_chunk, (x_chunks, cond_chunks))
    eps = jnp.zeros_like(moved).at[slices].set(eps.reshape((-1,) + moved.shape[1:]))
    return jnp.moveaxis(eps, 0, axis)

  return denoise


def average(denoisers):
  """The mean of several denoisers' epsilons (the TOSM/MADM baseline)."""
  def denoise(x_t, t):
    return sum(d(x_t, t) for d in denoisers) / len(denoisers)
  return denoise


def alternate(denoisers, timesteps):
  """TPDM: the denoiser changes from one step to the next, cycling through `denoisers`.

  `timesteps` are the sampling chain's training timesteps (`schedule.timesteps`);
  step index i uses denoiser i mod n.
  """
  timesteps = jnp.asarray(timesteps)

  def denoise(x_t, t):
    i = jnp.argmax(timesteps == jnp.ravel(t)[0])
    return jax.lax.switch(i % len(denoisers), [lambda x, d=d: d(x, t) for d in denoisers], x_t)
  return denoise
