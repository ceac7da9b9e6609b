"""The hole-shape families: shapes, regions, held-out masks of one family, bad names."""

import numpy as np
import pytest

from data_pipelines import brats_layout
from data_pipelines import mask_families
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError


@pytest.mark.parametrize("family", sorted(mask_families.FAMILIES))
def test_each_family_is_a_connected_hole_around_its_centre_inside_the_region(family):
  shape, centre = (24, 24, 24), np.array([12, 11, 12])
  region = np.ones(shape, bool)
  region[:, :, 20:] = False
  sizes = []
  for seed in range(5):
    rng = np.random.default_rng(seed)
    hole = mask_families.FAMILIES[family](shape, region, centre, rng, radius_range=(4.0, 6.0),
                                          max_blobs=2)
    assert hole.dtype == bool and hole.shape == shape and hole[tuple(centre)]
    assert not (hole & ~region).any()
    sizes.append(hole.sum())
    # the whole hole lies within reach of the centre: 1.5 R for blob and (lumpy) lesion
    # bumps (<= 1 + 3 x 0.15 of R) and further blobs of a lesion (within R), R for the rest
    reach = {"lesion": 6.0 * (1.45 + 1) * np.sqrt(3), "blob": 9.0 * 1.01}.get(family, 6.0 * np.sqrt(3))
    assert np.linalg.norm(np.argwhere(hole) - centre, axis=1).max() <= reach
  # the smallest is at least the ball of radius R/2 / the box of half-side R/2 at the centre
  assert min(sizes) >= 4 / 3 * np.pi * 2.0**3 * 0.8


def test_box_has_flat_faces_and_ellipsoid_does_not():
  """A box's sections along an axis are equal rectangles; an ellipsoid's shrink."""
  shape, centre, region = (30, 30, 30), np.array([15, 15, 15]), np.ones((30, 30, 30), bool)
  rng = np.random.default_rng(0)
  hole = mask_families.box(shape, region, centre, rng, radius_range=(6.0, 6.0))
  counts = [hole[x].sum() for x in range(30) if hole[x].any()]
  assert len(set(counts)) == 1
  hole = mask_families.ellipsoid(shape, region, centre, rng, radius_range=(6.0, 6.0))
  counts = [hole[x].sum() for x in range(30) if hole[x].any()]
  assert len(set(counts)) > 2


def test_unknown_family_is_refused_with_the_known_ones():
  with pytest.raises(InputError, match=r"data.random_masks.families: unknown mask family "
                     r"'cube'; known: lesion, ellipsoid, box, blob"):
    mask_families.check_families(("lesion", "cube"))
  with pytest.raises(InputError, match="no family given"):
    mask_families.check_families(())
  assert mask_families.check_families("box") == ("box",)


def test_remask_gives_new_healthy_masks_of_the_family_away_from_the_tumour(tmp_path):
  split, name = tmp_path / "eval", "BraTS-GLI-00001-000"
  grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"), -1)
  brain = np.linalg.norm(grid - 11.5, axis=-1) < 11
  tumour = np.linalg.norm(grid - [8, 11.5, 11.5], axis=-1) < 3
  t1n = np.where(brain, 500 + 10 * np.random.default_rng(0).standard_normal(brain.shape), 0)
  healthy = np.linalg.norm(grid - [16, 11.5, 11.5], axis=-1) < 2.5
  files = {"t1n": t1n, "t2w": 2 * t1n, "mask-unhealthy": tumour, "mask-healthy": healthy,
           "mask": tumour | healthy, "t1n-voided": np.where(tumour | healthy, 0, t1n),
           "mask-brain": brain}
  affine = np.diag([4.0, 4.0, 4.0, 1.0])  # the embedded data's voxels: regions of 2-4.5 voxels
  for key, volume in files.items():
    nifti.save_volume(split / name / f"{name}-{key}.nii.gz", np.asarray(volume, np.float32),
                      affine)
  out = mask_families.remask_cases(split, tmp_path / "eval-box", "box")
  (case_dir,) = brats_layout.find_cases(out, required=tuple(files))
  old = brats_layout.load_case(split / name, keys=tuple(files))
  new = brats_layout.load_case(case_dir, keys=tuple(files))
  healthy, tumour = new.volumes["mask-healthy"] > 0, new.volumes["mask-unhealthy"] > 0
  assert healthy.any() and not (healthy & tumour).any()
  assert not np.array_equal(healthy, old.volumes["mask-healthy"] > 0)
  np.testing.assert_array_equal(new.volumes["mask"] > 0, healthy | tumour)
  np.testing.assert_array_equal(new.volumes["t1n-voided"],
                                np.where(healthy | tumour, 0, old.volumes["t1n"]))
  for key in ("t1n", "t2w", "mask-unhealthy", "mask-brain"):
    np.testing.assert_array_equal(new.volumes[key], old.volumes[key])
  np.testing.assert_array_equal(new.affine, old.affine)
  # the key comes from the case's name: a second run into another folder gives the same
  again = mask_families.remask_cases(split, tmp_path / "again", "box")
  np.testing.assert_array_equal(
      brats_layout.load_case(again / case_dir.name, keys=("mask-healthy",)).volumes[
          "mask-healthy"], new.volumes["mask-healthy"])
  assert not list(out.glob(".tmp-*"))
