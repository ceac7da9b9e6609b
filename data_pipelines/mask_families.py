"""Families of 3D hole shapes: for training holes, and held-out masks of shapes never trained on.

A family is a function `shape_fn(shape, region, centre, rng, *, radius_range, max_blobs)`
-> bool mask of `shape` (voxels), around voxel `centre`, cut to `region`:

  lesion     the union of 1..max_blobs lumpy ellipsoids (`input_pipeline.lesion_mask_3d`,
             the training holes of every earlier recipe)
  ellipsoid  one smooth ellipsoid: radius R from `radius_range`, the two other axes
             R x U(0.5, 1), a random orientation
  box        an axis-aligned box, half-sides R x U(0.5, 1): flat faces along the slices
  blob       a random smooth shape: Gaussian noise smoothed with sigma R / 2, kept where it
             exceeds its median inside the ball of radius 1.5 R, the component that holds
             the centre (the ball of radius R / 2 at the centre always belongs to it)

`data.random_masks.families` draws training holes from several families (one at random per
hole); `remask_cases` gives held-out cases new healthy masks from one family, so a study can
score a model on mask shapes it never saw (`compare_families` of the inpainting study).
"""

import pathlib
import shutil
import zlib

import numpy as np
from scipy import ndimage

from data_pipelines import brats_layout
from data_pipelines import input_pipeline
from sciimg_jax.core import atomic_files
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError


def _grid(shape, centre):
  """Voxel offsets from `centre`, (X, Y, Z, 3)."""
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  return grid - np.asarray(centre, np.float64)


def ellipsoid(shape, region, centre, rng, *, radius_range, max_blobs=1):
  del max_blobs
  radius = rng.uniform(*radius_range)
  rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  radii = radius * np.array([1.0, *rng.uniform(0.5, 1.0, 2)])
  local = _grid(shape, centre) @ rotation / radii
  return (np.sum(local**2, axis=-1) <= 1.0) & region


def box(shape, region, centre, rng, *, radius_range, max_blobs=1):
  del max_blobs
  half = rng.uniform(*radius_range) * np.array([1.0, *rng.uniform(0.5, 1.0, 2)])
  return np.all(np.abs(_grid(shape, centre)) <= rng.permutation(half), axis=-1) & region


def blob(shape, region, centre, rng, *, radius_range, max_blobs=1):
  del max_blobs
  radius = rng.uniform(*radius_range)
  r = np.linalg.norm(_grid(shape, centre), axis=-1)
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(radius / 2, 0.5))
  ball = r <= 1.5 * radius
  kept = ball & (field > np.median(field[ball])) | (r <= radius / 2)
  labels, _ = ndimage.label(kept)
  centre_label = labels[tuple(np.clip(np.round(centre).astype(int), 0, np.asarray(shape) - 1))]
  return (labels == centre_label) & (centre_label > 0) & region


def lesion(shape, region, centre, rng, *, radius_range, max_blobs=3):
  return input_pipeline.lesion_mask_3d(shape, region, centre, rng, radius_range=radius_range,
                                       max_blobs=max_blobs)


FAMILIES = {"lesion": lesion, "ellipsoid": ellipsoid, "box": box, "blob": blob}
DEFAULT = ("lesion",)  # the training holes of runs saved before `families` existed


def of(random_masks):
  """The families of a `data.random_masks` block (`DEFAULT` where it names none)."""
  return tuple(random_masks.get("families", DEFAULT))


def check_families(families, key="data.random_masks.families"):
  """Stops unless `families` is a non-empty sequence of `FAMILIES` names."""
  families = (families,) if isinstance(families, str) else tuple(families)
  unknown = [f for f in families if f not in FAMILIES]
  if unknown or not families:
    problem = f"unknown mask family {unknown[0]!r}" if unknown else "no family given"
    raise InputError(key, f"{problem}; known: {', '.join(FAMILIES)}")
  return families


# Held-out healthy masks: 1 or 2 regions per case, radii in mm as the embedded generator's.
RADIUS_MM = (8.0, 18.0)
REMASK_KEYS = ("t1n", "mask-unhealthy")


def place_healthy(family, brain, unhealthy, spacing, rng, tries=30):
  """1 or 2 regions of `family` in `brain`, away from the tumour (`unhealthy` grown by one
  voxel): a region is centred where the tissue reaches 0.8 of its radius around it and kept
  if 75 % of it survives the cut. Empty if no region fits."""
  spacing = np.asarray(spacing, np.float64)
  forbidden = ndimage.binary_dilation(unhealthy, structure=np.ones((3, 3, 3), bool))
  allowed = brain & ~forbidden
  clearance = ndimage.distance_transform_edt(allowed, sampling=spacing)
  healthy = np.zeros(brain.shape, bool)
  for _ in range(rng.integers(1, 3)):
    for _ in range(tries):
      radius_mm = rng.uniform(*RADIUS_MM)
      candidates = np.argwhere(clearance > 0.8 * radius_mm)
      if not len(candidates):
        continue
      centre = candidates[rng.integers(len(candidates))]
      radius = radius_mm / spacing.min()
      shape_ = FAMILIES[family](brain.shape, np.ones(brain.shape, bool), centre, rng,
                                radius_range=(radius, radius))
      region = shape_ & allowed
      if region.any() and region.sum() >= 0.75 * shape_.sum():
        healthy |= region
        break
  return healthy


def _case_key(name, family, seed):
  return np.random.default_rng([zlib.crc32(name.encode()), zlib.crc32(family.encode()), seed])


def remask_case(case_dir, out_dir, family, seed=0):
  """Writes `out_dir/<case>/` (atomically): the case's files with a new `-mask-healthy` of
  `family` (`place_healthy`, random key from the case's name, the family and `seed`), `-mask`
  its union with the tumour and `-t1n-voided` the t1n voided there. Returns the folder."""
  case_dir, out_dir = pathlib.Path(case_dir), pathlib.Path(out_dir)
  case = brats_layout.load_case(case_dir, keys=REMASK_KEYS)
  t1n, unhealthy = case.volumes["t1n"], case.volumes["mask-unhealthy"] > 0
  brain = t1n > 0
  spacing = np.abs(np.diag(case.affine)[:3])
  healthy = place_healthy(family, brain, unhealthy, spacing, _case_key(case.name, family, seed))
  if not healthy.any():
    raise InputError(case_dir, f"no {family} region fits in the healthy tissue")
  union = healthy | unhealthy
  new = {"mask-healthy": healthy.astype(np.uint8), "mask": union.astype(np.uint8),
         "t1n-voided": np.where(union, 0, t1n).astype(np.float32)}
  with atomic_files.atomic_folder(out_dir / case.name, f".tmp-{case.name}-") as tmp:
    replaced = tuple(f"{case.name}-{key}.nii" for key in new)  # .nii or .nii.gz
    for path in sorted(case_dir.iterdir()):
      if path.is_file() and not path.name.startswith(replaced):
        shutil.copy2(path, tmp / path.name)
    for key, volume in new.items():
      nifti.save_volume(tmp / f"{case.name}-{key}.nii.gz", volume, case.affine, case.header)
  return out_dir / case.name


def remask_cases(src_dir, out_dir, family, seed=0):
  """`remask_case` for every case folder of `src_dir` (with t1n and mask-unhealthy) that
  `out_dir` does not hold yet; returns `out_dir`."""
  check_families((family,), key="family")
  for case_dir in brats_layout.find_cases(src_dir, required=REMASK_KEYS):
    if not (pathlib.Path(out_dir) / case_dir.name).is_dir():
      remask_case(case_dir, out_dir, family, seed)
  return pathlib.Path(out_dir)
