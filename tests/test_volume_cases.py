"""Prepared whole volumes for Diff-Ensembler: channels, pooled inputs, slices, crops, bad input."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import brats_layout
from data_pipelines import sources as data_sources
from data_pipelines import volume_cases
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from tolerances import float32_tolerance, max_abs


@pytest.fixture
def sr_config(data_cache):
  from configs.ensembler import slice_model
  c = slice_model.get_config("sr+tiny")
  c.data.cache_dir = str(data_cache)
  return c


@pytest.fixture
def eval_dir(sr_config, data_cache):
  return data_sources.source_dirs(sr_config.data, data_cache)["eval"]


def test_prepared_channels_and_the_pooled_input(sr_config, eval_dir, data_cache):
  cases = volume_cases.prepare(eval_dir, sr_config.data, data_cache)
  assert len(cases) == 2
  array = np.asarray(cases[0].array)
  assert array.shape == (24, 32, 24, 3)  # target, t2f:pool4, mask
  target, low, mask = array[..., 0], array[..., 1], array[..., 2]
  assert target.min() == -1.0 and target.max() <= 1.0 and np.ptp(target) > 1.0
  # 4^3 block means of 64 terms <= |target| = 1: numpy's for `low`, and both avg_pools here
  np.testing.assert_allclose(consistency.avg_pool(low, 4), consistency.avg_pool(target, 4),
                             atol=float32_tolerance(max_abs(target), 3 * 64))
  np.testing.assert_allclose(low, consistency.upsample_nearest(consistency.avg_pool(low, 4), 4),
                             atol=float32_tolerance(max_abs(low), 64))  # block-constant
  assert set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(mask > 0, target > -1.0)  # the brain is where FLAIR is
  meta = cases[0].meta
  assert meta["shape"] == [50, 59, 48] and set(meta["ranges"]) == {"t2f"}


def test_slices_and_crops_carry_position_mask_and_residual(sr_config, eval_dir, data_cache):
  cases = volume_cases.prepare(eval_dir, sr_config.data, data_cache)
  array = np.asarray(cases[0].array)
  position = volumes.position_embedding(array.shape[:3])
  source = volume_cases.SliceSource(cases, sr_config.data, "coronal")
  i, k = source.index[len(source) // 2]
  element = source[len(source) // 2]
  assert volume_cases.channel_names(sr_config.data) == ("t2f:pool4", "pos-x", "pos-y", "pos-z",
                                                        "mask")
  assert element["cond"].shape == (24, 24, 5) and element["target"].shape == (24, 24, 1)
  sl = np.asarray(cases[i].array)[:, k]
  np.testing.assert_allclose(element["target"][..., 0], (sl[..., 0] - sl[..., 1]) / 2)
  np.testing.assert_array_equal(element["cond"][..., 1:4], position[:, k])
  np.testing.assert_array_equal(element["cond"][..., 4], sl[..., 2])

  crops = volume_cases.CropSource(cases, sr_config.data)
  crop = volume_cases.RandomCrop(crops, (16, 16, 16))
  out = crop.random_map(crops[0], np.random.default_rng(3))
  assert out["cond"].shape == (16, 16, 16, 5)
  # the crop's position channels are the whole volume's at the crop's voxels
  corner = np.argwhere(np.all(position == out["cond"][0, 0, 0, 1:4], axis=-1))[0]
  box = tuple(slice(c, c + 16) for c in corner)
  np.testing.assert_array_equal(out["cond"][..., 1:4], position[box])
  np.testing.assert_allclose(out["target"][..., 0], (array[box][..., 0] - array[box][..., 1]) / 2)
  # align=4: every crop starts on the 4-voxel block grid (the low-resolution input's blocks)
  aligned = volume_cases.RandomCrop(crops, (8, 8, 8), align=4)
  rng = np.random.default_rng(5)
  corners = []
  for _ in range(12):
    cond = aligned.random_map(crops[0], rng)["cond"]
    corners.append(np.argwhere(np.all(position == cond[0, 0, 0, 1:4], axis=-1))[0])
  assert not np.any(np.asarray(corners) % 4) and len({tuple(c) for c in corners}) > 3
  with pytest.raises(InputError, match=r"fusion.crop_size: \(6, 8, 8\) must be a multiple of 4"):
    volume_cases.RandomCrop(crops, (6, 8, 8), align=4)


def test_missing_modality_names_the_case(sr_config, eval_dir, tmp_path):
  from configs.ensembler import slice_model
  c = slice_model.get_config("t1t2_to_flair+tiny")
  root = tmp_path / "cases"
  shutil.copytree(eval_dir, root)
  broken = sorted(root.iterdir())[0]
  brats_layout.case_file(broken, "t2w").unlink()
  with pytest.raises(InputError, match=f"{broken.name}.*missing {broken.name}-t2w.nii.gz"):
    volume_cases.prepare(root, c.data, tmp_path / "cache")


def test_condition_on_another_grid_names_the_file(sr_config, eval_dir, tmp_path):
  from configs.ensembler import slice_model
  c = slice_model.get_config("t1_to_flair+tiny")
  root = tmp_path / "cases"
  shutil.copytree(eval_dir, root)
  case = sorted(root.iterdir())[0]
  path = brats_layout.case_file(case, "t1n")
  img = nib.load(path)
  shifted = img.affine.copy()
  shifted[0, 3] += 2.0
  nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted, img.header), path)
  with pytest.raises(InputError, match="affine differs"):
    volume_cases.prepare(root, c.data, tmp_path / "cache")


def test_a_factor_that_does_not_divide_the_grid_is_refused(sr_config):
  sr_config.data.volume_shape = (24, 30, 24)
  with pytest.raises(InputError, match=r"\(24, 30, 24\) is not divisible .* factor 4"):
    volume_cases.check_data_config(sr_config.data)
  sr_config.data.volume_shape = (24, 32, 24)
  sr_config.data.conditions = ("t2f:bicubic4",)
  with pytest.raises(InputError, match="unknown operation"):
    volume_cases.check_data_config(sr_config.data)
