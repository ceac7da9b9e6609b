"""Volume denoisers: pure functions `(x_t, t) -> epsilon` over a whole volume.

They are built by composition, inside the traced function that samples, from 2D
networks applied slice by slice along an axis, and combined by averaging or by
alternating from step to step (TPDM), or fused voxel by voxel by the weights and
residual of a learned 3D network (`fuse`, Diff-Ensembler). `sampler.sample` runs them; a
method's known region or data consistency wraps the sampler, not the denoiser.

Volumes are (X, Y, Z) arrays in RAS voxel order. A slice along `axis` is
`np.take(volume, k, axis)` with the axes of `volumes.AXES`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

from sciimg_jax.core import sharding


SMALL_CHUNK = 8  # restricted slices: the last chunk is cut into blocks of this many


def _ceil_div(a, b):
  return -(-a // b)


def active_slices(mask, axis, *, dilation=1):
  """Indices of the slices along `axis` that meet the mask dilated by `dilation` voxels
  (int32; empty if the mask is empty)."""
  mask = np.asarray(mask) > 0
  if dilation:
    mask = ndi.binary_dilation(mask, iterations=dilation)
  other = tuple(a for a in range(3) if a != axis)
  return np.flatnonzero(mask.any(axis=other)).astype(np.int32)


def restricted_slices(mask, axis, *, dilation=1):
  """The slices along `axis` that meet the dilated mask, as `slicewise` takes them: their
  indices first, then the axis length n (no slice) up to n entries.

  Every case of one volume shape gives an array of one shape, so one compiled sampler
  serves all of them; `slicewise` runs only the chunks that hold a slice.
  """
  n = np.shape(mask)[axis]
  idx = active_slices(mask, axis, dilation=dilation)
  return np.concatenate([idx, np.full(n - len(idx), n, np.int32)])


def slicewise(apply_2d, cond, axis, slices=None, *, chunk_size=16, mesh=None, multiple=1,
              channels=None):
  """A volume denoiser from a 2D network applied to the slices along `axis`.

  Args:
    apply_2d: (x (B, H, W, 1), cond (B, H, W, C), t (B,)) -> eps (B, H, W, 1).
    cond: (X, Y, Z, C) conditioning volumes, in the network's channel order.
    axis: 0, 1 or 2 (see `sciimg_jax.core.volumes.AXES`).
    slices: None for every slice, or the slices to evaluate as `restricted_slices` gives
      them (n entries, the slice indices first, then n = the axis length for no slice;
      a traced array: one compiled function serves every mask). The epsilon of the other
      slices is 0: the caller must fix their content (known-region replacement does, for
      slices without any unknown voxel).
    chunk_size: the most slices per network call. Every slice: the slices are cut into
      equal chunks (`lax.map`); restricted: loops run chunks of `chunk_size` (rounded
      down to a multiple of `multiple`) while they are full, then blocks of
      `SMALL_CHUNK` for the rest, so only the slices listed and at most
      `SMALL_CHUNK - 1` others are evaluated. Both bound memory.
    mesh: if given, each chunk is split over the mesh's 'data' axis.
    multiple: chunk sizes are multiples of this (the mesh's device count).
    channels: None for a network with one output channel; K when `apply_2d` gives K
      channels (B, H, W, K) that all come back, (X, Y, Z, K).

  Returns:
    denoise(x_t (X, Y, Z), t) -> eps (X, Y, Z) (or (X, Y, Z, K)); t is the training
    timestep, a scalar or a vector of equal entries.
  """
  n = cond.shape[axis]
  constrain = ((lambda a: jax.lax.with_sharding_constraint(a, sharding.batch_sharded(mesh)))
               if mesh is not None else (lambda a: a))
  moved_cond = jnp.moveaxis(cond, axis, 0)

  def one_chunk(x, c, t):
    out = apply_2d(constrain(x[..., None]), constrain(c), jnp.full((x.shape[0],), t, jnp.int32))
    return out[..., 0] if channels is None else out

  def shape_of(moved):
    return moved.shape + (() if channels is None else (channels,))

  if slices is None:  # every slice: ceil(n / chunk_size) chunks, as equal as the devices allow
    k = _ceil_div(n, max(chunk_size, multiple))
    per = _ceil_div(_ceil_div(n, k), multiple) * multiple
    # padding entries are n: gathered clamped to a real slice, dropped when scattered back
    index = jnp.full((k * per,), n, jnp.int32).at[:n].set(jnp.arange(n, dtype=jnp.int32))
    chunks = index.reshape(k, per)
    cond_chunks = jnp.take(moved_cond, chunks, axis=0, mode="clip")

    def denoise(x_t, t):
      moved = jnp.moveaxis(x_t, axis, 0)                              # (S, H, W)
      x_chunks = jnp.take(moved, chunks, axis=0, mode="clip")
      t = jnp.ravel(t)[0]
      eps = jax.lax.map(lambda args: one_chunk(*args, t), (x_chunks, cond_chunks))
      eps = eps.reshape((-1,) + shape_of(moved)[1:])
      return jnp.moveaxis(jnp.zeros(shape_of(moved), eps.dtype).at[index].set(eps, mode="drop"),
                          0, axis)
    return denoise

  # Restricted: full chunks of `per` slices, then the rest in blocks of `small` (so that
  # at most small - 1 padded slices are evaluated); the trip counts are traced.
  per = max(chunk_size // multiple, 1) * multiple
  small = min(per, _ceil_div(SMALL_CHUNK, multiple) * multiple)
  count = jnp.sum(jnp.asarray(slices) < n)
  full = count // per
  blocks = _ceil_div(count - full * per, small)
  index = jnp.full((_ceil_div(n, per) * per + small,), n, jnp.int32).at[:n].set(slices)

  def denoise(x_t, t):
    moved = jnp.moveaxis(x_t, axis, 0)                                # (S, H, W)
    t = jnp.ravel(t)[0]

    def run(eps, start, size):
      idx = jax.lax.dynamic_slice(index, (start,), (size,))
      x = jnp.take(moved, idx, axis=0, mode="clip")
      c = jnp.take(moved_cond, idx, axis=0, mode="clip")
      return eps.at[idx].set(one_chunk(x, c, t).astype(eps.dtype), mode="drop")

    eps = jax.lax.fori_loop(0, full, lambda j, e: run(e, j * per, per),
                            jnp.zeros(shape_of(moved), x_t.dtype))
    eps = jax.lax.fori_loop(0, blocks, lambda b, e: run(e, full * per + b * small, small), eps)
    return jnp.moveaxis(eps, 0, axis)

  return denoise


def mean_of(eps):
  """The mean of a list of epsilon volumes (one order of operations for `average` and `fuse`)."""
  return sum(eps) / len(eps)


def average(denoisers):
  """The mean of several denoisers' epsilons (the TOSM/MADM baseline)."""
  def denoise(x_t, t):
    return mean_of([d(x_t, t) for d in denoisers])
  return denoise


def fuse(eps, weights, residual, residual_scale=1.0):
  """Diff-Ensembler's voxel-wise combination of n >= 2 epsilons.

  sum_i (1/n + w_i) eps_i, with the last weight 1/n - (w_1 + ... + w_{n-1}) so that the
  weights sum to one, plus `residual_scale * residual`. It is computed as
  mean(eps) + sum_{i<n} w_i (eps_i - eps_n) + lambda r, the same sum rearranged, so that
  zero weights and residual (an untrained, zero-initialised fusion network) give exactly
  `average`'s mean.

  Args:
    eps: n arrays of one shape S.
    weights: S + (n - 1,).
    residual: S.
  """
  n = len(eps)
  if n < 2 or weights.shape != eps[0].shape + (n - 1,):
    raise ValueError(f"fuse: {n} epsilons of shape {eps[0].shape} need weights of shape "
                     f"{eps[0].shape + (n - 1,)}, got {weights.shape}")
  correction = sum(weights[..., i] * (eps[i] - eps[-1]) for i in range(n - 1))
  return mean_of(eps) + correction + residual_scale * residual


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
