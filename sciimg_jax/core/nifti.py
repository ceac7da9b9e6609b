"""NIfTI input and output with checks that name the file and the problem.

Reading goes through nibabel; every check raises `InputError(path, problem)`.
Writing is atomic: the volume goes to a temporary file in the destination folder
and is renamed into place, so a crash never leaves a half-written output.
"""

import pathlib
import zlib

import nibabel as nib
import numpy as np

from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError

AFFINE_ATOL = 1e-3
DEFLATE_MAX_RATIO = 1032  # gzip (deflate) never compresses better than about 1032:1


def load_image(path):
  """Opens a NIfTI file and checks that it is a finite 3D volume."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(path, "file not found")
  try:
    img = nib.load(str(path))
  except Exception as e:  # nibabel raises several types for broken files.
    raise InputError(path, f"not a readable NIfTI file ({e})") from None
  shape = img.shape
  if len(shape) == 4 and shape[3] == 1:
    img = img.slicer[..., 0]
  elif len(shape) != 3:
    raise InputError(path, f"expected a 3D volume, got shape {tuple(shape)}")
  if not np.all(np.isfinite(img.affine)):
    raise InputError(path, "affine contains NaN or inf")
  check_size(path, img)
  return img


def check_size(path, img):
  """Raises InputError if the header claims more data than the file can hold.

  Checked before any data is read, so a broken header gives a message, not a
  MemoryError: an uncompressed file must hold the whole array, a gzipped one at
  least 1/DEFLATE_MAX_RATIO of it.
  """
  claimed = int(np.prod(img.shape, dtype=np.int64)) * img.get_data_dtype().itemsize
  size = path.stat().st_size
  if claimed > size * (DEFLATE_MAX_RATIO if path.name.endswith(".gz") else 1) + (1 << 20):
    raise InputError(path, f"header claims a {'x'.join(map(str, img.shape))} volume "
                     f"({claimed / 2**30:.1f} GiB) that a {size / 2**20:.1f} MiB file cannot hold")


def load_volume(path, *, allow_all_zero=False):
  """Returns (float32 array, nibabel image) for a 3D NIfTI volume.

  Raises InputError if the file is missing, unreadable, not 3D, contains NaN/inf or (unless
  `allow_all_zero`) is zero everywhere.
  """
  img = load_image(path)
  try:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, once
      data = np.asarray(img.dataobj, dtype=np.float32)
  except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .nii.gz
    raise InputError(path, f"unreadable NIfTI data ({type(e).__name__}: {e})") from None
  if not np.all(np.isfinite(data)):
    raise InputError(path, _not_finite(img, data))
  if not allow_all_zero and not np.any(data):
    raise InputError(path, "volume is zero everywhere")
  return data, img


def _not_finite(img, data):
  """Why `data` (float32) holds NaN or inf: the file's own NaN/inf voxels, or finite values
  (float64 or scaled, up to 1e308) beyond float32's range (3.4e38) that became inf."""
  bad = ~np.isfinite(data)
  wide = np.asarray(img.dataobj, dtype=np.float64)[bad]
  overflow = np.isfinite(wide)
  parts = []
  if overflow.any():
    parts.append(f"{int(overflow.sum())} voxels are finite but overflow float32 (|value| up to "
                 f"{np.abs(wide[overflow]).max():.3g}, float32 holds up to "
                 f"{float(np.finfo(np.float32).max):.3g}); rescale the image")
  if not overflow.all():
    parts.append(f"{int((~overflow).sum())} voxels are NaN or inf")
  return "; ".join(parts)


def check_same_grid(ref_path, ref_img, path, img):
  """Raises InputError unless `img` has the shape and affine of `ref_img`."""
  if tuple(img.shape[:3]) != tuple(ref_img.shape[:3]):
    raise InputError(
        path, f"shape {tuple(img.shape[:3])} differs from {tuple(ref_img.shape[:3])} "
        f"of {pathlib.Path(ref_path).name}")
  if not np.allclose(img.affine, ref_img.affine, atol=AFFINE_ATOL):
    diff = np.abs(np.asarray(img.affine, np.float64) - np.asarray(ref_img.affine, np.float64))
    i, j = np.unravel_index(np.argmax(diff), diff.shape)
    ref_path = pathlib.Path(ref_path)
    ref = ref_path.name if ref_path.parent == pathlib.Path(path).parent else ref_path
    raise InputError(
        path, f"affine differs from that of {ref}: largest difference {diff[i, j]:.4g} at "
        f"[{i}, {j}] ({img.affine[i, j]:.6g} vs {ref_img.affine[i, j]:.6g}; tolerance "
        f"{AFFINE_ATOL:g})")


def save_volume(path, data, affine, header=None, dtype=None):
  """Writes a NIfTI volume atomically (temporary file in the same folder, then rename)."""
  data = np.asarray(data)
  if dtype is not None:
    data = data.astype(dtype)
  header = header.copy() if header is not None else None
  img = nib.Nifti1Image(data, affine, header)
  img.set_data_dtype(data.dtype)
  if header is None:  # otherwise keep the input's qform/sform codes
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
  with atomic_files.atomic_path(path) as tmp:
    nib.save(img, tmp)
  return pathlib.Path(path)
