"""Volume geometry shared by data pipelines and samplers: slice axes, centre pad/crop, and
voxel positions.

Volumes are arrays in RAS voxel order, as BraTS ships them. A slice along axis a is
`np.take(volume, k, axis=a)`: axial slices are (X, Y) images (`vol[:, :, k]`), coronal
slices (X, Z) (`vol[:, k, :]`), sagittal slices (Y, Z) (`vol[k]`).
"""

import numpy as np

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def center_pad_crop(x, shape, fill=0.0):
  """Centre pads (with `fill`) or crops the leading `len(shape)` axes of `x` to `shape`.

  `fill` is a scalar or broadcasts against the trailing axes (one value per
  channel). The offset is floor(|difference| / 2) either way, so calling it again
  with the original shape undoes it; the cropped-away border comes back as `fill`.
  """
  x = np.asarray(x)
  shape = tuple(int(s) for s in shape)
  out = np.empty(shape + x.shape[len(shape):], dtype=x.dtype)
  out[...] = fill
  src, dst = [], []
  for n, m in zip(x.shape, shape):
    if m >= n:
      off = (m - n) // 2
      src.append(slice(0, n))
      dst.append(slice(off, off + n))
    else:
      off = (n - m) // 2
      src.append(slice(off, off + m))
      dst.append(slice(0, m))
  out[tuple(dst)] = x[tuple(src)]
  return out


def outside_center_crop(mask, shape):
  """The number of non-zero voxels of `mask` that `center_pad_crop(mask, shape)` cuts away."""
  mask = np.asarray(mask) != 0
  box = []
  for n, m in zip(mask.shape, (int(s) for s in shape)):
    off = (n - m) // 2 if m < n else 0
    box.append(slice(off, off + min(n, m)))
  return int(mask.sum() - mask[tuple(box)].sum())


def covering_shape(mask, shape, multiple=1):
  """The smallest grid, at least `shape` along each axis and a multiple of `multiple` (a
  downsampling factor the grid must divide by), whose centre crop keeps every non-zero voxel
  of `mask` (`center_pad_crop`'s offsets)."""
  mask = np.asarray(mask) != 0
  out = []
  for axis, (n, m) in enumerate(zip(mask.shape, (int(s) for s in shape))):
    other = tuple(a for a in range(mask.ndim) if a != axis)
    hit = np.flatnonzero(mask.any(axis=other))
    covers = lambda m: (m >= n or not hit.size
                        or (n - m) // 2 <= hit[0] and hit[-1] < (n - m) // 2 + m)  # noqa: B023
    while m % multiple or not covers(m):  # a larger grid never uncovers a voxel
      m += 1
    out.append(m)
  return tuple(out)


def position_embedding(shape):
  """(X, Y, Z, 3) float32: each voxel's normalised coordinates, -1 at the first voxel of an
  axis and +1 at its last (0 along an axis of length 1)."""
  axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32)
          for n in shape]
  return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
