"""Checked NIfTI reading and atomic writing; BraTS case loading rejects bad volumes."""

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import brats_layout
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_case(root, name="BraTS-GLI-00001-000", shape=(8, 9, 7), **overrides):
  rng = np.random.default_rng(0)
  case = root / name
  t1n = rng.uniform(1, 100, shape).astype(np.float32)
  mask = np.zeros(shape, np.uint8)
  mask[3:5, 3:5, 3:5] = 1
  volumes = {"t1n": t1n, "t1n-voided": t1n * (1 - mask), "mask": mask}
  for key, data in volumes.items():
    data, affine = overrides.get(key, (data, AFFINE))
    nifti.save_volume(brats_layout.case_file(case, key), data, affine)
  return case


def test_round_trip_keeps_data_and_affine(tmp_path):
  case = write_case(tmp_path)
  loaded = brats_layout.load_case(case)
  assert loaded.shape == (8, 9, 7)
  np.testing.assert_array_equal(loaded.affine, AFFINE)
  assert set(np.unique(loaded.volumes["mask"])) == {0.0, 1.0}
  assert not [p for p in case.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  def broken_save(img, filename):
    open(filename, "wb").write(b"partial")
    raise OSError("disk full")
  monkeypatch.setattr(nib, "save", broken_save)
  with pytest.raises(OSError):
    nifti.save_volume(tmp_path / "out.nii.gz", np.ones((2, 2, 2)), AFFINE)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, override, problem", [
    ("t1n", (np.ones((8, 9, 7, 2), np.float32), AFFINE), "expected a 3D volume"),
    ("mask", (np.zeros((8, 9, 6), np.uint8), AFFINE), "shape (8, 9, 6) differs"),
    ("mask", (np.zeros((8, 9, 7), np.uint8), np.diag([1.0, 2, 2, 1])), "affine differs"),
    ("t1n", (np.zeros((8, 9, 7), np.float32), AFFINE), "zero everywhere"),
    ("t1n-voided", (np.full((8, 9, 7), np.nan, np.float32), AFFINE), "NaN"),
])
def test_bad_volumes_name_file_and_problem(tmp_path, key, override, problem):
  case = write_case(tmp_path, **{key: override})
  with pytest.raises(InputError) as e:
    brats_layout.load_case(case)
  assert str(brats_layout.case_file(case, key)) in str(e.value)
  assert problem in str(e.value)


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(InputError, match="file not found"):
    nifti.load_volume(tmp_path / "nope.nii.gz")
  bad = tmp_path / "bad.nii.gz"
  bad.write_bytes(b"not a nifti")
  with pytest.raises(InputError, match="not a readable NIfTI"):
    nifti.load_volume(bad)
  truncated = tmp_path / "truncated.nii.gz"
  nifti.save_volume(truncated, np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4))
  truncated.write_bytes(truncated.read_bytes()[:-200])   # the header still reads
  with pytest.raises(InputError, match="truncated.nii.gz: unreadable NIfTI data"):
    nifti.load_volume(truncated)


def test_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
  bad = tmp_path / "bad.nii"  # header of a 3000^3 volume, data of 8^3
  nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(bad))
  data = bytearray(bad.read_bytes())
  hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(data)))
  hdr.set_data_shape((3000, 3000, 3000))
  data[:348] = hdr.binaryblock
  bad.write_bytes(bytes(data))
  gz = tmp_path / "bad.nii.gz"
  gz.write_bytes(gzip.compress(bytes(data)))
  for p in (bad, gz):
    with pytest.raises(InputError, match=r"header claims a 3000x3000x3000 volume"):
      nifti.load_volume(p)
