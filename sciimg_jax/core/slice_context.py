"""Through-plane context: a slice's neighbours as extra condition channels (2.5D models).

A 2D slice model with `data.context = k` sees, besides its condition channels on its own
slice, some of them (the method says which: inpainting's voided image and mask) on the
`k` slices on each side along its axis. The extra channels follow the model's own, offset
by offset (-k, ..., -1, +1, ..., +k), each offset holding the chosen channels in order,
named `<channel>@<offset>` (`names`). Beyond the volume's first or last slice a channel
holds its background value (`fills`: -1 for a normalised image, 0 for a mask), as if the
volume went on with background.

Training cuts them from a volume around one slice (`at_slice`); the volume sampler adds
them to the whole condition volume once per case (`expand`), so slice s of the expanded
volume is what the model saw in training for slice s.
"""

import numpy as np

from sciimg_jax.core.errors import InputError


def offsets(k):
  return tuple(range(-k, 0)) + tuple(range(1, k + 1))


def names(channels, k):
  """The names of the context channels of `channels` (a sequence of names) for width k."""
  return tuple(f"{c}@{o:+d}" for o in offsets(k) for c in channels)


def check(k, depth, key="data.context", where=None):
  """Stops unless 0 <= k and the 2k + 1 slices of a slab fit `depth` slices (if given)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
    raise InputError(key, f"must be an integer >= 0, got {k!r}")
  if depth is not None and 2 * k + 1 > depth:
    raise InputError(where or key, f"a context of {k} slices on each side needs "
                     f"{2 * k + 1} slices along the axis; the volume has {depth}")


def _shifted(xp, x, axis, offset, fill):
  """x with slice s replaced by slice s + offset along `axis`; `fill` (per channel) beyond."""
  n = x.shape[axis]
  source = np.arange(n) + offset
  inside = ((source >= 0) & (source < n)).reshape([-1 if a == axis % x.ndim else 1
                                                    for a in range(x.ndim)])
  taken = xp.take(x, np.clip(source, 0, n - 1), axis=axis)
  return xp.where(inside, taken, xp.asarray(fill, x.dtype))


def expand(cond, axis, k, indices, fills, xp=np):
  """`cond` (..., C) with the context channels of `indices` (fills per index) appended.

  `axis` is the slicing axis of `cond` (not its channel axis); `xp` is numpy or jax.numpy.
  Returns (..., C + 2k len(indices)), channels in the order of `names`.
  """
  if not k:
    return cond
  picked = xp.take(cond, np.asarray(indices), axis=-1)
  fill = np.asarray(fills, np.float32)
  extra = [_shifted(xp, picked, axis, o, fill) for o in offsets(k)]
  return xp.concatenate([cond] + extra, axis=-1)


def at_slice(volume, index, k, indices, fills):
  """The context channels of slice `index` of `volume` (S, H, W, C), sliced along axis 0.

  Reads only the 2k slices it needs (`volume` may be a memory-mapped or moved view).
  Returns (H, W, 2k len(indices)) float32, in the order of `names`.
  """
  n, fill = volume.shape[0], np.asarray(fills, np.float32)
  out = [np.asarray(volume[s])[..., list(indices)] if 0 <= s < n
         else np.broadcast_to(fill, volume.shape[1:-1] + fill.shape)
         for s in (index + o for o in offsets(k))]
  if not out:
    return np.zeros(volume.shape[1:-1] + (0,), np.float32)
  return np.concatenate(out, axis=-1).astype(np.float32)
