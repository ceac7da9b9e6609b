"""Volume geometry shared by data pipelines and samplers: slice axes and centre pad/crop.

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
