"""The BraTS inpainting folder layout: one folder per case, one NIfTI file per key.

    ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz
                             BraTS-GLI-00000-000-t1n-voided.nii.gz
                             BraTS-GLI-00000-000-mask.nii.gz            (union: given at inference)
                             BraTS-GLI-00000-000-mask-healthy.nii.gz    (scored region)
                             BraTS-GLI-00000-000-mask-unhealthy.nii.gz  (tumour)

The embedded data (`data_pipelines.synthetic_brats`) writes the same layout and adds
`-t2w`, `-t2f` (FLAIR-like) and `-mask-brain`. Real BraTS folders load unchanged.
"""

import dataclasses
import logging
import pathlib

import nibabel as nib
import numpy as np

from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError

# Outputs of the inpainting job: the prediction (with N samples, their mean), the samples'
# voxelwise standard deviation and sample 0 alone.
OUTPUT_KEYS = ("t1n-inference", "t1n-inference-std", "t1n-sample")
IMAGE_KEYS = ("t1n", "t1n-voided", "t2w", "t2f") + OUTPUT_KEYS
MASK_KEYS = ("mask", "mask-healthy", "mask-unhealthy", "mask-brain")
ALL_KEYS = IMAGE_KEYS + MASK_KEYS
_RAS_LIKE = ({"L", "R"}, {"A", "P"}, {"S", "I"})  # voxel axis orders the slice names assume


def case_file(case_dir, key):
  """Path of `key` (e.g. 't1n-voided') inside a case folder: `<case>-<key>.nii.gz`, or the
  uncompressed `<case>-<key>.nii` when only that exists."""
  case_dir = pathlib.Path(case_dir)
  if key not in ALL_KEYS:
    raise InputError(case_dir, f"unknown volume key {key!r}; known: {', '.join(ALL_KEYS)}")
  path = case_dir / f"{case_dir.name}-{key}.nii.gz"
  plain = path.with_suffix("")
  return plain if not path.exists() and plain.is_file() else path


def missing_files(case_dir, required):
  """Why `case_dir` is not a complete case (None if it holds every `required` file)."""
  case_dir = pathlib.Path(case_dir)
  missing = [case_file(case_dir, k).name for k in required if not case_file(case_dir, k).is_file()]
  if not missing:
    return None
  files = sorted(p.name for p in case_dir.iterdir() if p.is_file())
  if not files:
    return "empty case folder"
  reason = f"missing {', '.join(missing)}"
  strangers = [f for f in files if f.endswith((".nii", ".nii.gz"))
               and not f.startswith(case_dir.name + "-")]
  if strangers:
    reason += f" (its files are named {strangers[0]}, ...: the prefix must be the folder name)"
  return reason


def find_cases(root, required=("t1n-voided", "mask")):
  """Sorted case folders under `root` that hold every `required` file.

  Raises InputError if `root` is missing, not a folder, or holds no such case.
  """
  cases, _ = scan_cases(root, required)
  if not cases:
    names = ", ".join(f"<case>/<case>-{k}.nii.gz" for k in required)
    raise InputError(root, f"no case folders found (each needs {names})")
  return cases


def scan_cases(root, required):
  """(complete case folders, {incomplete folder name: reason}) under `root`, sorted.

  Raises InputError if `root` is missing or not a folder.
  """
  root = pathlib.Path(root)
  if not root.exists():
    raise InputError(root, "data folder not found")
  if not root.is_dir():
    raise InputError(root, "expected a folder of BraTS case folders")
  cases, incomplete = [], {}
  for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    reason = missing_files(d, required)
    if reason is None:
      cases.append(d)
    else:
      incomplete[d.name] = reason
  return cases, incomplete


@dataclasses.dataclass
class Case:
  """The volumes of one case, all on one voxel grid."""
  name: str
  directory: pathlib.Path
  volumes: dict  # key -> float32 array (masks are 0/1)
  affine: np.ndarray
  header: object  # nibabel header of the first loaded volume

  @property
  def shape(self):
    return next(iter(self.volumes.values())).shape


def load_case(case_dir, keys=("t1n", "t1n-voided", "mask"), optional=()):
  """Loads the volumes `keys` (and `optional` ones that exist) of one case folder.

  See `load_volumes` for the checks.
  """
  case_dir = pathlib.Path(case_dir)
  keys = list(keys) + [k for k in optional if case_file(case_dir, k).is_file()]
  return load_volumes(case_dir.name, {key: case_file(case_dir, key) for key in keys})


def load_volumes(name, paths):
  """A `Case` named `name` from {key: NIfTI path} (a case folder's files or loose ones).

  Every volume must be 3D, finite and share the shape and affine of the first;
  image volumes must not be zero everywhere. A mask voxel is inside where it is non-zero
  (the challenge's rule; a soft or negative mask is not "empty"); masks come back as 0/1.
  """
  volumes, ref = {}, None
  for key, path in paths.items():
    is_mask = key in MASK_KEYS
    data, img = nifti.load_volume(path, allow_all_zero=is_mask)
    if ref is None:
      ref = (path, img)
    else:
      nifti.check_same_grid(ref[0], ref[1], path, img)
    volumes[key] = (data != 0).astype(np.float32) if is_mask else data
  return Case(name=name, directory=pathlib.Path(ref[0]).parent, volumes=volumes,
              affine=ref[1].affine, header=ref[1].header)


def warn_if_not_ras(where, affine):
  """Logs a warning (naming `where`) unless the voxel axes run like RAS/LPS.

  Slice names assume x: left-right, y: posterior-anterior, z: inferior-superior, as in
  BraTS files; other orders are sliced along the wrong anatomical axes. Returns True if
  it warned.
  """
  codes = nib.aff2axcodes(affine)
  if all(c in expected for c, expected in zip(codes, _RAS_LIKE)):
    return False
  logging.warning("%s: voxel axes are %s, not RAS/LPS-like; 'axial/coronal/sagittal' "
                  "will not mean what they say (reorient the files first, e.g. with "
                  "nibabel.as_closest_canonical)", where, "".join(str(c) for c in codes))
  return True
