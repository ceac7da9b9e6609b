"""The inpainting job's NIfTI in/out, with a fake inpainter: geometry, values, bad input."""

import json

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from configs import inpaint
from data_pipelines import brats_layout
from sciimg_jax import intensity
from sciimg_jax import nifti
from sciimg_jax import inpaint_volumes
from sciimg_jax.errors import InputError

AFFINE = np.array([[-1.2, 0, 0, 90], [0, 1.2, 0, -120], [0, 0, 1.5, -70], [0, 0, 0, 1]])
SHAPE = (26, 22, 14)  # x is cropped to 24, y and z padded
FILL = 0.25


class FakeInpainter:
  name = "fake"
  volume_shape = (24, 24, 16)

  def __call__(self, voided, mask, key):
    assert voided.shape == self.volume_shape and set(np.unique(mask)) <= {0.0, 1.0}
    return np.where(mask > 0, FILL, voided).astype(np.float32)


def make_case(root, name, *, mask_fn=None, voided_fn=None):
  rng = np.random.default_rng(abs(hash(name)) % 2**32)
  x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
  brain = ((x - 13) / 9.0) ** 2 + ((y - 11) / 9.0) ** 2 + ((z - 7) / 6.0) ** 2 < 1
  t1n = np.where(brain, rng.uniform(100, 900, SHAPE), 0).astype(np.float32)
  mask = np.zeros(SHAPE, np.uint8)
  mask[10:14, 9:12, 5:8] = 1
  if mask_fn:
    mask = mask_fn(mask)
  voided = t1n * (1 - (mask > 0))
  if voided_fn:
    voided = voided_fn(voided)
  case = root / name
  header = nib.Nifti1Header()
  header["descrip"] = b"sciimg test header"
  for key, data in (("t1n", t1n), ("t1n-voided", voided), ("mask", mask)):
    nifti.save_volume(brats_layout.case_file(case, key), data, AFFINE, header)
  return case


def config_for(input_dir, **overrides):
  c = inpaint.get_config("tiny")
  c.inpaint.input_dir = str(input_dir)
  c.inpaint.update(overrides)
  return c


def test_output_geometry_and_values(tmp_path):
  case = make_case(tmp_path / "in", "BraTS-GLI-00001-000")
  summary = inpaint_volumes.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w", FakeInpainter())
  out_path = tmp_path / "w" / "predictions" / case.name / f"{case.name}-t1n-inference.nii.gz"
  out = nib.load(out_path)
  voided_img = nib.load(brats_layout.case_file(case, "t1n-voided"))
  voided = np.asarray(voided_img.dataobj, np.float32)
  mask = np.asarray(nib.load(brats_layout.case_file(case, "mask")).dataobj) > 0
  data = np.asarray(out.dataobj, np.float32)
  assert out.shape == SHAPE
  np.testing.assert_allclose(out.affine, AFFINE)
  assert out.header["descrip"].tobytes().startswith(b"sciimg test header")
  np.testing.assert_array_equal(data[~mask], voided[~mask])       # bit-identical outside
  lo, hi = intensity.percentile_range(voided)
  np.testing.assert_allclose(data[mask], intensity.denormalize(np.float32(FILL), lo, hi), rtol=1e-6)
  assert (out_path.parent / f"{case.name}-triplanar.png").stat().st_size > 1000
  assert list(summary["done"]) == [case.name]
  assert json.loads((tmp_path / "w" / "predictions" / "timings.json").read_text())[case.name] > 0
  assert not list((tmp_path / "w").rglob(".*"))                    # no temporary files left


def test_pad_crop_round_trip():
  rng = np.random.default_rng(0)
  for shape, target in (((7, 10, 5), (8, 8, 8)), ((9, 6, 11), (5, 8, 11))):
    vol = rng.normal(size=shape).astype(np.float32)
    padded, undo = inpaint_volumes.pad_crop(vol, target, -1.0)
    assert padded.shape == target
    back = inpaint_volumes.unpad_crop(padded, undo, np.zeros_like(vol))
    kept = tuple(slice((n - m) // 2, (n - m) // 2 + m) if n > m else slice(None)
                 for n, m in zip(shape, target))
    np.testing.assert_array_equal(back[kept], vol[kept])


def test_bad_cases_are_listed_and_the_others_go_on(tmp_path):
  root = tmp_path / "in"
  good = make_case(root, "BraTS-GLI-00001-000")
  make_case(root, "BraTS-GLI-00002-000", voided_fn=lambda v: np.where(v > 500, np.nan, v))
  make_case(root, "BraTS-GLI-00003-000", voided_fn=lambda v: -v - 1)
  outside = lambda m: np.pad(np.ones((4, 4, 4), np.uint8), [(0, 22), (0, 18), (0, 10)])
  make_case(root, "BraTS-GLI-00004-000", mask_fn=outside)
  empty = make_case(root, "BraTS-GLI-00005-000", mask_fn=np.zeros_like)
  shifted = make_case(root, "BraTS-GLI-00006-000")
  nifti.save_volume(brats_layout.case_file(shifted, "mask"), np.zeros(SHAPE, np.uint8),
                    AFFINE + np.diag([0.0, 0.0, 0.5, 0.0]))
  four_d = make_case(root, "BraTS-GLI-00007-000")
  nifti.save_volume(brats_layout.case_file(four_d, "t1n-voided"), np.ones(SHAPE + (2,)), AFFINE)

  summary = inpaint_volumes.inpaint_cases(config_for(root), tmp_path / "w", FakeInpainter())
  failed = {f["case"]: f["error"] for f in summary["failed"]}
  assert set(summary["done"]) == {good.name, empty.name}
  assert summary["copied_through"] == [empty.name]
  expectations = {"BraTS-GLI-00002-000": "NaN", "BraTS-GLI-00003-000": "no positive intensities",
                  "BraTS-GLI-00004-000": "outside the brain", "BraTS-GLI-00006-000": "affine differs",
                  "BraTS-GLI-00007-000": "expected a 3D volume"}
  assert set(failed) == set(expectations)
  for name, problem in expectations.items():
    assert name in failed[name] and problem in failed[name], failed[name]
  copied = nib.load(tmp_path / "w" / "predictions" / empty.name / f"{empty.name}-t1n-inference.nii.gz")
  voided = nib.load(brats_layout.case_file(empty, "t1n-voided"))
  np.testing.assert_array_equal(np.asarray(copied.dataobj), np.asarray(voided.dataobj))
  saved = json.loads((tmp_path / "w" / "inpaint_summary.json").read_text())
  assert {f["case"] for f in saved["failed"]} == set(expectations)


def test_single_pair_and_all_failing(tmp_path):
  case = make_case(tmp_path / "in", "BraTS-GLI-00001-000")
  c = config_for("")
  c.input = str(brats_layout.case_file(case, "t1n-voided"))
  c.mask = str(brats_layout.case_file(case, "mask"))
  summary = inpaint_volumes.inpaint_cases(c, tmp_path / "w", FakeInpainter())
  assert list(summary["done"]) == ["BraTS-GLI-00001-000"]

  bad = make_case(tmp_path / "bad", "BraTS-GLI-00002-000", voided_fn=lambda v: -v - 1)
  with pytest.raises(InputError, match="every case failed"):
    inpaint_volumes.inpaint_cases(config_for(tmp_path / "bad"), tmp_path / "w2", FakeInpainter())
  assert bad.exists()
